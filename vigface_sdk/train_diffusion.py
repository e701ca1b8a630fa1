"""Train the prototype-conditioned diffusion model: v-prediction, classifier-free condition dropout,
EMA weights, optional identity loss on the predicted clean image.

Every step draws its batch, timesteps, noise, dropout and flips from a generator seeded by
``(seed, step, rank)``, so a run resumed from its checkpoint continues bit for bit; under
``torchrun`` each rank draws its own batch (``batch_size`` is per process) and DDP averages gradients.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from facecore.artifacts import read_json
from facecore.data.identity_folder import IdentityFolderDataset
from facecore.embeddings import extract_embeddings, l2_normalize
from facecore.errors import DataError, IncompatibleError, InvalidInputError
from facecore.recognizers.base import Recognizer
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from facecore.training.distributed import DistContext, any_rank, barrier, wrap_ddp
from facecore.training.face_pack import FaceTrainingSet

from .ema import EMAModel
from .landmarks import flip_landmarks, landmark_heatmaps, landmarks_from_json
from .prototypes import PrototypeStore
from .schedulers import DDPMScheduler, _NoiseScheduler
from .unet import PrototypeUNet, UNetConfig

if TYPE_CHECKING:
    from .pipeline import VIGFacePipeline


@dataclass
class DiffusionTrainConfig:
    """Hyper-parameters of one diffusion run (``batch_size`` per process)."""

    max_steps: int = 100_000
    max_minutes: float | None = None
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0
    cond_drop_prob: float = 0.1
    ema_decay: float = 0.999
    hflip: bool = True
    identity_weight: float = 0.0
    identity_max_timestep: int = 600  # identity loss only where the predicted x0 is informative
    identity_start_step: int = 0
    identity_batch: int = 64  # at most this many rows per step go through the identity model
    mixed_precision: str = "no"  # "bf16": autocast on CUDA
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_steps <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise InvalidInputError("max_steps, batch_size and lr must be positive")
        if not 0 <= self.cond_drop_prob < 1:
            raise InvalidInputError(f"cond_drop_prob must lie in [0, 1), got {self.cond_drop_prob}")
        if self.mixed_precision not in ("no", "bf16"):
            raise InvalidInputError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")


@dataclass
class DiffusionData:
    """Training faces and their conditions: ``images`` uint8 RGB ``(N, S, S, 3)``, ``labels`` index rows
    of the unit ``prototypes`` ``(n_ids, D)``; optional normalised ``landmarks`` ``(N, 5, 2)``.
    ``condition`` records which space the prototypes live in (``backbone_fingerprint``)."""

    images: np.ndarray
    labels: np.ndarray
    prototypes: np.ndarray
    identities: list[str]
    landmarks: np.ndarray | None = None
    condition: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prototypes = l2_normalize(np.asarray(self.prototypes, np.float32))
        self.labels = np.asarray(self.labels, np.int64)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.shape[1] != self.images.shape[2]:
            raise InvalidInputError(f"images must be square RGB (N, S, S, 3), got {self.images.shape}")
        if len(self.images) == 0 or len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images for {len(self.labels)} labels")
        if self.labels.min() < 0 or self.labels.max() >= len(self.prototypes) or len(self.identities) != len(self.prototypes):
            raise InvalidInputError("labels must index the prototypes, one identity name per prototype")
        if self.landmarks is not None and np.shape(self.landmarks) != (len(self.images), 5, 2):
            raise InvalidInputError(f"landmarks must be (N, 5, 2), got {np.shape(self.landmarks)}")

    @property
    def dim(self) -> int:
        return int(self.prototypes.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def fingerprint(self) -> str:
        """Identifies the data a checkpoint was trained on (counts and identity names)."""
        text = f"{len(self.images)}|{self.size}|{self.dim}|" + "\n".join(self.identities)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def build(cls, images: np.ndarray, labels: np.ndarray, identities: list[str], store: PrototypeStore | None = None,
              embeddings: np.ndarray | None = None, embedding_fingerprint: str | None = None,
              landmarks: np.ndarray | None = None) -> "DiffusionData":
        """Condition each face on its identity's prototype: the stage-1 ``store``'s real prototype
        (faces of identities outside the store are left out) or, without a store, the normalised
        mean of the faces' ``embeddings`` per identity."""
        labels = np.asarray(labels)
        if store is None:
            if embeddings is None:
                raise InvalidInputError("without a prototype store the faces' embeddings are needed (pass a recognizer)")
            used, inverse = np.unique(labels, return_inverse=True)
            means = np.zeros((len(used), embeddings.shape[1]))
            np.add.at(means, inverse, l2_normalize(np.asarray(embeddings, np.float64)))
            return cls(images, inverse, means, [identities[i] for i in used], landmarks,
                       {"source": "mean-embedding", "backbone_fingerprint": embedding_fingerprint})
        row = {name: i for i, name in enumerate(store.identities)}
        names = [identities[lab] for lab in labels]
        keep = np.asarray([n in row for n in names])
        if not keep.any():
            raise DataError("no training image belongs to an identity of the prototype store; use the store of this dataset")
        used = sorted({n for n, k in zip(names, keep) if k})
        index = {n: i for i, n in enumerate(used)}
        return cls(images[keep], np.asarray([index[n] for n, k in zip(names, keep) if k]), store.real[[row[n] for n in used]],
                   used, None if landmarks is None else np.asarray(landmarks)[keep],
                   {"source": "prototype-store", "backbone_fingerprint": store.backbone_fingerprint})

    @classmethod
    def from_training_set(cls, train: FaceTrainingSet, store: PrototypeStore | None = None,
                          landmarks: np.ndarray | None = None) -> "DiffusionData":
        """From a packed training set (``advface-cli pack`` / ``FaceTrainingSet.save``): RGB faces + embeddings."""
        return cls.build(train.images, train.labels, train.identities, store, train.embeddings, train.fingerprint, landmarks)

    @classmethod
    def from_folder(cls, root: str | Path, size: int = 64, store: PrototypeStore | None = None,
                    recognizer: Recognizer | None = None, landmarks_json: str | Path | None = None,
                    exclude: set[str] | frozenset = frozenset(), progress: bool = True) -> "DiffusionData":
        """From ``<identity>/<image>`` aligned crops, resized to ``size``; identities in ``exclude`` are
        left out. Conditions come from ``store`` or from ``recognizer`` embeddings (cached)."""
        ds = IdentityFolderDataset.from_folder(root)
        keep = set(ds.identities) - set(exclude)
        if store is not None:
            keep &= set(store.identities)
        if not keep:
            raise DataError(f"no identity of {root} is left to train on (check --prototypes and the exclusions)")
        ds = ds.subset(keep)
        images = np.stack([cv2.resize(ds.load(i), (size, size), interpolation=cv2.INTER_AREA)[..., ::-1]
                           for i in tqdm(range(len(ds)), desc="load faces", unit="img", disable=not progress, leave=False)])
        emb = extract_embeddings(recognizer, ds, progress=progress) if store is None and recognizer is not None else None
        marks = landmarks_from_json(landmarks_json, ds.relpaths) if landmarks_json else None
        return cls.build(images, ds.labels, ds.identities, store, emb, recognizer.fingerprint if recognizer else None, marks)


