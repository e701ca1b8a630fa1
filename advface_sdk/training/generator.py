"""Train the AdvFace noise generator against a frozen shadow decoder."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facecore.errors import IncompatibleError, InvalidInputError
from facecore.training._checks import check_config, check_finite
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from facecore.training.distributed import DistContext, wrap_ddp
from facecore.training.face_pack import FaceTrainingSet
from facecore.training.loop import EpochTail

from ..models.decoders import FaceDecoder, PriorShadow
from ..models.generator import NoiseGenerator


@dataclass
class GeneratorTrainConfig:
    budget: float = 0.5
    hidden: int = 256
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    id_weight: float = 1.0  # privacy: push the identity of S(z + δ) away from z
    pixel_weight: float = 1.0  # privacy: push S(z + δ) away from the true face
    utility_weight: float = 4.0  # utility: keep z + δ close to z
    genuine_weight: float = 4.0  # utility: z + δ must keep matching other images of the same person
    genuine_margin: float = 0.15  # ... by this much above the clean verification threshold
    margin_weight: float = 1.0  # utility: keep z + δ closer to z than to other identities
    margin: float = 0.3
    distortion_weight: float = 0.0  # utility: keep z + δ's cosine scores against other people's templates unchanged
    prior_id_weight: float = 0.0  # privacy vs a face prior (second shadow): push the identity of P(z + δ) away from z
    prior_pixel_weight: float = 0.0  # privacy vs a face prior: push P(z + δ) away from the true face
    seed: int = 0
    max_minutes: float | None = None

    def __post_init__(self) -> None:  # budget: an L2 norm on unit embeddings; no batch norm, so batch_size 1 is fine
        check_config(self, budget="(0, 2)", hidden=">= 1", epochs=">= 1", batch_size=">= 1", lr="> 0",
                     id_weight=">= 0", pixel_weight=">= 0", utility_weight=">= 0", genuine_weight=">= 0",
                     genuine_margin=">= 0", margin_weight=">= 0", margin=">= 0", distortion_weight=">= 0",
                     prior_id_weight=">= 0", prior_pixel_weight=">= 0", seed=">= 0", max_minutes="> 0 or None")


def _as_priors(prior: "PriorShadow | Sequence[PriorShadow] | None") -> list[PriorShadow]:
    return [] if prior is None else [prior] if isinstance(prior, torch.nn.Module) else list(prior)


def adversarial_losses(protected: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, images: torch.Tensor,
                       shadow: torch.nn.Module, recognizer: torch.nn.Module | None, cfg: GeneratorTrainConfig,
                       partner: torch.Tensor | None = None, threshold: float | None = None,
                       prior: "PriorShadow | Sequence[PriorShadow] | None" = None) -> dict:
    """The AdvFace objective terms (to minimise) for protected embeddings of a batch.

    ``partner`` holds embeddings of another image of the same person (a stand-in for a future
    clean probe): the protected template must stay ``genuine_margin`` above the verification
    ``threshold`` against it (or, without a threshold, as close as the clean template was).
    ``prior`` is a second shadow, a face prior, or an ensemble of them: each one's rendering of the protected
    template is pushed away from the face (``prior_pixel``, when ``images`` are at its size) and from the
    identity (``prior_identity``); with several priors both terms are their means.
    """
    rec = shadow(protected)
    out = {"pixel": -F.l1_loss(rec, images)}
    priors = _as_priors(prior)
    if priors:
        faces = [p(protected) for p in priors]
        if all(images.shape[-1] == f.shape[-1] for f in faces):
            out["prior_pixel"] = -torch.stack([F.l1_loss(f, images) for f in faces]).mean()
        if recognizer is not None:
            small = [F.interpolate(f, size=rec.shape[-2:], mode="bilinear", align_corners=False) for f in faces]
            emb = recognizer(torch.cat([rec, *small]))
            out["identity"] = F.cosine_similarity(emb[:len(rec)], z, dim=1).mean()
            out["prior_identity"] = F.cosine_similarity(emb[len(rec):], z.repeat(len(priors), 1), dim=1).mean()
    elif recognizer is not None:
        out["identity"] = F.cosine_similarity(recognizer(rec), z, dim=1).mean()
    up, u = F.normalize(protected, dim=1), F.normalize(z, dim=1)
    own = (up * u).sum(1)
    out["utility"] = (1 - own).mean()
    scores = up @ u.t()
    other = scores.masked_fill(labels[:, None] == labels[None, :], -2.0).max(dim=1).values
    out["margin"] = F.relu(other - own + cfg.margin).mean()
    if cfg.distortion_weight:
        # (up·u_j)/own − u·u_j = δ̂·u_j: how far the noise moves each verification score, up to the common rescale
        shift = scores / own[:, None] - u @ u.t()
        out["distortion"] = shift.masked_fill(torch.eye(len(u), dtype=torch.bool, device=u.device), 0.0).square().mean()
    if partner is not None:
        p = F.normalize(partner, dim=1)
        target = (u * p).sum(1) if threshold is None else torch.full_like(own, threshold + cfg.genuine_margin)
        has_partner = (partner != z).any(dim=1).float()
        out["genuine"] = (F.relu(target - (up * p).sum(1)) * has_partner).sum() / has_partner.sum().clamp_min(1)
    return out


def clean_threshold(embeddings: np.ndarray, labels: np.ndarray, partners: np.ndarray, seed: int = 0) -> float:
    """Best verification threshold of the clean embeddings on (same-person partner, random impostor) pairs."""
    from facecore.metrics import best_threshold

    u = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    has = np.flatnonzero(partners != np.arange(len(u)))
    rng = np.random.default_rng(seed)
    other = rng.integers(0, len(u), len(has))
    keep = labels[other] != labels[has]
    scores = np.concatenate([np.sum(u[has] * u[partners[has]], 1), np.sum(u[has[keep]] * u[other[keep]], 1)])
    same = np.concatenate([np.ones(len(has), bool), np.zeros(int(keep.sum()), bool)])
    return best_threshold(scores, same)


def total_loss(terms: dict, cfg: GeneratorTrainConfig) -> torch.Tensor:
    weights = {"pixel": cfg.pixel_weight, "identity": cfg.id_weight, "utility": cfg.utility_weight,
               "margin": cfg.margin_weight, "genuine": cfg.genuine_weight,
               "distortion": cfg.distortion_weight, "prior_identity": cfg.prior_id_weight,
               "prior_pixel": cfg.prior_pixel_weight}
    return sum(weights[k] * v for k, v in terms.items())


def train_generator(
    train: FaceTrainingSet,
    shadow: FaceDecoder,
    recognizer: torch.nn.Module | None,
    config: GeneratorTrainConfig,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    init: NoiseGenerator | None = None,
    prior: "PriorShadow | Sequence[PriorShadow] | None" = None,
) -> tuple[NoiseGenerator, dict]:
    """Fit ``G`` so that the frozen ``shadow`` decodes ``z + G(z)`` into a different face while
    ``z + G(z)`` still matches ``z``; resumable and DDP-aware like :func:`train_decoder`.
    ``init`` fine-tunes an existing generator (same dimension and width) instead of starting afresh;
    ``prior`` adds a face prior, or an ensemble of them, as further shadows (weighted by ``prior_id_weight`` /
    ``prior_pixel_weight``; an ensemble's terms are averaged)."""
    ctx = ctx or DistContext()
    if shadow.dim != train.dim:
        raise IncompatibleError(f"shadow model takes {shadow.dim}-d embeddings, training set has {train.dim}-d")
    priors = _as_priors(prior)
    for p in priors:
        if p.dim != train.dim:
            raise IncompatibleError(f"the face prior takes {p.dim}-d prototypes, training set has {train.dim}-d")
    if (not priors) != (config.prior_id_weight == 0 and config.prior_pixel_weight == 0):
        raise InvalidInputError("give a face prior together with a non-zero prior_id_weight or prior_pixel_weight")
    if priors and config.prior_id_weight and recognizer is None:
        raise InvalidInputError("prior_id_weight needs the recognizer")
    torch.manual_seed(config.seed)
    gen = NoiseGenerator(train.dim, config.hidden, config.budget)
    if init is not None:
        if (init.dim, init.config["hidden"]) != (train.dim, config.hidden):
            raise IncompatibleError(f"cannot fine-tune a {init.dim}-d generator of width {init.config['hidden']} "
                                    f"into {train.dim}-d, width {config.hidden}")
        gen.load_state_dict(init.state_dict())
    gen = gen.to(ctx.device)
    opt = torch.optim.Adam(gen.parameters(), lr=config.lr)
    state = {"epoch": 0, "history": []}
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt and (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, gen, opt, {k: getattr(config, k) for k in ("budget", "hidden", "seed")})
    shadow = shadow.to(ctx.device).eval().requires_grad_(False)
    priors = [p.to(ctx.device).eval().requires_grad_(False) for p in priors]
    if recognizer is not None:
        recognizer = recognizer.to(ctx.device).eval().requires_grad_(False)
    net = wrap_ddp(gen, ctx)
    images, emb, labels = train.tensors(ctx.device)
    partner_idx = train.partners(config.seed)
    threshold = clean_threshold(train.embeddings, train.labels, partner_idx, config.seed)
    partners = torch.from_numpy(partner_idx).to(ctx.device)
    n = len(train)
    per_rank = n // ctx.world_size
    if per_rank < 1:
        raise InvalidInputError(f"{n} faces for {ctx.world_size} processes: each needs at least one")
    steps = math.ceil(per_rank / config.batch_size)
    tail = EpochTail(ctx, config.max_minutes, (lambda st: save_checkpoint(ckpt, gen, opt, st)) if ckpt else None)
    for epoch in range(state["epoch"], config.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        perm = perm[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
        totals: dict[str, float] = {}
        bar = tqdm(range(steps), desc=f"generator epoch {epoch + 1}/{config.epochs}", disable=not (progress and ctx.is_main), leave=False)
        for step in bar:
            idx = perm[step * config.batch_size:(step + 1) * config.batch_size].to(ctx.device)
            terms = adversarial_losses(net(emb[idx]), emb[idx], labels[idx], images[idx], shadow, recognizer, config,
                                       emb[partners[idx]], threshold, priors)
            loss = total_loss(terms, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + v.item()
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items()})
            if tail.exceeded():  # the time cap holds inside an epoch too (a CPU epoch is minutes)
                break
        done = step + 1
        check_finite(totals, epoch * steps + done, ctx, f"lower lr (now {config.lr:g}) or check the data", gen)
        state = tail.finish_epoch(state, totals, done, steps, config=asdict(config), clean_threshold=threshold)
        if done < steps:  # out of time mid-epoch: no checkpoint, a resume redoes this epoch
            break
        if tail(state):
            break
    gen.eval()
    return gen, state
