"""Face autoencoder with an identity-conditioned decoder: the latent space VIGFace diffuses in.

``encode(images)`` maps aligned RGB faces in [-1, 1] to a small spatial latent (8×8×4 for 64×64
faces) that carries what identity does not decide — pose, expression, light, hair, background;
``decode(latents, prototypes)`` renders a face from such a latent and an identity prototype, which
modulates every decoder block (adaptive group norm, diffusers' ``ResnetBlock2D`` with
``scale_shift``). Trained with a pixel loss, an identity loss through the recognizer whose space
the prototypes live in, and a swap loss (latent of one face, prototype of another person → a face
of that other person), so identity comes from the prototype and the latent is left the rest.
Why not an unconditional autoencoder: measured here, a denoiser conditioned on the embedding but
decoding through a plain autoencoder learned no identity control in a CPU budget (52 %, chance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from facecore.errors import IncompatibleError, InvalidInputError
from facecore.pretrained import PretrainedModule


def _block(cin: int, cout: int, emb: int, groups: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=emb or None, groups=groups,
                         time_embedding_norm="scale_shift" if emb else "default")


class FaceAutoencoder(PretrainedModule):
    """``encode`` → ``(mean, logvar)`` latents; ``decode(latents, prototypes)`` → images in [-1, 1]."""

    weights_name = "autoencoder.safetensors"

    def __init__(self, image_size: int = 64, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
                 cond_dim: int = 128, cond_embed_dim: int = 256, norm_groups: int | None = None, scaling_factor: float = 1.0,
                 condition: dict | None = None):
        super().__init__()
        widths = tuple(int(c) for c in block_out_channels)
        norm_groups = norm_groups or math.gcd(8, *widths)  # the largest of 8 that divides every width
        if len(widths) < 2 or image_size % 2 ** (len(widths) - 1) or any(c % norm_groups for c in widths):
            raise InvalidInputError(f"image_size {image_size} must be divisible by 2^{len(widths) - 1} and every width by "
                                    f"norm_groups={norm_groups}")
        if cond_dim <= 0 or latent_channels <= 0 or not scaling_factor > 0:
            raise InvalidInputError("cond_dim, latent_channels and scaling_factor must be positive")
        self.config = dict(image_size=int(image_size), latent_channels=int(latent_channels), block_out_channels=list(widths),
                           cond_dim=int(cond_dim), cond_embed_dim=int(cond_embed_dim), norm_groups=int(norm_groups),
                           scaling_factor=float(scaling_factor), condition=dict(condition or {}))
        g, e = norm_groups, cond_embed_dim
        self.enc_in = nn.Conv2d(3, widths[0], 3, padding=1)
        enc = []
        for i, c in enumerate(widths):
            prev = widths[max(i - 1, 0)]
            enc.append(_block(prev, c, 0, g))
            if i < len(widths) - 1:
                enc.append(Downsample2D(c, use_conv=True, padding=1, name="op"))
        self.encoder = nn.ModuleList(enc)
        self.enc_out = nn.Sequential(nn.GroupNorm(g, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1))
        self.cond = nn.Sequential(nn.Linear(cond_dim, e), nn.SiLU(), nn.Linear(e, e))
        self.dec_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        dec = [_block(widths[-1], widths[-1], e, g)]
        for i in range(len(widths) - 1, -1, -1):
            nxt = widths[max(i - 1, 0)] if i else widths[0]
            dec.append(_block(widths[i], nxt, e, g))
            if i:
                dec.append(Upsample2D(nxt, use_conv=True))
        self.decoder = nn.ModuleList(dec)
        self.dec_out = nn.Sequential(nn.GroupNorm(g, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 3, 3, padding=1))

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // 2 ** (len(self.config["block_out_channels"]) - 1)
        return (self.config["latent_channels"], s, s)

    @property
    def cond_dim(self) -> int:
        return self.config["cond_dim"]

    @property
    def scaling_factor(self) -> float:
        return self.config["scaling_factor"]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, S, S)`` in [-1, 1] → latent ``mean`` and ``logvar`` ``(N, C, s, s)`` (unscaled)."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise InvalidInputError(f"expected images (N, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}")
        h = self.enc_in(images)
        for layer in self.encoder:
            h = layer(h, None) if isinstance(layer, ResnetBlock2D) else layer(h)
        mean, logvar = self.enc_out(h).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def decode(self, latents: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Unscaled latents ``(N, C, s, s)`` and prototypes ``(N, cond_dim)`` (normalised inside) → images in [-1, 1]."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise InvalidInputError(f"expected latents (N, {', '.join(map(str, self.latent_shape))}), got {tuple(latents.shape)}")
        if prototypes.ndim != 2 or prototypes.shape[1] != self.cond_dim or len(prototypes) != len(latents):
            raise IncompatibleError(f"expected {len(latents)} prototypes of dimension {self.cond_dim}, got {tuple(prototypes.shape)}")
        emb = self.cond(F.normalize(prototypes.float(), dim=1))
        h = self.dec_in(latents)
        for layer in self.decoder:
            h = layer(h, emb) if isinstance(layer, ResnetBlock2D) else layer(h)
        return self.dec_out(h)

    def forward(self, images: torch.Tensor, prototypes: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct: ``(images_hat, mean, logvar)``; ``sample`` draws the latent (training) instead of its mean."""
        mean, logvar = self.encode(images)
        z = mean + torch.randn(mean.shape, generator=generator, device=mean.device) * (0.5 * logvar).exp() if sample else mean
        return self.decode(z, prototypes), mean, logvar