def diffusion_loss(unet: nn.Module, scheduler: _NoiseScheduler, x0: torch.Tensor, prototypes: torch.Tensor,
                   timesteps: torch.Tensor, noise: torch.Tensor, drop: torch.Tensor | None = None,
                   heatmaps: torch.Tensor | None = None, identity_model: nn.Module | None = None,
                   identity_max_timestep: int = 600, identity_batch: int | None = None) -> dict[str, torch.Tensor]:
    """``{"mse": ..., "identity": ...}``: the denoising loss against the scheduler's target and, with an
    ``identity_model``, ``1 - cos(identity_model(x0_hat), prototype)`` averaged over (at most
    ``identity_batch``) conditioned rows with ``t < identity_max_timestep``."""
    noisy = scheduler.add_noise(x0, noise, timesteps)
    pred = unet(noisy, timesteps, prototypes, landmarks=heatmaps, drop_condition=drop)
    out = {"mse": F.mse_loss(pred.float(), scheduler.training_target(x0, noise, timesteps).float())}
    if identity_model is not None:
        mask = timesteps < identity_max_timestep
        if drop is not None:
            mask = mask & ~drop
        rows = torch.nonzero(mask).flatten()[:identity_batch]
        x0_hat = scheduler.predict_original(pred[rows].float(), timesteps[rows], noisy[rows].float()).clamp(-1, 1)
        cos = F.cosine_similarity(identity_model((x0_hat + 1) / 2).float(), prototypes[rows].float(), dim=1)
        out["identity"] = (1 - cos).sum() / max(1, len(rows))
    return out


