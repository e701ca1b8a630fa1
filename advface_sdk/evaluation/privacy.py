"""Reconstruction-attack metrics: does a decoded face still identify the victim?

Type II (the headline): the reconstruction, embedded by an *evaluator* recognizer other than the
protected one, matches a *different* image of the victim at the evaluator's FAR = 1e-3 threshold.
Type I: the reconstruction, embedded by the protected recognizer, matches the enrolled image itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from facecore.errors import InvalidInputError
from facecore.metrics import threshold_at_far


@dataclass
class Victims:
    """Enrolled / probe image indices (one victim per identity) into the arrays below."""

    enrolled: np.ndarray
    probe: np.ndarray


def pick_victims(labels: np.ndarray, identities_mask: np.ndarray, max_victims: int | None = None, seed: int = 0) -> Victims:
    """First image of each identity (with ≥ 2 images, inside ``identities_mask``) is enrolled, the second is the probe."""
    first: dict[int, list[int]] = {}
    for i in np.flatnonzero(identities_mask):
        first.setdefault(int(labels[i]), []).append(int(i))
    pairs = [(v[0], v[1]) for v in first.values() if len(v) >= 2]
    if not pairs:
        raise InvalidInputError("no identity with at least two images among the victims")
    rng = np.random.default_rng(seed)
    if max_victims and len(pairs) > max_victims:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), max_victims, replace=False))]
    arr = np.asarray(pairs)
    return Victims(arr[:, 0], arr[:, 1])


def impostor_threshold(embeddings: np.ndarray, labels: np.ndarray, far: float = 1e-3, n_pairs: int = 200_000, seed: int = 0) -> float:
    """Cosine threshold at ``far`` from random pairs of images of different identities."""
    rng = np.random.default_rng(seed)
    u = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    a = rng.integers(0, len(u), n_pairs)
    b = rng.integers(0, len(u), n_pairs)
    keep = labels[a] != labels[b]
    return threshold_at_far(np.sum(u[a[keep]] * u[b[keep]], axis=1), far)


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """RGB images in [0, 1], ``(N, 3, S, S)`` → uint8 RGB ``(N, S, S, 3)`` (clamped and rounded)."""
    return (images.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def decode_to_crops(decoder: torch.nn.Module, embeddings: np.ndarray, batch: int = 256) -> np.ndarray:
    """Decoder outputs as uint8 RGB ``(N, S, S, 3)``."""
    outs = []
    decoder = decoder.eval()
    with torch.inference_mode():
        for i in range(0, len(embeddings), batch):
            x = decoder(torch.from_numpy(np.ascontiguousarray(embeddings[i:i + batch], np.float32)))
            outs.append(images_to_uint8(x))
    return np.concatenate(outs)


def to_recognizer_crops(rgb: np.ndarray, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    """uint8 RGB reconstructions → uint8 BGR crops at the recognizer's input size."""
    return np.stack([cv2.resize(im[..., ::-1], size, interpolation=cv2.INTER_LINEAR) for im in rgb])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def image_quality(rec_rgb: np.ndarray, true_rgb: np.ndarray) -> dict[str, float]:
    """Mean SSIM and PSNR of reconstructions against the true faces (same size, uint8 RGB)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ssim = [structural_similarity(r, t, channel_axis=2, data_range=255) for r, t in zip(rec_rgb, true_rgb)]
    psnr = [peak_signal_noise_ratio(t, r, data_range=255) for r, t in zip(rec_rgb, true_rgb)]
    return {"ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr))}


def attack_success(rec_rgb: np.ndarray, victims: Victims, protected_rec, evaluator, clean_protected: np.ndarray,
                   clean_evaluator: np.ndarray, thr_protected: float, thr_evaluator: float,
                   true_rgb: np.ndarray | None = None, reid: bool = False) -> dict:
    """Type I / type II success rates (share of victims) for reconstructions ``rec_rgb`` of the enrolled images.

    ``reid``: also ``reid_rank1``, the share of victims whose reconstruction, embedded by the evaluator, is
    nearest (cosine) to the evaluator's embedding of *their own* other image among all victims' other images.
    """
    crops_p = to_recognizer_crops(rec_rgb, protected_rec.preprocessing.input_size)
    crops_e = crops_p if evaluator.preprocessing.input_size == protected_rec.preprocessing.input_size else \
        to_recognizer_crops(rec_rgb, evaluator.preprocessing.input_size)
    s1 = _cos(protected_rec.embed(crops_p), clean_protected[victims.enrolled])
    e2 = evaluator.embed(crops_e)
    s2 = _cos(e2, clean_evaluator[victims.probe])
    out = {"type1": float(np.mean(s1 > thr_protected)), "type2": float(np.mean(s2 > thr_evaluator)),
           "type1_mean_cos": float(s1.mean()), "type2_mean_cos": float(s2.mean()), "victims": int(len(s1))}
    if reid:
        cand = clean_evaluator[victims.probe]
        cand = cand / np.linalg.norm(cand, axis=1, keepdims=True)
        out["reid_rank1"] = float(np.mean(np.argmax((e2 / np.linalg.norm(e2, axis=1, keepdims=True)) @ cand.T, axis=1)
                                          == np.arange(len(e2))))
    if true_rgb is not None:
        out.update(image_quality(rec_rgb, true_rgb))
    return out


def random_face_baseline(victims: Victims, labels: np.ndarray, clean_evaluator: np.ndarray, thr_evaluator: float,
                         pool: np.ndarray, seed: int = 0) -> float:
    """Type II rate when the 'reconstruction' is a real face of a random other person (chance level)."""
    rng = np.random.default_rng(seed)
    picks = pool[rng.integers(0, len(pool), len(victims.probe) * 4)].reshape(-1, 4)
    chosen = np.array([next((p for p in row if labels[p] != labels[v]), row[0]) for row, v in zip(picks, victims.probe)])
    return float(np.mean(_cos(clean_evaluator[chosen], clean_evaluator[victims.probe]) > thr_evaluator))
