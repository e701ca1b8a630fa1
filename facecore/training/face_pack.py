"""Training sets of (face image, embedding) pairs, packed into one portable ``.npz``.

Images are stored as JPEG bytes at the decoder's resolution (RGB after decoding), so a pack of all
of LFW at 64×64 is ~25 MB and can travel to a GPU machine; embeddings are the recognizer's raw
float32 outputs on the full aligned crops, with the recognizer's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from facecore.data.identity_folder import IdentityFolderDataset
from facecore.embeddings import atomic_save_npz, extract_embeddings, read_npz
from facecore.errors import DataError, InvalidInputError
from facecore.recognizers.base import Recognizer


@dataclass
class FaceTrainingSet:
    """``images`` uint8 RGB ``(N, S, S, 3)``; ``embeddings`` float32 ``(N, D)``; labels index ``identities``."""

    images: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    identities: list[str]
    relpaths: list[str]
    fingerprint: str

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise DataError("training set is empty")
        if not (len(self.embeddings) == len(self.labels) == len(self.relpaths) == n):
            raise InvalidInputError("images, embeddings, labels and relpaths must have the same length")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def build(cls, dataset: IdentityFolderDataset, recognizer: Recognizer, size: int = 64) -> "FaceTrainingSet":
        emb = extract_embeddings(recognizer, dataset)
        images = np.empty((len(dataset), size, size, 3), np.uint8)
        for i in tqdm(range(len(dataset)), desc="load faces", unit="img", leave=False):
            images[i] = cv2.resize(dataset.load(i), (size, size), interpolation=cv2.INTER_AREA)[..., ::-1]
        return cls(images, emb, dataset.labels.copy(), list(dataset.identities), dataset.relpaths, recognizer.fingerprint)

    def subset(self, identities) -> "FaceTrainingSet":
        """Only the given identities (labels keep indexing the full identity list)."""
        wanted = set(identities)
        keep = np.asarray([self.identities[l] in wanted for l in self.labels])
        if not keep.any():
            raise DataError("none of the requested identities is in this training set")
        idx = np.flatnonzero(keep)
        return FaceTrainingSet(self.images[idx], self.embeddings[idx], self.labels[idx], self.identities,
                               [self.relpaths[i] for i in idx], self.fingerprint)

    def save(self, path: str | Path, quality: int = 95) -> None:
        blobs = [cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].ravel() for im in self.images]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        atomic_save_npz(path, jpeg=np.concatenate(blobs), offsets=offsets, size=np.asarray(self.size),
                        embeddings=self.embeddings, labels=self.labels, identities=np.asarray(self.identities),
                        relpaths=np.asarray(self.relpaths), fingerprint=np.asarray(self.fingerprint))

    @classmethod
    def load(cls, path: str | Path) -> "FaceTrainingSet":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"training pack not found: {path}")
        try:
            with read_npz(path) as z:
                jpeg, off = z["jpeg"], z["offsets"]
                images = np.stack([cv2.imdecode(jpeg[off[i]:off[i + 1]], cv2.IMREAD_COLOR)[..., ::-1] for i in range(len(off) - 1)])
                return cls(images, z["embeddings"].astype(np.float32), z["labels"], z["identities"].tolist(),
                           z["relpaths"].tolist(), str(z["fingerprint"]))
        except (KeyError, ValueError, TypeError, cv2.error) as exc:  # a member missing or of the wrong kind
            raise DataError(f"{path} is not a valid training pack: {exc}") from exc

    def partners(self, seed: int = 0) -> np.ndarray:
        """For each face, the index of another face of the same identity (itself when it has none)."""
        rng = np.random.default_rng(seed)
        out = np.arange(len(self))
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels.tolist()):
            groups.setdefault(label, []).append(i)
        for members in groups.values():
            if len(members) > 1:
                for i in members:
                    out[i] = rng.choice([m for m in members if m != i])
        return out

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images float [0,1] NCHW, embeddings, labels) on ``device``."""
        x = torch.from_numpy(self.images).to(device).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.from_numpy(self.embeddings).to(device), torch.from_numpy(self.labels).to(device)
