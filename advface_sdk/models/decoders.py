"""Reconstruction networks: embedding (any dimension) → aligned face image (RGB in [0, 1]).

Two architectures so that the attacker can differ from the shadow model: ``upconv``
(nearest upsampling + 3x3 convs, used for the shadow model) and ``deconv`` (transposed
convolutions with residual refinement, used by the benchmark's independent attacker).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore.errors import InvalidInputError
from facecore.pretrained import Contents, PretrainedModule

ARCHS = ("upconv", "deconv")


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True),
                                  nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def _deconv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         _Residual(cout))


class FaceDecoder(PretrainedModule):
    """``(N, dim)`` embeddings → ``(N, 3, size, size)`` RGB images in [0, 1]; inputs are L2-normalised first.

    Saved as ``config.json`` (untagged, extras beside the constructor's arguments) + ``decoder.safetensors``.
    """

    weights_name = "decoder.safetensors"
    format_key = None

    def __init__(self, dim: int, size: int = 64, arch: str = "upconv", width: int = 32):
        super().__init__()
        if size not in (64, 112):
            raise InvalidInputError(f"decoder output size must be 64 or 112, got {size}")
        if arch not in ARCHS:
            raise InvalidInputError(f"unknown decoder architecture {arch!r}; choose from {ARCHS}")
        self.config = {"dim": int(dim), "size": int(size), "arch": arch, "width": int(width)}
        base = 4 if size == 64 else 7  # 4·2⁴ = 64, 7·2⁴ = 112
        chans = [width * 8, width * 4, width * 2, width, width // 2]
        self.base = base
        self.fc = nn.Sequential(nn.Linear(dim, chans[0] * base * base), nn.BatchNorm1d(chans[0] * base * base), nn.ReLU(inplace=True))
        block = _up_block if arch == "upconv" else _deconv_block
        self.blocks = nn.Sequential(*[block(chans[i], chans[i + 1]) for i in range(4)])
        self.head = nn.Conv2d(chans[-1], 3, 3 if arch == "upconv" else 5, padding=1 if arch == "upconv" else 2)

    @property
    def dim(self) -> int:
        return self.config["dim"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(z, dim=1)
        x = self.fc(z).view(len(z), -1, self.base, self.base)
        return torch.sigmoid(self.head(self.blocks(x)))

    def to_contents(self, extra: dict | None = None) -> Contents:
        """Weights and config; ``extra`` (training log, recognizer, ...) is stored beside the config."""
        return Contents({**self.config, **(extra or {})}, self.state_dict())

    @classmethod
    def from_contents(cls, contents: Contents, directory: Path, map_location: str = "cpu") -> "FaceDecoder":
        cfg = contents.config
        model = cls(cfg["dim"], cfg["size"], cfg["arch"], cfg["width"])
        model.load_state_dict({k: v.to(map_location) for k, v in contents.tensors.items()})
        model.extra_config = {k: v for k, v in cfg.items() if k not in model.config}
        return model.eval()


def describe(model: nn.Module) -> str:
    return json.dumps({**getattr(model, "config", {}), "params": sum(p.numel() for p in model.parameters())})


class PriorShadow(nn.Module):
    """A face prior used as a shadow: ``t → decode(mean latent, t̂)``, RGB in [0, 1].

    ``autoencoder`` is any identity-conditioned face autoencoder with ``encode(images)`` and
    ``decode(latents, prototypes)`` in the embedding space of the protected recognizer (the VIGFace
    :class:`~vigface_sdk.models.autoencoder.FaceAutoencoder`); the latent is the mean over ``faces``,
    as the face-prior attacker (``evaluation.face_prior``) renders a stolen template: a frontal, evenly
    lit average face carrying the template's identity. Frozen; gradients flow to the template only.
    ``subspace`` = ``(mean, basis)`` first projects every template onto that principal subspace of clean
    embeddings, as a denoising attacker does (:class:`~advface_sdk.evaluation.denoise.SubspaceDenoiser`).
    """

    def __init__(self, autoencoder: nn.Module, faces: torch.Tensor, batch: int = 256,
                 subspace: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != torch.uint8 or not len(faces):
            raise InvalidInputError(f"faces must be a non-empty uint8 (N, S, S, 3) RGB batch, got {tuple(faces.shape)} {faces.dtype}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        x = faces.permute(0, 3, 1, 2).float().div(127.5).sub(1)
        with torch.no_grad():
            lat = torch.cat([self.autoencoder.encode(x[i:i + batch])[0] for i in range(0, len(x), batch)]).mean(0)
        self.register_buffer("latent", lat)
        self.subspace = subspace is not None
        if subspace is not None:
            mean, basis = (torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in subspace)
            if mean.shape != (self.dim,) or basis.ndim != 2 or basis.shape[0] != self.dim:
                raise InvalidInputError(f"subspace must be a ({self.dim},) mean and a ({self.dim}, k) basis")
            self.register_buffer("sub_mean", mean)
            self.register_buffer("sub_basis", basis)

    @property
    def dim(self) -> int:
        return int(self.autoencoder.cond_dim)

    @property
    def size(self) -> int:
        return int(self.autoencoder.image_size)

    def forward(self, z: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Renders of templates ``z``; ``latents`` ``(N, C, s, s)`` replace the mean latent (one per row)."""
        lat = self.latent.expand(len(z), *self.latent.shape) if latents is None else latents
        if self.subspace:
            centred = F.normalize(z, dim=1) - self.sub_mean
            z = F.normalize(centred @ self.sub_basis @ self.sub_basis.T + self.sub_mean, dim=1)
        return (self.autoencoder.decode(lat, z).clamp(-1, 1) + 1) / 2
