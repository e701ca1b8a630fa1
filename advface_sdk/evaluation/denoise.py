"""A non-adaptive denoising front-end for attackers: project stolen templates onto the principal subspace of
clean embeddings.

AdvFace's noise is steered where it moves match scores least, and for fr128 that is the subspace clean
embeddings barely use: the shipped fr128 noise has 87 % of its energy in the 36 weakest of 128 principal
directions, which hold 10 % of the clean variance (``pytest -s tests/test_denoise.py -k shipped``). A thief
needs no SDK output to exploit that: he fits PCA on clean embeddings of his own faces from the public
recognizer, keeps the top ``k`` directions and re-normalises every stolen template before his decoder or map
sees it. Used by the threat matrix of ``advface-cli benchmark``, by
:class:`~advface_sdk.evaluation.face_prior.FacePriorAttacker`, by ``benchmarks/face_prior_frontier.py`` and
``face_prior_pgd.py --denoise`` and by ``advface-cli train-generator --denoise-prior``.

Written with numpy's ``eigh`` rather than a library PCA: it is ten lines, and the project has no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError


@dataclass(frozen=True)
class SubspaceDenoiser:
    """Projection onto the top-``k`` principal directions of clean embeddings (around their mean)."""

    mean: np.ndarray  # (d,)
    basis: np.ndarray  # (d, k), orthonormal columns
    variance_kept: float

    @classmethod
    def fit(cls, embeddings: np.ndarray, k: int | None = None, variance: float = 0.9) -> "SubspaceDenoiser":
        """Fit on clean embeddings (rows are L2-normalised first). ``k``: directions to keep; without it, the
        fewest that keep ``variance`` of the clean variance."""
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
            raise InvalidInputError(f"need at least two finite clean embeddings (N, d), got shape {x.shape}")
        x = l2_normalize(x)
        mean = x.mean(0)
        eigval, eigvec = np.linalg.eigh(np.cov((x - mean).T))
        eigval, eigvec = eigval[::-1].clip(min=0), eigvec[:, ::-1]
        share = np.cumsum(eigval) / eigval.sum()
        if k is None:
            if not 0 < variance <= 1:
                raise InvalidInputError(f"variance must lie in (0, 1], got {variance}")
            k = int(np.searchsorted(share, variance - 1e-12) + 1)
        if not 0 < k <= x.shape[1]:
            raise InvalidInputError(f"k must lie in 1..{x.shape[1]}, got {k}")
        return cls(mean, np.ascontiguousarray(eigvec[:, :k]), float(share[k - 1]))

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    def __call__(self, templates: np.ndarray) -> np.ndarray:
        """Denoised templates: unit rows, float32."""
        t = np.asarray(templates, np.float64)
        if t.ndim != 2 or t.shape[1] != len(self.mean):
            raise InvalidInputError(f"expected templates of shape (N, {len(self.mean)}), got {t.shape}")
        centred = l2_normalize(t) - self.mean
        return l2_normalize(centred @ self.basis @ self.basis.T + self.mean).astype(np.float32)

    @property
    def info(self) -> dict:
        return {"k": self.k, "variance_kept": round(self.variance_kept, 4)}
