"""5-point landmarks for pose conditioning: aligned-frame coordinates, Gaussian heatmaps, and a bank of
real landmark configurations that synthesis draws poses from.

Coordinates are normalised to ``[0, 1]`` of the aligned crop, in the order left eye, right eye, nose,
left mouth corner, right mouth corner (InsightFace's order).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from facecore.artifacts import read_json, verify_artifact, write_artifact
from facecore.errors import ArtifactError, DataError, InvalidInputError

WEIGHTS = "landmarks.safetensors"
CONFIG = "config.json"
FLIP_ORDER = [1, 0, 2, 4, 3]  # a mirrored face swaps the eyes and the mouth corners


def aligned_landmarks(keypoints: np.ndarray, crop_size: int = 112) -> np.ndarray:
    """Keypoints ``(5, 2)`` of the original photo → normalised coordinates in the ArcFace-aligned crop
    (the same similarity fit InsightFace's ``norm_crop`` warps with)."""
    from insightface.utils import face_align

    kps = np.asarray(keypoints, np.float64)
    if kps.shape != (5, 2) or not np.isfinite(kps).all():
        raise InvalidInputError(f"keypoints must be a finite (5, 2) array, got shape {kps.shape}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*estimate.* is deprecated", category=FutureWarning)
        m = face_align.estimate_norm(kps, crop_size)
    return ((kps @ m[:, :2].T + m[:, 2]) / crop_size).astype(np.float32)


def landmarks_from_json(path: str | Path, relpaths: list[str], crop_size: int = 112) -> np.ndarray:
    """Aligned normalised landmarks ``(N, 5, 2)`` of ``relpaths`` from a detections file
    ``{"faces": {relpath: {"kps": [[x, y] x 5]}}}`` in the original photos' frame."""
    import json

    try:
        faces = json.loads(Path(path).read_text())["faces"]
        return np.stack([aligned_landmarks(faces[r]["kps"], crop_size) for r in relpaths])
    except FileNotFoundError:
        raise DataError(f"landmarks file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: no 5-point landmarks for every image ({exc!r}); expected {{'faces': {{relpath: {{'kps': ...}}}}}}") from exc


def flip_landmarks(points: torch.Tensor) -> torch.Tensor:
    """Landmarks ``(N, 5, 2)`` of horizontally mirrored crops."""
    out = points[:, FLIP_ORDER].clone()
    out[..., 0] = 1 - out[..., 0]
    return out


def landmark_heatmaps(points: torch.Tensor, size: int, sigma: float = 0.03) -> torch.Tensor:
    """Normalised landmarks ``(N, 5, 2)`` → Gaussian heatmaps ``(N, 5, size, size)`` in ``[0, 1]``;
    ``sigma`` is relative to the crop size."""
    if points.ndim != 3 or points.shape[1:] != (5, 2):
        raise InvalidInputError(f"landmarks must be (N, 5, 2) normalised coordinates, got {tuple(points.shape)}")
    grid = (torch.arange(size, device=points.device, dtype=torch.float32) + 0.5) / size
    dx = (grid[None, None, None, :] - points[..., 0, None, None].float()) ** 2
    dy = (grid[None, None, :, None] - points[..., 1, None, None].float()) ** 2
    return torch.exp(-(dx + dy) / (2 * sigma**2))


class LandmarkBank:
    """Real landmark configurations ``(K, 5, 2)``; sampling one per image gives generated faces real poses."""

    def __init__(self, points: np.ndarray):
        points = np.asarray(points, np.float32)
        if points.ndim != 3 or points.shape[1:] != (5, 2) or len(points) == 0 or not np.isfinite(points).all():
            raise InvalidInputError(f"landmark bank must be a non-empty finite (K, 5, 2) array, got {points.shape}")
        self.points = points

    def __len__(self) -> int:
        return len(self.points)

    def draw(self, generators: list[torch.Generator]) -> torch.Tensor:
        """One configuration per generator (deterministic in each generator's state)."""
        idx = [int(torch.randint(len(self.points), (1,), generator=g, device=g.device).item()) for g in generators]
        return torch.from_numpy(self.points[idx])

    def save_pretrained(self, directory: str | Path) -> Path:
        return write_artifact(directory, {WEIGHTS: st_save({"points": self.points}),
                                          CONFIG: {"_class_name": "LandmarkBank", "count": len(self)}})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "LandmarkBank":
        verify_artifact(directory, (WEIGHTS, CONFIG))
        read_json(directory, CONFIG)
        try:
            return cls(st_load((Path(directory) / WEIGHTS).read_bytes())["points"])
        except (KeyError, InvalidInputError) as exc:
            raise ArtifactError(f"{directory}: not a landmark bank: {exc}") from exc
