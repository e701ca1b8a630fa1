"""Everything an LFW evaluation needs, loaded once: embeddings by two recognizers, pairs, groups, victims."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from facecore.data import IdentityFolderDataset, pair_indices, read_pairs
from facecore.embeddings import extract_embeddings
from facecore.metrics import cosine_scores, kfold_accuracy, tar_at_far
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer

from ..protocol import EVAL_FOLDS, lfw_identity_groups
from .privacy import Victims, impostor_threshold, pick_victims

OTHER = {"fr128": "fr512", "fr512": "fr128"}


@dataclass
class LfwEvaluation:
    """LFW with the protected recognizer and an independent evaluator recognizer."""

    recognizer_name: str
    evaluator_name: str
    max_victims: int | None = 1000
    seed: int = 0
    subset: str | None = None  # restrict to one identity group (e.g. "evaluation") to embed fewer images

    @classmethod
    def for_recognizer(cls, name: str, **kw) -> "LfwEvaluation":
        return cls(name, OTHER.get(name, "fr512"), **kw)

    @cached_property
    def full_dataset(self) -> IdentityFolderDataset:
        return IdentityFolderDataset.from_folder(shared_path("data", "lfw", "aligned112"))

    @cached_property
    def dataset(self) -> IdentityFolderDataset:
        return self.full_dataset if self.subset is None else self.full_dataset.subset(self.groups[self.subset])

    @cached_property
    def pairs(self):
        return read_pairs(shared_path("data", "lfw", "pairs.txt"))

    @cached_property
    def recognizer(self):
        return create_recognizer(self.recognizer_name)

    @cached_property
    def evaluator(self):
        return create_recognizer(self.evaluator_name)

    @cached_property
    def emb(self) -> np.ndarray:
        return extract_embeddings(self.recognizer, self.dataset)

    @cached_property
    def emb_eval(self) -> np.ndarray:
        return extract_embeddings(self.evaluator, self.dataset)

    @cached_property
    def groups(self) -> dict[str, set[str]]:
        return lfw_identity_groups(self.pairs, self.full_dataset.identities)

    def mask(self, group: str) -> np.ndarray:
        names = self.groups[group]
        return np.asarray([self.dataset.identities[l] in names for l in self.dataset.labels])

    @cached_property
    def eval_pairs(self):
        """Pairs of the evaluation folds (6–10) as dataset indices: (left, right, issame, folds)."""
        p = self.pairs.select(EVAL_FOLDS)
        left, right = pair_indices(self.dataset, p)
        return left, right, p.issame, p.folds

    def victims(self, group: str = "evaluation") -> Victims:
        return pick_victims(self.dataset.labels, self.mask(group), self.max_victims, self.seed)

    @cached_property
    def thresholds(self) -> tuple[float, float]:
        """FAR = 1e-3 cosine thresholds of (protected recognizer, evaluator) on evaluation-group impostors."""
        m = self.mask("evaluation")
        lab = self.dataset.labels[m]
        return impostor_threshold(self.emb[m], lab, seed=self.seed), impostor_threshold(self.emb_eval[m], lab, seed=self.seed)

    def true_rgb(self, indices: np.ndarray, size: int = 64) -> np.ndarray:
        return np.stack([cv2.resize(self.dataset.load(i), (size, size), interpolation=cv2.INTER_AREA)[..., ::-1] for i in indices])

    def utility(self, stored_left: np.ndarray, probe_right: np.ndarray | None = None, match=None) -> dict:
        """Accuracy (threshold from the other folds) and TAR@FAR on folds 6–10: left image stored, right clean probe."""
        left, right, issame, folds = self.eval_pairs
        probes = self.emb[right] if probe_right is None else probe_right
        scores = cosine_scores(stored_left, probes) if match is None else match(probes, stored_left)
        return self.utility_from_scores(scores)

    def utility_from_scores(self, scores: np.ndarray, pairs: np.ndarray | None = None) -> dict:
        """:meth:`utility` for precomputed scores of the evaluation pairs (or of the subset ``pairs`` of them)."""
        _, _, issame, folds = self.eval_pairs
        if pairs is not None:
            issame, folds = issame[pairs], folds[pairs]
        res = kfold_accuracy(scores, issame, folds)
        return {"accuracy": res.accuracy, "std": res.std, **tar_at_far(scores, issame, (1e-3, 1e-4))}
