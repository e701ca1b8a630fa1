"""Train an embedding → face decoder with pixel and identity loss (the shadow model, or an attacker)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facecore.errors import InvalidInputError
from facecore.training._checks import check_config, check_finite
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from facecore.training.distributed import DistContext, wrap_ddp
from facecore.training.face_pack import FaceTrainingSet
from facecore.training.loop import EpochTail, TimeBudget

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

    def __post_init__(self) -> None:  # batch_size >= 2: the decoder uses batch norm
        check_config(self, epochs=">= 1", batch_size=">= 2", lr="> 0", pixel_weight=">= 0", id_weight=">= 0",
                     id_start_epoch=">= 0", width=">= 1", seed=">= 0", max_minutes="> 0 or None")


def identity_similarity(recognizer: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine between the recognizer's embedding of ``images`` and ``target`` embeddings, per row."""
    return F.cosine_similarity(recognizer(images), target, dim=1)


def _new_decoder(train: FaceTrainingSet, config: DecoderTrainConfig, inputs: torch.Tensor | None,
                 init: FaceDecoder | None, device: torch.device) -> FaceDecoder:
    """A fresh decoder for ``train`` (input width from ``inputs`` when given), warm-started from ``init``'s tensors
    of matching shape (so a new input width only re-initialises the first layer)."""
    torch.manual_seed(config.seed)
    if inputs is not None and (inputs.ndim != 2 or len(inputs) != len(train)):
        raise InvalidInputError(f"inputs must have one row per training face ({len(train)}), got shape {tuple(inputs.shape)}")
    in_dim = train.dim if inputs is None else int(inputs.shape[1])
    model = FaceDecoder(in_dim, train.size, config.arch, config.width).to(device)
    if init is not None:
        own = model.state_dict()
        model.load_state_dict({**own, **{k: v for k, v in init.state_dict().items() if k in own and own[k].shape == v.shape}})
    return model


def _decoder_loss(net: torch.nn.Module, inp: torch.Tensor, images: torch.Tensor, emb: torch.Tensor,
                  recognizer: torch.nn.Module | None, config: DecoderTrainConfig):
    """``(loss, pixel, identity)`` of one batch: weighted L1, plus ``1 − cos`` through ``recognizer`` when given."""
    rec = net(inp)
    pixel = F.l1_loss(rec, images)
    loss, ident = config.pixel_weight * pixel, None
    if recognizer is not None:
        ident = (1 - identity_similarity(recognizer, rec, emb)).mean()
        loss = loss + config.id_weight * ident
    return loss, pixel, ident


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
    model = _new_decoder(train, config, inputs, init, ctx.device)
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
    if per_rank < 2:
        raise InvalidInputError(f"{n} faces for {ctx.world_size} processes: each needs at least 2 (batch norm)")
    steps = per_rank // config.batch_size + (per_rank % config.batch_size > 1)  # a last batch of one row is left out
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
            loss, pixel, ident = _decoder_loss(net, inp, x, z, recognizer if use_id else None, config)
            if ident is not None:
                totals["identity"] += ident.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals["pixel"] += pixel.item()
            bar.set_postfix(pixel=f"{pixel.item():.3f}")
            if tail.exceeded():  # the time cap holds inside an epoch too (a CPU epoch is minutes)
                break
        done = step + 1
        check_finite(totals, epoch * steps + done, ctx, f"lower lr (now {config.lr:g}) or check the data", model)
        state = tail.finish_epoch(state, totals, done, steps, config=asdict(config))
        if done < steps:  # out of time mid-epoch: no checkpoint, a resume redoes this epoch
            break
        if tail(state):
            break
    model.eval()
    return model, state


# ---------------------------------------------------------------------- training to convergence
@dataclass
class ConvergenceConfig:
    """Early stopping on a held-out split of identities.

    ``warmup_epochs`` pixel-only epochs come first (not watched); then pixel + identity epochs run until
    the validation loss has not improved by ``min_delta`` (relative) for ``patience`` epochs, or
    ``max_epochs`` in all; the learning rate halves after every epoch without improvement, and the
    weights of the best validation epoch are kept.
    """

    max_epochs: int = 30
    patience: int = 3
    warmup_epochs: int = 0
    val_fraction: float = 0.1
    min_delta: float = 1e-3
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        check_config(self, max_epochs=">= 1", patience=">= 1", warmup_epochs=f"[0, {self.max_epochs})",
                     val_fraction="(0, 1)", min_delta="[0, 1)", max_minutes="> 0 or None")


