"""Train an embedding → face decoder with pixel and identity loss (the shadow model, or an attacker)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facecore.errors import InvalidInputError
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from facecore.training.distributed import DistContext, wrap_ddp
from facecore.training.face_pack import FaceTrainingSet
from facecore.training.loop import EpochTail

from ..models.decoders import FaceDecoder


@dataclass
class DecoderTrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    pixel_weight: float = 1.0
    id_weight: float = 1.0
    id_start_epoch: int = 0  # epochs of pixel-only warm-up before the identity loss is switched on
    arch: str = "upconv"
    width: int = 32
    seed: int = 0
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise InvalidInputError("epochs, batch_size and lr must be positive")


def identity_similarity(recognizer: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine between the recognizer's embedding of ``images`` and ``target`` embeddings, per row."""
    return F.cosine_similarity(recognizer(images), target, dim=1)


def train_decoder(
    train: FaceTrainingSet,
    recognizer: torch.nn.Module | None,
    config: DecoderTrainConfig,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    inputs: torch.Tensor | None = None,
    init: FaceDecoder | None = None,
) -> tuple[FaceDecoder, dict]:
    """Fit a :class:`FaceDecoder` on (image, embedding) pairs; returns the model and a training log.

    ``recognizer`` is a differentiable copy of the recognizer that produced the embeddings (from
    ``Recognizer.to_torch()``); without it the decoder is pixel-only (a weak attacker). ``transform``
    is applied to embeddings before decoding (an adaptive attacker trains on protected embeddings)
    while the identity target stays the clean embedding. Resumes from ``checkpoint_dir`` if it holds
    a checkpoint; under torchrun each rank trains on its shard of every epoch (DDP).

    ``inputs`` (one row per face, any width) replaces the decoder input outright, e.g. templates of a
    keyed protection scheme computed per user; ``init`` warm-starts from another decoder's weights
    (every tensor of matching shape, so a new input width only re-initialises the first layer).
    """
    ctx = ctx or DistContext()
    torch.manual_seed(config.seed)
    if inputs is not None and (inputs.ndim != 2 or len(inputs) != len(train)):
        raise InvalidInputError(f"inputs must have one row per training face ({len(train)}), got shape {tuple(inputs.shape)}")
    in_dim = train.dim if inputs is None else int(inputs.shape[1])
    model = FaceDecoder(in_dim, train.size, config.arch, config.width).to(ctx.device)
    if init is not None:
        own = model.state_dict()
        model.load_state_dict({**own, **{k: v for k, v in init.state_dict().items() if k in own and own[k].shape == v.shape}})
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.5, 0.999))
    state = {"epoch": 0, "history": []}
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt and (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, model, opt, {k: getattr(config, k) for k in ("arch", "width", "seed")})
    if recognizer is not None:
        recognizer = recognizer.to(ctx.device).eval().requires_grad_(False)
    net = wrap_ddp(model, ctx)
    images, emb, _ = train.tensors(ctx.device)
    if inputs is not None:
        inputs = torch.as_tensor(inputs, dtype=torch.float32).to(ctx.device)
    n = len(train)
    per_rank = n // ctx.world_size  # equal shards: every rank runs the same number of steps
    steps = math.ceil(per_rank / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps, pct_start=0.1,
                                                last_epoch=state["epoch"] * steps - 1 if state["epoch"] else -1)
    tail = EpochTail(ctx, config.max_minutes, (lambda st: save_checkpoint(ckpt, model, opt, st)) if ckpt else None)
    for epoch in range(state["epoch"], config.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        perm = perm[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
        net.train()
        use_id = recognizer is not None and config.id_weight > 0 and epoch >= config.id_start_epoch
        totals = {"pixel": 0.0, "identity": 0.0}
        bar = tqdm(range(steps), desc=f"decoder epoch {epoch + 1}/{config.epochs}", disable=not (progress and ctx.is_main), leave=False)
        for step in bar:
            idx = perm[step * config.batch_size:(step + 1) * config.batch_size].to(ctx.device)
            z, x = emb[idx], images[idx]
            inp = inputs[idx] if inputs is not None else transform(z) if transform is not None else z
            rec = net(inp)
            pixel = F.l1_loss(rec, x)
            loss = config.pixel_weight * pixel
            if use_id:
                ident = (1 - identity_similarity(recognizer, rec, z)).mean()
                loss = loss + config.id_weight * ident
                totals["identity"] += ident.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals["pixel"] += pixel.item()
            bar.set_postfix(pixel=f"{pixel.item():.3f}")
        state = {"epoch": epoch + 1, "config": asdict(config),
                 "history": state["history"] + [{k: v / steps for k, v in totals.items()}]}
        if tail(state):
            break
    model.eval()
    return model, state
