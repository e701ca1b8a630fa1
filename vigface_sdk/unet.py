"""Prototype-conditioned UNet for pixel-space face diffusion (64×64 by default, 112×112 as an option).

The identity prototype goes through an MLP and is added to the timestep embedding, which drives an
adaptive (scale-shift) group norm in every residual block; a learned null embedding replaces it for
classifier-free guidance. Optional 5-point landmark heatmaps enter as extra input channels (pose).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from facecore.artifacts import read_json, verify_artifact, write_artifact
from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass
class UNetConfig:
    sample_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 96, 128)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    attention_head_dim: int = 32
    norm_groups: int = 8
    cond_dim: int = 512
    landmark_channels: int = 0  # 0 or 5 (one Gaussian heatmap per landmark)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        levels = len(self.block_out_channels)
        if levels == 0 or len(self.attention_levels) != levels:
            raise InvalidInputError("block_out_channels and attention_levels must be non-empty and of equal length")
        if self.sample_size % 2 ** (levels - 1):
            raise InvalidInputError(f"sample_size {self.sample_size} must be divisible by {2 ** (levels - 1)} for {levels} levels")
        if any(c % self.norm_groups for c in self.block_out_channels):
            raise InvalidInputError(f"every block width must be divisible by norm_groups={self.norm_groups}")
        if any(c % self.attention_head_dim for c, a in zip(self.block_out_channels, self.attention_levels) if a):
            raise InvalidInputError(f"widths of attention levels must be divisible by attention_head_dim={self.attention_head_dim}")
        if self.landmark_channels not in (0, 5):
            raise InvalidInputError(f"landmark_channels must be 0 or 5, got {self.landmark_channels}")
        if self.cond_dim <= 0 or self.layers_per_block <= 0:
            raise InvalidInputError("cond_dim and layers_per_block must be positive")


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``(N,) -> (N, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv ×2; the second norm is modulated by the (time + identity) embedding."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout, affine=False)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over pixels with a residual connection."""

    def __init__(self, channels: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (n, heads, hw, c/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class _Level(nn.Module):
    def __init__(self, blocks: list[ResBlock], attn: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)


class PrototypeUNet(nn.Module):
    """``forward(sample, timestep, prototype, landmarks=None, drop_condition=None) -> prediction``.

    ``sample`` is ``(N, 3, S, S)`` in [-1, 1]; ``prototype`` ``(N, cond_dim)`` (normalised inside) or
    ``None`` for the unconditional branch; ``drop_condition`` (bool ``(N,)``) swaps single rows for the
    null embedding; ``landmarks`` are heatmaps ``(N, 5, S, S)`` when the model takes them.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or UNetConfig(**kwargs)
        cfg = self.config
        chans, g = cfg.block_out_channels, cfg.norm_groups
        emb_dim = 4 * chans[0]
        self.time_mlp = nn.Sequential(nn.Linear(chans[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_embedding = nn.Parameter(torch.zeros(emb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.landmark_channels, chans[0], 3, padding=1)

        def attn(level: int) -> list[nn.Module]:
            return [Attention(chans[level], cfg.attention_head_dim, g)] if cfg.attention_levels[level] else []

        self.down = nn.ModuleList()
        skips, cin = [chans[0]], chans[0]
        for i, c in enumerate(chans):
            blocks, atts = [], []
            for _ in range(cfg.layers_per_block):
                blocks.append(ResBlock(cin, c, emb_dim, g, cfg.dropout))
                atts += attn(i) or [nn.Identity()]
                cin = c
                skips.append(c)
            level = _Level(blocks, atts)
            level.sample = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chans) - 1 else nn.Identity()
            if i < len(chans) - 1:
                skips.append(c)
            self.down.append(level)
        self.mid = _Level([ResBlock(cin, cin, emb_dim, g, cfg.dropout), ResBlock(cin, cin, emb_dim, g, cfg.dropout)],
                          attn(len(chans) - 1) or [nn.Identity()])
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            blocks, atts = [], []
            for _ in range(cfg.layers_per_block + 1):
                blocks.append(ResBlock(cin + skips.pop(), c, emb_dim, g, cfg.dropout))
                atts += attn(i) or [nn.Identity()]
                cin = c
            level = _Level(blocks, atts)
            level.sample = nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity()
            self.up.append(level)
        self.norm_out = nn.GroupNorm(g, chans[0])
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def cond_dim(self) -> int:
        return self.config.cond_dim

    def embed(self, timestep: torch.Tensor, prototype: torch.Tensor | None, n: int,
              drop_condition: torch.Tensor | None = None) -> torch.Tensor:
        """The per-sample (timestep + identity) embedding that modulates every block."""
        t = torch.as_tensor(timestep, device=self.null_embedding.device).reshape(-1).expand(n)
        emb = self.time_mlp(timestep_embedding(t, self.config.block_out_channels[0]))
        if prototype is None:
            return emb + self.null_embedding
        if prototype.ndim != 2 or prototype.shape[1] != self.cond_dim:
            raise IncompatibleError(f"prototypes must be (N, {self.cond_dim}), got {tuple(prototype.shape)}")
        cond = self.cond_mlp(F.normalize(prototype.float(), dim=1))
        if drop_condition is not None:
            cond = torch.where(drop_condition.reshape(-1, 1), self.null_embedding.expand_as(cond), cond)
        return emb + cond

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, prototype: torch.Tensor | None = None,
                landmarks: torch.Tensor | None = None, drop_condition: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise InvalidInputError(f"sample must be (N, {cfg.in_channels}, H, W), got {tuple(sample.shape)}")
        if cfg.landmark_channels:
            if landmarks is None or landmarks.shape != (sample.shape[0], cfg.landmark_channels, *sample.shape[2:]):
                raise InvalidInputError(f"this model needs landmark heatmaps (N, {cfg.landmark_channels}, H, W)")
            sample = torch.cat([sample, landmarks.to(sample.dtype)], dim=1)
        emb = F.silu(self.embed(timestep, prototype, sample.shape[0], drop_condition))
        h = self.conv_in(sample)
        skips = [h]
        for level in self.down:
            for block, att in zip(level.blocks, level.attn):
                h = att(block(h, emb))
                skips.append(h)
            if not isinstance(level.sample, nn.Identity):
                h = level.sample(h)
                skips.append(h)
        h = self.mid.attn[0](self.mid.blocks[0](h, emb))
        h = self.mid.blocks[1](h, emb)
        for level in self.up:
            for block, att in zip(level.blocks, level.attn):
                h = att(block(torch.cat([h, skips.pop()], dim=1), emb))
            if not isinstance(level.sample, nn.Identity):
                h = level.sample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

    # --- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ checksums), written atomically;
        ``dtype=torch.float16`` halves the file (weights are loaded back as float32)."""
        weights = st_save({k: v.detach().cpu().to(dtype or v.dtype).contiguous() for k, v in self.state_dict().items()})
        return write_artifact(directory, {WEIGHTS_NAME: weights, CONFIG_NAME: {"_class_name": type(self).__name__, **asdict(self.config)}})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "PrototypeUNet":
        verify_artifact(directory, (WEIGHTS_NAME, CONFIG_NAME))
        raw = read_json(directory, CONFIG_NAME)
        known = set(UNetConfig.__dataclass_fields__)
        try:
            model = cls(UNetConfig(**{k: v for k, v in raw.items() if k in known}))
            state = st_load((Path(directory) / WEIGHTS_NAME).read_bytes())
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except (RuntimeError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, InvalidInputError):
                raise ArtifactError(f"{directory}: invalid UNet config: {exc}") from exc
            raise ArtifactError(f"{directory}: weights do not fit the UNet config: {exc}") from exc
        return model.to(map_location).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