def split_identities(labels, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices ``(train, val)``: ``val`` holds whole identities (about ``val_fraction`` of the rows), chosen
    among identities with at least two images so that every validation face has another image of its person."""
    labels = torch.as_tensor(labels)
    ids, counts = torch.unique(labels, return_counts=True)
    multi = ids[counts >= 2]
    if len(multi) == 0:
        raise InvalidInputError("a validation split needs identities with at least two images")
    order = multi[torch.randperm(len(multi), generator=torch.Generator().manual_seed(seed))]
    want, chosen, total = val_fraction * len(labels), [], 0
    for i in order.tolist():
        if total >= want:
            break
        chosen.append(i)
        total += int((labels == i).sum())
    is_val = torch.isin(labels, torch.as_tensor(chosen))
    if is_val.all():
        raise InvalidInputError("validation split would leave no training rows")
    return torch.nonzero(~is_val).ravel(), torch.nonzero(is_val).ravel()


@dataclass
class Validator:
    """What the attacker measures on his held-out faces after every epoch: the loss, and the type II rate —
    the ``evaluator`` (another recognizer, torch copy) embeds each reconstruction, which succeeds when its
    cosine to ``partner_embeddings`` (the evaluator's embedding of *another* image of the same person, one
    row per training face) exceeds ``threshold`` (the evaluator's FAR 1e-3 threshold)."""

    evaluator: torch.nn.Module | None = None
    partner_embeddings: torch.Tensor | None = None
    threshold: float | None = None


def _decode_all(model: FaceDecoder, inp: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(inp[i:i + batch]) for i in range(0, len(inp), batch)])


def train_decoder_converged(
    train: FaceTrainingSet,
    recognizer: torch.nn.Module | None,
    config: DecoderTrainConfig,
    stop: ConvergenceConfig,
    inputs: torch.Tensor | None = None,
    init: FaceDecoder | None = None,
    validator: Validator | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[FaceDecoder, dict]:
    """Fit a :class:`FaceDecoder` until the validation loss stops improving; returns the best model and the curve.

    Like :func:`train_decoder` (same losses, ``inputs`` and ``init``) but with ``stop.val_fraction`` of the
    identities held out. ``config.epochs`` is ignored (``stop`` decides); the loss watched is
    ``pixel_weight · L1 + id_weight · (1 − cos)`` on the held-out faces, the identity term through
    ``recognizer``. The returned dict has ``history`` (per epoch: train and validation losses, validation
    type II if ``validator`` has an evaluator, learning rate, seconds), ``best_epoch``, ``epochs_run`` and
    ``stopped`` (``"patience"``, ``"max_epochs"`` or ``"time"``).
    """
    device = torch.device(device)
    use_id_loss = recognizer is not None and config.id_weight > 0
    model = _new_decoder(train, config, inputs, init, device)
    if recognizer is not None:
        recognizer = recognizer.to(device).eval().requires_grad_(False)
    images, emb, labels = train.tensors(device)
    inp_all = emb if inputs is None else torch.as_tensor(inputs, dtype=torch.float32).to(device)
    tr, va = split_identities(labels.cpu(), stop.val_fraction, config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.5, 0.999))
    val = validator or Validator()

    @torch.no_grad()
    def validate() -> dict:
        model.eval()
        rec = _decode_all(model, inp_all[va])
        out = {"val_pixel": F.l1_loss(rec, images[va]).item()}
        if recognizer is not None:
            out["val_identity"] = (1 - identity_similarity(recognizer, rec, emb[va])).mean().item()
        out["val_loss"] = config.pixel_weight * out["val_pixel"] + (config.id_weight * out.get("val_identity", 0.0) if use_id_loss else 0.0)
        if val.evaluator is not None and val.partner_embeddings is not None and val.threshold is not None:
            e = torch.cat([val.evaluator(rec[i:i + 128]) for i in range(0, len(rec), 128)])
            cos = F.cosine_similarity(e, val.partner_embeddings.to(device)[va], dim=1)
            out["val_type2"] = float((cos > val.threshold).float().mean())
        return out

    history = [{"epoch": 0, "phase": "init", **validate()}]
    best, best_state, best_epoch, since = None, None, 0, 0
    ctx = DistContext()
    stopped, budget = "max_epochs", TimeBudget(ctx, stop.max_minutes)
    steps = math.ceil(len(tr) / config.batch_size)
    for epoch in range(stop.max_epochs):
        t0 = time.monotonic()
        warm = epoch < stop.warmup_epochs
        with_id = use_id_loss and not warm
        perm = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))].to(device)
        model.train()
        totals = {"pixel": 0.0, "identity": 0.0}
        bar = tqdm(range(steps), desc=f"decoder epoch {epoch + 1}/{stop.max_epochs}", disable=not progress, leave=False)
        for step in bar:
            idx = perm[step * config.batch_size:(step + 1) * config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two rows
                continue
            loss, pixel, ident = _decoder_loss(model, inp_all[idx], images[idx], emb[idx], recognizer if with_id else None, config)
            if ident is not None:
                totals["identity"] += ident.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals["pixel"] += pixel.item()
        row = {"epoch": epoch + 1, "phase": "pixel" if warm else "pixel+identity" if with_id else "pixel",
               "train_pixel": totals["pixel"] / steps, **({"train_identity": totals["identity"] / steps} if with_id else {}),
               **validate(), "lr": opt.param_groups[0]["lr"]}
        row["seconds"] = round(time.monotonic() - t0, 1)
        check_finite({k: v for k, v in row.items() if k.startswith(("train_", "val_"))}, (epoch + 1) * steps,
                     ctx, f"lower lr (now {config.lr:g}) or check the data", model)
        history.append(row)
        if not warm:
            if best is None or row["val_loss"] < best * (1 - stop.min_delta):
                best, best_epoch, since = row["val_loss"], epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since += 1
                for g in opt.param_groups:
                    g["lr"] *= 0.5
                if since >= stop.patience:
                    stopped = "patience"
                    break
        if budget.exceeded():
            stopped = "time"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"history": history, "best_epoch": best_epoch, "epochs_run": len(history) - 1, "stopped": stopped,
                   "train_faces": int(len(tr)), "val_faces": int(len(va)),
                   "val_identities": int(len(torch.unique(labels.cpu()[va]))), "config": asdict(config), "stop": asdict(stop),
                   "params": int(sum(p.numel() for p in model.parameters()))}


