"""Prototype-conditioned denoiser over the autoencoder's latent: diffusers' ``UNet2DModel`` plus an identity MLP.

The prototype goes through an MLP to the UNet's time-embedding width and is added to the timestep
embedding (``class_embed_type="identity"``), which drives every residual block's scale-shift norm;
a learned null embedding replaces it where the condition is dropped (classifier-free guidance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn

from facecore.errors import IncompatibleError, InvalidInputError
from facecore.pretrained import PretrainedModule


class PrototypeDenoiser(PretrainedModule):
    """``forward(latents, timesteps, prototypes, drop_condition=None)`` → the noise prediction."""

    def __init__(self, sample_size: int = 8, latent_channels: int = 4, cond_dim: int = 128,
                 block_out_channels: tuple[int, ...] = (128, 256), layers_per_block: int = 2,
                 attention_head_dim: int | None = None, norm_num_groups: int | None = None, condition: dict | None = None):
        """``norm_num_groups`` / ``attention_head_dim`` default to the largest of 32 that divides every width
        (every width with attention)."""
        super().__init__()
        widths = [int(c) for c in block_out_channels]
        norm_num_groups = norm_num_groups or math.gcd(32, *widths)
        attention_head_dim = attention_head_dim or math.gcd(32, *(widths[1:] or widths))
        if not widths or sample_size % 2 ** (len(widths) - 1) or cond_dim <= 0:
            raise InvalidInputError(f"sample_size {sample_size} must be divisible by 2^{len(widths) - 1}; cond_dim > 0")
        self.config = dict(sample_size=int(sample_size), latent_channels=int(latent_channels), cond_dim=int(cond_dim),
                           block_out_channels=widths, layers_per_block=int(layers_per_block),
                           attention_head_dim=int(attention_head_dim), norm_num_groups=int(norm_num_groups),
                           condition=dict(condition or {}))
        down = ["DownBlock2D"] + ["AttnDownBlock2D"] * (len(widths) - 1)
        up = ["AttnUpBlock2D"] * (len(widths) - 1) + ["UpBlock2D"]
        self.unet = UNet2DModel(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                                block_out_channels=tuple(widths), down_block_types=tuple(down), up_block_types=tuple(up),
                                layers_per_block=layers_per_block, attention_head_dim=attention_head_dim,
                                norm_num_groups=norm_num_groups, class_embed_type="identity",
                                resnet_time_scale_shift="scale_shift")
        emb = widths[0] * 4
        self.cond = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.null = nn.Parameter(torch.zeros(emb))

    @property
    def cond_dim(self) -> int:
        return self.config["cond_dim"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config["sample_size"]
        return (self.config["latent_channels"], s, s)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, prototypes: torch.Tensor,
                drop_condition: torch.Tensor | None = None) -> torch.Tensor:
        if prototypes.ndim != 2 or prototypes.shape[1] != self.cond_dim:
            raise IncompatibleError(f"this denoiser takes {self.cond_dim}-d prototypes, got {tuple(prototypes.shape)}")
        emb = self.cond(F.normalize(prototypes.float(), dim=1))
        if drop_condition is not None:
            emb = torch.where(drop_condition[:, None], self.null.to(emb.dtype).expand_as(emb), emb)
        t = timesteps.expand(len(latents)) if timesteps.ndim == 0 else timesteps
        return self.unet(latents, t, class_labels=emb).sample