def _step_generator(device: torch.device, seed: int, step: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class DiffusionTrainResult:
    unet: PrototypeUNet
    ema: PrototypeUNet
    state: dict


def train_diffusion(
    data: DiffusionData,
    unet_config: UNetConfig,
    config: DiffusionTrainConfig,
    scheduler: _NoiseScheduler | None = None,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    identity_model: nn.Module | None = None,
    progress: bool = True,
) -> DiffusionTrainResult:
    """Train (or resume from ``checkpoint_dir``) and return the raw and EMA UNets plus the log.

    ``identity_model`` maps RGB ``[0, 1]`` images ``(N, 3, H, W)`` to embeddings in the prototypes'
    space (e.g. ``vigface_sdk.backbones.load_backbone(dir).module`` or ``Recognizer.to_torch()``);
    it is used only when ``config.identity_weight > 0``.
    """
    ctx = ctx or DistContext()
    dev = ctx.device
    scheduler = scheduler or DDPMScheduler()
    if unet_config.cond_dim != data.dim:
        raise IncompatibleError(f"the UNet takes {unet_config.cond_dim}-d prototypes, the data has {data.dim}-d")
    if unet_config.sample_size != data.size:
        raise IncompatibleError(f"the UNet makes {unet_config.sample_size}px images, the data has {data.size}px")
    if bool(unet_config.landmark_channels) != (data.landmarks is not None):
        raise InvalidInputError("landmark_channels=5 needs data with landmarks, and data landmarks need landmark_channels=5")
    torch.manual_seed(config.seed)
    unet = PrototypeUNet(unet_config).to(dev)
    ema = EMAModel(unet, config.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    both = nn.ModuleDict({"unet": unet, "ema": ema.model})
    state = {"step": 0, "history": []}
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    meta = {"unet_config": asdict(unet_config), "scheduler_config": scheduler.config, "data": data.fingerprint()}
    if ckpt and (ckpt / "state.json").is_file():
        saved = read_json(ckpt, "state.json")
        for key, value in meta.items():
            same = UNetConfig(**saved.get(key, {})) == unet_config if key == "unet_config" else saved.get(key) == value
            if not same:
                raise IncompatibleError(f"checkpoint {ckpt} was made with another {key.replace('_', ' ')}; "
                                        "use a fresh --checkpoint folder or the original settings")
        state = load_checkpoint(ckpt, both, opt)
        ema.step = state["step"]
    use_id = identity_model is not None and config.identity_weight > 0
    if use_id:
        identity_model = identity_model.to(dev).eval().requires_grad_(False)
        with torch.no_grad():
            probe = identity_model(torch.full((1, 3, data.size, data.size), 0.5, device=dev))
        if probe.shape[-1] != data.dim:
            raise IncompatibleError(f"the identity model gives {probe.shape[-1]}-d embeddings, prototypes are {data.dim}-d")
    net = wrap_ddp(unet, ctx)
    images = torch.from_numpy(data.images).to(dev)
    labels = torch.from_numpy(data.labels).to(dev)
    protos = torch.from_numpy(data.prototypes).to(dev)
    marks = torch.from_numpy(np.asarray(data.landmarks, np.float32)).to(dev) if data.landmarks is not None else None
    n, size, bsz = len(images), data.size, config.batch_size
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16")
    start, sums, count = time.monotonic(), {}, 0
    bar = tqdm(total=config.max_steps, initial=state["step"], desc="diffusion", unit="step",
               disable=not (progress and ctx.is_main))
    step = state["step"]
    while step < config.max_steps:
        g = _step_generator(dev, config.seed, step, ctx.rank)
        idx = torch.randint(n, (bsz,), generator=g, device=dev)
        t = torch.randint(scheduler.num_train_timesteps, (bsz,), generator=g, device=dev)
        noise = torch.randn((bsz, 3, size, size), generator=g, device=dev)
        u = torch.rand((bsz, 2), generator=g, device=dev)
        drop, flip = u[:, 0] < config.cond_drop_prob, (u[:, 1] < 0.5) & config.hflip
        x0 = images[idx].permute(0, 3, 1, 2).contiguous().float().div(127.5).sub(1)  # NCHW (channels-last breaks CPU conv backward)
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        heat = None
        if marks is not None:
            lm = marks[idx]
            heat = landmark_heatmaps(torch.where(flip[:, None, None], flip_landmarks(lm), lm), size)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        with autocast:
            terms = diffusion_loss(net, scheduler, x0, protos[labels[idx]], t, noise, drop, heat,
                                   identity_model if use_id and step >= config.identity_start_step else None,
                                   config.identity_max_timestep, config.identity_batch)
            loss = terms["mse"] + config.identity_weight * terms.get("identity", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        ema.update(unet)
        step += 1
        for k, v in terms.items():  # summed on the device: no host sync per step
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        count += 1
        bar.update(1)
        out_of_time = bool(config.max_minutes) and (time.monotonic() - start) / 60 > config.max_minutes
        stop = any_rank(out_of_time, ctx) if ctx.distributed else out_of_time
        if step % config.log_every == 0 or step == config.max_steps or stop:
            entry = {"step": step, "minutes": round((time.monotonic() - start) / 60, 3),
                     **{k: round(float(v) / count, 6) for k, v in sums.items()}}
            state["history"].append(entry)
            bar.set_postfix({k: f"{v:.4f}" for k, v in entry.items() if k not in ("step", "minutes")})
            sums, count = {}, 0
        if ckpt and (step % config.checkpoint_every == 0 or step == config.max_steps or stop):
            state = {**state, **meta, "step": step, "config": asdict(config)}
            if ctx.is_main:
                save_checkpoint(ckpt, both, opt, state)
            barrier(ctx)
        if stop:
            break
    bar.close()
    state = {**state, **meta, "step": step, "config": asdict(config)}
    unet.eval()
    return DiffusionTrainResult(unet, ema.model, state)


def build_pipeline(result: DiffusionTrainResult, data: DiffusionData, scheduler: _NoiseScheduler | None = None,
                   max_landmarks: int = 5000, seed: int = 0) -> "VIGFacePipeline":
    """The sampling pipeline of a finished run: EMA UNet, DDIM scheduler on the training schedule, a
    virtual prototype sampler fitted to the training prototypes, and (with landmarks) a pose bank."""
    from .landmarks import LandmarkBank
    from .pipeline import VIGFacePipeline
    from .schedulers import DDIMScheduler
    from .virtual import VirtualPrototypeSampler

    train_sched = scheduler or DDPMScheduler.from_config(result.state["scheduler_config"])
    bank = None
    if data.landmarks is not None:
        pick = np.random.default_rng(seed).permutation(len(data.landmarks))[:max_landmarks]
        bank = LandmarkBank(data.landmarks[np.sort(pick)])
    hist = result.state.get("history", [])
    meta = {"condition": {**data.condition, "dim": data.dim}, "training_identities": list(data.identities),
            "training": {"steps": result.state.get("step"), "images": len(data.images), "final": hist[-1] if hist else None}}
    sampler = VirtualPrototypeSampler.fit(data.prototypes, metadata={"condition": data.condition})
    return VIGFacePipeline(result.ema.cpu().eval(), DDIMScheduler.from_config(train_sched.config), sampler, bank, meta)