def save_training_curve(curves: dict[str, dict], json_path: str | Path, png_path: str | Path | None = None,
                        title: str = "") -> None:
    """Write ``{name: train_decoder_converged info}`` (or a ``train_attacker`` summary, whose per-epoch rows are
    under ``curve``) as JSON and, if ``png_path``, a two-panel plot: validation loss and validation type II per
    epoch, the best epoch marked."""
    import json
    import os

    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps(curves, indent=1) + "\n")
    os.replace(tmp, json_path)
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, info in curves.items():
        h = info["history"] if "history" in info else info["curve"]  # train_decoder_converged's dict or train_attacker's
        ep = [r["epoch"] for r in h]
        line, = ax1.plot(ep, [r["val_loss"] for r in h], "-o", ms=3, label=name)
        if all("val_type2" in r for r in h):
            ax2.plot(ep, [100 * r["val_type2"] for r in h], "-o", ms=3, color=line.get_color(), label=name)
        if info.get("best_epoch"):
            b = next(r for r in h if r["epoch"] == info["best_epoch"])
            ax1.plot([b["epoch"]], [b["val_loss"]], "*", ms=11, color=line.get_color())
            if "val_type2" in b:
                ax2.plot([b["epoch"]], [100 * b["val_type2"]], "*", ms=11, color=line.get_color())
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation loss (L1 + 1 − cos)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation type II (%)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png_path)
    plt.close(fig)
