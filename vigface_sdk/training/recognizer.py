"""Train a face recognizer on a (synthetic) face set: the recipe VIGFace's train-on-synthetic benchmark uses.

Synthetic faces are easier than real photos (less pose, age and expression spread, softer), so a recognizer
trained on them without augmentation overfits (benchmarks/results/vigface_synthesis.md: 70.5 % LFW with mirroring
only, 80.1 % with :func:`augment_faces`, against 84.3 % for real faces with the same recipe). Use augmentation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from facecore.errors import InvalidInputError, NonFiniteError
from facecore.training._checks import check_config

from ..models.backbones import FaceBackbone, iresnet_backbone
from ..models.heads import margin_logits


@dataclass(frozen=True)
class RecognizerTrainConfig:
    """``steps`` SGD steps of ``batch_size`` images (one-cycle rate peaking at ``lr``); a fixed step count is the
    compute budget, so a busy machine changes the minutes, not the result."""

    steps: int = 400
    batch_size: int = 128
    lr: float = 0.1
    augment: bool = True
    layers: tuple[int, ...] = (2, 2, 2, 2)
    width: int = 32
    dim: int = 128
    margin: float = 0.5
    scale: float = 32.0
    seed: int = 0

    def __post_init__(self) -> None:  # batch_size >= 2: batch norm
        check_config(self, steps=">= 1", batch_size=">= 2", lr="> 0", width=">= 1", dim=">= 1", margin=">= 0", scale="> 0")


def augment_faces(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random similarity warp (±10°, ±8 % scale and shift, reflected border), brightness and contrast ±25 %,
    grayscale with p 0.2, on a batch ``(N, 3, H, W)`` in [0, 1]. Hand-written because torchvision is not a
    dependency and the geometric part is one ``grid_sample`` for the whole batch."""
    n = len(x)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle, scale = uniform(n) * math.radians(10), 1 + uniform(n) * 0.08
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, uniform(n) * 0.08], 1), torch.stack([sin, cos, uniform(n) * 0.08], 1)], 1)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="reflection",
                      align_corners=False)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * (1 + uniform(n, 1, 1, 1) * 0.25) + mean) * (1 + uniform(n, 1, 1, 1) * 0.25)
    gray = torch.rand(n, generator=generator) < 0.2
    x = torch.where(gray[:, None, None, None], x.mean(1, keepdim=True).expand_as(x), x)
    return x.clamp(0, 1)


def train_recognizer(images: np.ndarray, labels: np.ndarray, config: RecognizerTrainConfig = RecognizerTrainConfig(),
                     progress: bool = True) -> tuple[FaceBackbone, dict]:
    """An IResNet (``config.layers``, ``width``, ``dim``-d) with an ArcFace head, from scratch on ``images``
    (``(N, H, W, 3)`` uint8 RGB, aligned) and ``labels`` (any ids, at least two classes), with random mirroring
    (+ :func:`augment_faces`). Returns the backbone in eval mode and a summary (steps, epochs, minutes, loss)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise InvalidInputError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(labels) != len(images) or len(images) < config.batch_size:
        raise InvalidInputError(f"need one label per image and at least batch_size={config.batch_size} images, "
                                f"got {len(images)} images and {len(labels)} labels")
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise InvalidInputError("need at least two identities")
    torch.manual_seed(config.seed)
    net = iresnet_backbone(layers=config.layers, dim=config.dim, width=config.width, input_size=images.shape[1])
    head = torch.nn.Parameter(torch.randn(len(classes), config.dim) * 0.01)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(y)
    opt = torch.optim.SGD([{"params": net.parameters(), "weight_decay": 5e-4}, {"params": [head]}], lr=config.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(config.seed)
    perm, losses, start = torch.empty(0, dtype=torch.long), [], time.monotonic()
    net.train()
    for _ in tqdm(range(config.steps), desc="train recognizer", unit="step", leave=False, disable=not progress):
        if len(perm) < config.batch_size:
            perm = torch.randperm(len(images), generator=g)
        idx, perm = perm[:config.batch_size], perm[config.batch_size:]
        x = x_all[idx].permute(0, 3, 1, 2).float().div(255)
        x = torch.where((torch.rand(len(idx), generator=g) < 0.5)[:, None, None, None], x.flip(3), x)
        if config.augment:
            x = augment_faces(x, g)
        cos = F.normalize(net(x), dim=1) @ F.normalize(head, dim=1).t()
        loss = F.cross_entropy(margin_logits(cos, y_all[idx], "arcface", config.margin, config.scale), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    if not math.isfinite(losses[-1]) or not all(bool(torch.isfinite(p).all()) for p in (head, *net.parameters())):
        raise NonFiniteError(f"training diverged: loss {losses[-1]} or weights non-finite at step {len(losses)}; "
                             f"lower lr (now {config.lr}) or check the images")
    summary = {"config": asdict(config), "identities": len(classes), "images": len(images),
               "epochs": config.steps * config.batch_size / len(images), "minutes": (time.monotonic() - start) / 60,
               "first_loss": float(np.mean(losses[:10])), "final_loss": float(np.mean(losses[-20:]))}
    return net.eval(), summary


@torch.no_grad()
def embed_images(net: torch.nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embeddings of ``(N, H, W, 3)`` uint8 faces, each the sum over the face and its mirror (unnormalised)."""
    if not len(images):
        raise InvalidInputError("no images to embed")
    out = []
    for lo in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[lo:lo + batch_size])).permute(0, 3, 1, 2).float().div(255)
        out.append((net(x) + net(x.flip(3))).numpy())
    return np.concatenate(out)
