"""Train the prototype-conditioned latent denoiser with diffusers' DDPM schedule and ``EMAModel``.

The autoencoder is frozen: every training face (and its mirror image) is encoded once, and each
step draws latents from those posteriors, noises them with ``DDPMScheduler.add_noise`` and fits
the noise (MSE), the prototype dropped with probability ``cond_drop_prob`` for classifier-free
guidance. No identity loss on the decoded prediction: identity is rendered by the decoder from the
prototype, the latent only carries what identity does not decide. Seeded per step, resumable,
runs under ``torchrun`` (``batch_size`` per process).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from torch import nn

from facecore.errors import IncompatibleError
from facecore.training._checks import check_config
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from facecore.training.distributed import DistContext, wrap_ddp
from facecore.training.loop import StepTail

from ..models.autoencoder import FaceAutoencoder
from ..models.denoiser import PrototypeDenoiser
from .autoencoder import RUN_LENGTH, identity_prototypes, step_generator

# ``leading`` spacing: samplers made from this config never start at t=999, where alpha_bar is 2e-9 (see
# pipelines.pipeline.default_scheduler)
TRAIN_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                       clip_sample=False, timestep_spacing="leading", steps_offset=1)


@dataclass
class DiffusionTrainConfig:
    max_steps: int = 50_000
    max_minutes: float | None = None
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 200
    cond_drop_prob: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_every: int = 500
    seed: int = 0
    model: dict = field(default_factory=dict)  # PrototypeDenoiser kwargs

    def __post_init__(self) -> None:
        check_config(self, max_steps=">= 1", max_minutes="> 0 or None", batch_size=">= 1", lr="> 0", warmup_steps=">= 0",
                     cond_drop_prob="[0, 1)", ema_decay="[0, 1]", grad_clip=">= 0", log_every=">= 1",
                     checkpoint_every=">= 1")


@torch.no_grad()
def encode_training_set(autoencoder: FaceAutoencoder, images: np.ndarray, batch_size: int = 256,
                        progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mean, logvar)`` of every face and of its mirror image: ``(2N, C, s, s)`` each, mirrors second."""
    from tqdm.auto import tqdm

    dev = next(autoencoder.parameters()).device
    means, logvars = [], []
    for flip in (False, True):
        for lo in tqdm(range(0, len(images), batch_size), desc="encode", disable=not progress, leave=False):
            x = torch.from_numpy(images[lo:lo + batch_size]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
            mean, logvar = autoencoder.encode((x.flip(3) if flip else x).to(dev))
            means.append(mean.cpu())
            logvars.append(logvar.cpu())
    return torch.cat(means), torch.cat(logvars)


def latent_scaling_factor(autoencoder: FaceAutoencoder, images: np.ndarray) -> float:
    """The factor that gives the latent means of ``images`` unit variance (diffusers' ``scaling_factor``)."""
    mean, _ = encode_training_set(autoencoder, images)
    return float(1.0 / mean[:len(images)].std())


def train_latent_diffusion(autoencoder: FaceAutoencoder, images: np.ndarray, embeddings: np.ndarray, labels: np.ndarray,
                           config: DiffusionTrainConfig, ctx: DistContext | None = None,
                           checkpoint_dir: str | Path | None = None, progress: bool = True
                           ) -> tuple[PrototypeDenoiser, PrototypeDenoiser, DDPMScheduler, dict]:
    """Train (or resume) on uint8 RGB ``images`` with recognizer ``embeddings`` and identity ``labels``
    (prototype = identity mean, as the autoencoder was trained). Returns (denoiser, EMA denoiser,
    training scheduler, log). Latents are scaled by ``autoencoder.scaling_factor``."""
    ctx = ctx or DistContext()
    dev = ctx.device
    if embeddings.shape[1] != autoencoder.cond_dim:
        raise IncompatibleError(f"the autoencoder takes {autoencoder.cond_dim}-d prototypes, embeddings are {embeddings.shape[1]}-d")
    autoencoder = autoencoder.to(dev).eval().requires_grad_(False)
    mean, logvar = encode_training_set(autoencoder, images, progress=progress and ctx.is_main)
    protos = torch.from_numpy(identity_prototypes(embeddings, labels))
    labs = torch.from_numpy(np.asarray(labels, np.int64)).repeat(2)
    c, s, _ = autoencoder.latent_shape
    torch.manual_seed(config.seed)
    model = PrototypeDenoiser(sample_size=s, latent_channels=c, cond_dim=autoencoder.cond_dim,
                              **{**config.model, "condition": dict(autoencoder.config["condition"])}).to(dev)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    scheduler = DDPMScheduler(**TRAIN_SCHEDULER)
    both = nn.ModuleDict({"model": model, "ema": ema_model})
    state: dict = {"step": 0, "history": []}
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    run_config = json.loads(json.dumps(asdict(config)))  # as the checkpoint's JSON holds it
    if ckpt and (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, both, opt, expect={k: v for k, v in run_config.items() if k not in RUN_LENGTH})
    ema = EMAModel(ema_model.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
    ema.optimization_step = state["step"]
    net = wrap_ddp(model, ctx)
    scale = autoencoder.scaling_factor
    meta = {"model_config": model.config, "scheduler_config": dict(scheduler.config), "scaling_factor": scale}

    def save(step: int) -> None:
        ema.copy_to(ema_model.parameters())
        save_checkpoint(ckpt, both, opt, {**state, **meta, "step": step, "config": run_config})

    tail = StepTail(ctx, config.max_steps, state["step"], state["history"], "latent diffusion", config.log_every,
                    config.checkpoint_every, config.max_minutes, save if ckpt else None, progress, model,
                    f"lower lr (now {config.lr:g}) or check the data")
    n, b = len(mean), config.batch_size
    stop = state["step"] >= config.max_steps
    while not stop:
        g = step_generator(config.seed, tail.step, ctx.rank)
        idx = torch.randint(n, (b,), generator=g)
        z0 = (mean[idx] + torch.randn(mean[idx].shape, generator=g) * (0.5 * logvar[idx]).exp()) * scale
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(scheduler.config.num_train_timesteps, (b,), generator=g)
        drop = torch.rand(b, generator=g) < config.cond_drop_prob
        zt = scheduler.add_noise(z0, noise, t)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (tail.step + 1) / max(1, config.warmup_steps))
        pred = net(zt.to(dev), t.to(dev), protos[labs[idx]].to(dev), drop.to(dev))
        loss = F.mse_loss(pred.float(), noise.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        ema.step(model.parameters())
        stop = tail({"mse": loss})
    ema.copy_to(ema_model.parameters())
    state = {**state, **meta, "step": tail.step, "config": run_config}
    return model.eval(), ema_model.eval(), scheduler, state


def nearest_stranger_median(prototypes: np.ndarray) -> float:
    """Median over identities of the cosine to their most similar *other* identity (unit prototypes)."""
    p = np.asarray(prototypes, np.float32)
    best = np.full(len(p), -1.0, np.float32)
    for lo in range(0, len(p), 2048):
        sims = p[lo:lo + 2048] @ p.T
        sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -1
        best[lo:lo + 2048] = sims.max(1)
    return float(np.median(best))


def build_pipeline(autoencoder: FaceAutoencoder, denoiser: PrototypeDenoiser, train_scheduler_config: dict,
                   train_prototypes: np.ndarray, exclude: np.ndarray | None = None, metadata: dict | None = None,
                   residuals: np.ndarray | None = None):
    """The sampling pipeline of a finished run: DPM-Solver++ on the training schedule and a virtual sampler
    fitted to ``train_prototypes`` that rejects draws closer to any ``exclude`` prototype (default: the
    training prototypes) than the median nearest-stranger cosine among those excluded identities, and
    (with ``residuals``, see ``identity_residuals``) varies each image's identity as real photos vary."""
    from ..models.virtual import VirtualPrototypeSampler
    from ..pipelines.pipeline import VIGFacePipeline, default_scheduler

    exclude = train_prototypes if exclude is None else exclude
    tau = nearest_stranger_median(exclude)
    sampler = VirtualPrototypeSampler.fit(train_prototypes, exclude=exclude, max_similarity=tau, residuals=residuals,
                                          metadata={"excluded_identities": int(len(exclude)),
                                                    "max_similarity_rule": "median nearest-stranger cosine among the excluded"})
    scheduler = default_scheduler(DDPMScheduler.from_config(train_scheduler_config).config)
    return VIGFacePipeline(autoencoder, denoiser, scheduler, sampler, metadata)
