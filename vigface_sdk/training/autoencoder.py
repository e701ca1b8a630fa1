"""Train the identity-conditioned face autoencoder (``FaceAutoencoder``) on aligned faces.

Loss per step: L1 pixels + ``kl_weight`` · KL(latent ‖ N(0, I)) + ``identity_weight`` · (1 − cos) between
the recognizer's embedding of the reconstruction and of the original, + ``swap_weight`` · (1 − cos)
between the embedding of a face decoded from one person's latent with *another* person's prototype
and that prototype, + an adversarial term from a PatchGAN discriminator (hinge loss) on both kinds of
decoded faces, weighted adaptively as in VQGAN (``adversarial_weight`` × the ratio of the pixel and
adversarial gradient norms at the decoder's last layer). Measured here: without the adversarial term,
the identity terms paint coloured stripes that a recognizer reads as a person and a face detector does
not read as a face. The recognizer sees each decoded face under a random small shift and scale
(expectation over transformations), which also discourages such patterns. Identity terms run on
``identity_batch`` faces of each batch (the recognizer's backward pass is the step's most expensive
part on a CPU). Seeded per step: a run resumed from its
checkpoint continues bit for bit; runs under ``torchrun`` (``batch_size`` is per process).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecore.errors import IncompatibleError, InvalidInputError
from facecore.training._checks import check_config
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from facecore.training.distributed import DistContext, wrap_ddp
from facecore.training.loop import StepTail

from ..models.autoencoder import FaceAutoencoder


RUN_LENGTH = ("max_steps", "max_minutes", "log_every", "checkpoint_every")  # may change when a run is resumed


@dataclass
class AutoencoderTrainConfig:
    max_steps: int = 20_000
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    kl_weight: float = 1e-3
    identity_weight: float = 0.5
    swap_weight: float = 0.5
    identity_batch: int = 16
    adversarial_weight: float = 0.5
    adversarial_start: int = 0
    hflip: bool = True
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_every: int = 250
    seed: int = 0
    model: dict = field(default_factory=dict)  # FaceAutoencoder kwargs

    def __post_init__(self) -> None:
        check_config(self, max_steps=">= 1", max_minutes="> 0 or None", batch_size=">= 2", lr="> 0", warmup_steps=">= 0",
                     kl_weight=">= 0", identity_weight=">= 0", swap_weight=">= 0",
                     identity_batch=f"[1, {self.batch_size}]", adversarial_weight=">= 0", adversarial_start=">= 0",
                     grad_clip=">= 0", log_every=">= 1", checkpoint_every=">= 1")


def identity_residuals(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit embeddings minus their identity's prototype, for identities with at least two images."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    keep = np.bincount(labels)[labels] >= 2
    return (e - identity_prototypes(embeddings, labels)[labels])[keep].astype(np.float32)


def identity_prototypes(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One unit prototype per label: the normalised mean of its normalised embeddings (``(max label + 1, D)``)."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    sums = np.zeros((int(labels.max()) + 1, e.shape[1]), np.float64)
    np.add.at(sums, labels, e)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1)).astype(np.float32)


class _Step(nn.Module):
    """One forward pass of a training step (so DistributedDataParallel sees the whole graph)."""

    def __init__(self, model: FaceAutoencoder):
        super().__init__()
        self.model = model

    def forward(self, x, prototypes, noise, swap_prototypes):
        mean, logvar = self.model.encode(x)
        z = mean + noise * (0.5 * logvar).exp()
        k = len(swap_prototypes)
        decoded = self.model.decode(torch.cat([z, z[:k]]), torch.cat([prototypes, swap_prototypes]))
        return decoded[:len(x)], decoded[len(x):], mean, logvar


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per ``2^len(widths)``-pixel patch."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.GroupNorm(8, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shift (±5 %) and scale (±5 %) of images ``(N, 3, H, W)``, borders repeated."""
    n = len(x)
    theta = torch.zeros(n, 2, 3)
    scale = 1 + (torch.rand(n, generator=g) - 0.5) * 0.1
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(n, 2, generator=g) - 0.5) * 0.1
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def train_autoencoder(images: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, recognizer: nn.Module,
                      config: AutoencoderTrainConfig, ctx: DistContext | None = None,
                      checkpoint_dir: str | Path | None = None, condition: dict | None = None,
                      init: FaceAutoencoder | None = None, progress: bool = True) -> tuple[FaceAutoencoder, dict]:
    """Train (or resume from ``checkpoint_dir``) on uint8 RGB ``images`` ``(N, S, S, 3)`` with their
    recognizer ``embeddings`` and identity ``labels``; ``recognizer`` maps RGB [0, 1] images to
    embeddings of the same space (``facecore`` ``Recognizer.to_torch()``); ``init``: start from this
    model's weights (a fresh run only). Returns the model and its log."""
    ctx = ctx or DistContext()
    dev = ctx.device
    if not (len(images) == len(embeddings) == len(labels)) or images.ndim != 4 or images.shape[-1] != 3:
        raise InvalidInputError("images (N, S, S, 3), embeddings (N, D) and labels (N,) must have the same N")
    protos_np = identity_prototypes(embeddings, labels)
    model_kwargs = {"image_size": int(images.shape[1]), "cond_dim": int(embeddings.shape[1]), **config.model,
                    "condition": dict(condition or {})}
    torch.manual_seed(config.seed)
    model = FaceAutoencoder(**model_kwargs).to(dev)
    if init is not None:
        model.load_state_dict(init.state_dict())
    disc = PatchDiscriminator().to(dev)
    both = nn.ModuleDict({"autoencoder": model, "discriminator": disc})
    # one optimizer, two parameter groups: each half steps alone (the other's gradients are None then)
    opt = torch.optim.AdamW([{"params": model.parameters()}, {"params": disc.parameters()}], lr=config.lr,
                            betas=(0.5, 0.9), weight_decay=0.0)
    state: dict = {"step": 0, "history": []}
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    meta = {"model_config": model.config, "data": {"images": int(len(images)), "identities": int(len(protos_np))}}
    run_config = json.loads(json.dumps(asdict(config)))  # as the checkpoint's JSON holds it
    if ckpt and (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, both, opt, expect={k: v for k, v in run_config.items() if k not in RUN_LENGTH})
    recognizer = recognizer.to(dev).eval().requires_grad_(False)
    with torch.no_grad():
        if recognizer(torch.full((1, 3, images.shape[1], images.shape[1]), 0.5, device=dev)).shape[-1] != embeddings.shape[1]:
            raise IncompatibleError("the recognizer's embeddings do not have the dimension of the training embeddings")
    net, dnet = wrap_ddp(_Step(model), ctx), wrap_ddp(disc, ctx)
    last = model.dec_out[-1].weight
    imgs = torch.from_numpy(np.ascontiguousarray(images))
    embs = F.normalize(torch.from_numpy(np.asarray(embeddings, np.float32)), dim=1)
    labs = torch.from_numpy(np.asarray(labels, np.int64))
    protos = torch.from_numpy(protos_np)
    n, b, k = len(imgs), config.batch_size, config.identity_batch

    def save(step: int) -> None:
        save_checkpoint(ckpt, both, opt, {**state, **meta, "step": step, "config": run_config})

    tail = StepTail(ctx, config.max_steps, state["step"], state["history"], "autoencoder", config.log_every,
                    config.checkpoint_every, config.max_minutes, save if ckpt else None, progress, both,
                    f"lower lr (now {config.lr:g}) or check the data")
    stop = state["step"] >= config.max_steps
    while not stop:
        g = step_generator(config.seed, tail.step, ctx.rank)
        idx = torch.randint(n, (b,), generator=g)
        flip = (torch.rand(b, generator=g) < 0.5) & config.hflip
        other = (idx + torch.randint(1, n, (b,), generator=g)) % n  # another face, usually another person
        x = imgs[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1)
        x = torch.where(flip[:, None, None, None], x.flip(3), x).to(dev)
        p = protos[labs[idx]].to(dev)
        noise = torch.randn((b, *model.latent_shape), generator=g).to(dev)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (tail.step + 1) / max(1, config.warmup_steps))
        p_swap = protos[labs[other[:k]]].to(dev)
        rec, swapped, mean, logvar = net(x, p, noise, p_swap)
        terms = {"l1": (rec - x).abs().mean(),
                 "kl": 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()}
        faces = _jitter(torch.cat([rec[:k], swapped]).add(1).div(2).clamp(0, 1), g)
        emb = F.normalize(recognizer(faces), dim=1)
        target_rec = torch.where(flip[:k, None], p[:k], embs[idx[:k]].to(dev))  # a mirrored face: its identity's prototype
        terms["identity"] = 1 - (emb[:k] * target_rec).sum(1).mean()
        terms["swap"] = 1 - (emb[k:] * p_swap).sum(1).mean()
        loss = (terms["l1"] + config.kl_weight * terms["kl"] + config.identity_weight * terms["identity"]
                + config.swap_weight * terms["swap"])
        adversarial = config.adversarial_weight > 0 and tail.step >= config.adversarial_start
        if adversarial:
            disc.requires_grad_(False)
            terms["g_adv"] = -dnet(torch.cat([rec, swapped])).mean()
            g_rec = torch.autograd.grad(terms["l1"], last, retain_graph=True)[0]
            g_adv = torch.autograd.grad(terms["g_adv"], last, retain_graph=True)[0]
            weight = (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach() * config.adversarial_weight
            loss = loss + weight * terms["g_adv"]
            disc.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        if adversarial:
            opt.zero_grad(set_to_none=True)
            fake = torch.cat([rec, swapped]).detach()
            terms["d_loss"] = F.relu(1 - dnet(x)).mean() + F.relu(1 + dnet(fake)).mean()
            terms["d_loss"].backward()
            opt.step()
        stop = tail(terms)
    state = {**state, **meta, "step": tail.step, "config": run_config}
    return model.eval(), state

