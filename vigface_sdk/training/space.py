"""Train the VIGFace identity space: a margin head with real and virtual prototypes, on a backbone.

Two inputs: an identity-folder dataset of aligned crops (backbone trained from scratch or
fine-tuned, or frozen), or precomputed embeddings of a frozen recognizer (head only; fast).
Training is seeded per step, so a run resumed from its checkpoint continues bit for bit, and
runs under ``torchrun`` with DistributedDataParallel (``batch_size`` is per process).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from facecore.artifacts import read_json
from facecore.data.identity_folder import IMAGE_SUFFIXES, IdentityFolderDataset
from facecore.errors import DataError, IncompatibleError, InvalidInputError
from facecore.training._checks import check_config, check_finite
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from facecore.training.distributed import DistContext, barrier, wrap_ddp

from ..models.backbones import FaceBackbone, embed_dataset, images_to_tensor, save_backbone
from ..models.heads import MARGINS, VirtualMarginHead
from ..models.prototypes import PrototypeStore


@dataclass
class SpaceTrainConfig:
    """Hyper-parameters of one identity-space run (``batch_size`` per process; ``margin`` None: 0.5 ArcFace, 0.35 CosFace)."""

    num_virtual: int
    margin_type: str = "arcface"
    margin: float | None = None
    scale: float = 64.0
    sigma_momentum: float = 0.9
    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 256
    lr: float = 0.1
    backbone_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4  # backbone only: the head's rows are normalised
    flip: bool = True
    init_real_from_means: bool = True
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.margin_type not in MARGINS:
            raise InvalidInputError(f"margin_type must be one of {sorted(MARGINS)}, got {self.margin_type!r}")
        if self.margin is None:
            self.margin = MARGINS[self.margin_type]
        # lr 0 is allowed: a frozen head, the untrained baseline of a comparison
        check_config(self, num_virtual=">= 1", margin=">= 0", scale="> 0", sigma_momentum="[0, 1)", epochs=">= 1",
                     max_steps=">= 1 or None", batch_size=">= 1", lr=">= 0", backbone_lr=">= 0", momentum="[0, 1)",
                     weight_decay=">= 0", checkpoint_every=">= 1", log_every=">= 1")


@dataclass
class EmbeddingSet:
    """Precomputed raw embeddings of a frozen backbone: ``embeddings[i]`` belongs to ``identities[labels[i]]``.

    ``flipped`` (optional) holds the embeddings of the mirrored crops, used as augmentation.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    identities: list[str]
    fingerprint: str
    flipped: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, np.float32)
        self.labels = np.asarray(self.labels, np.int64)
        if self.embeddings.ndim != 2 or len(self.embeddings) == 0 or len(self.labels) != len(self.embeddings):
            raise InvalidInputError(f"need (N, D) embeddings with N labels, got {self.embeddings.shape} and {self.labels.shape}")
        if self.flipped is not None and np.shape(self.flipped) != self.embeddings.shape:
            raise InvalidInputError("flipped embeddings must have the shape of the embeddings")
        if not np.isfinite(self.embeddings).all():
            raise InvalidInputError("embeddings contain NaN or Inf")
        _check_labels(self.labels, len(self.identities))

    def __len__(self) -> int:
        return len(self.embeddings)

    @classmethod
    def from_recognizer(cls, recognizer, dataset: IdentityFolderDataset, flip: bool = True) -> "EmbeddingSet":
        """Embed ``dataset`` with a recognizer (cached on disk by facecore.embeddings)."""
        from facecore.embeddings import extract_embeddings

        emb = extract_embeddings(recognizer, dataset)
        flipped = extract_embeddings(recognizer, dataset, flip=True) if flip else None
        return cls(emb, dataset.labels, list(dataset.identities), recognizer.fingerprint, flipped)


def _check_labels(labels: np.ndarray, n: int) -> None:
    if labels.min() < 0 or labels.max() >= n:
        raise InvalidInputError(f"labels must index the {n} identities")
    missing = n - len(np.unique(labels))
    if missing:
        raise InvalidInputError(f"{missing} identities have no sample; every real prototype needs at least one")


def load_training_dataset(root: str | Path, min_images: int = 2, drop_small: bool = False,
                          size: tuple[int, int] = (112, 112)) -> IdentityFolderDataset:
    """An identity-folder dataset checked for training: every identity needs ``min_images`` images.

    An empty identity folder or one with too few images raises :class:`DataError` unless
    ``drop_small``, which leaves such identities out.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root} has no identity folders: expected <identity>/<image> with {sorted(IMAGE_SUFFIXES)} files")
    min_images = max(1, int(min_images))
    if not drop_small:
        for folder in folders:
            count = sum(1 for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if count < min_images:
                raise DataError(f"identity {folder.name!r} has {count} image(s), fewer than the {min_images} training needs; "
                                f"add images, remove the folder, or pass --drop-small (min_images={min_images})")
    return IdentityFolderDataset.from_folder(root, size=size, min_images=min_images)


def check_images(dataset: IdentityFolderDataset, progress: bool = True) -> None:
    """Decode every image once, so an unreadable file fails before training starts (:class:`DataError`)."""
    for i in tqdm(range(len(dataset)), desc="check images", unit="img", disable=not progress, leave=False):
        dataset.load(i)


class SpaceModel(nn.Module):
    """``backbone`` (None: inputs are embeddings already) followed by the margin head; returns the loss dict."""

    def __init__(self, head: VirtualMarginHead, backbone: FaceBackbone | None = None):
        super().__init__()
        self.head = head
        self.backbone = backbone

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(x if self.backbone is None else self.backbone(x), labels)


@dataclass
class TrainedSpace:
    """The outcome of :func:`train_space`: head (prototypes), backbone (if any) and the training state."""

    head: VirtualMarginHead
    identities: list[str]
    fingerprint: str
    config: SpaceTrainConfig
    state: dict = field(default_factory=dict)
    backbone: FaceBackbone | None = None

    def store(self) -> PrototypeStore:
        real, virtual = self.head.prototypes()
        meta = {**self.head.config(), "backbone_fingerprint": self.fingerprint, "sigma": self.head.sigma.cpu().tolist(),
                "steps": self.state.get("step", 0), "seed": self.config.seed}
        return PrototypeStore(real, virtual, list(self.identities), meta)

    def save(self, directory: str | Path) -> Path:
        """``directory/prototypes`` (PrototypeStore) and ``directory/backbone`` (when there is one)."""
        directory = Path(directory)
        self.store().save_pretrained(directory / "prototypes")
        if self.backbone is not None:
            save_backbone(self.backbone, directory / "backbone")
        return directory


class _Batches:
    """Seeded per-epoch shuffles, split across ranks; each step's batch and augmentation depend only on the step."""

    def __init__(self, data, config: SpaceTrainConfig, ctx: DistContext):
        self.data, self.config, self.ctx = data, config, ctx
        self.per_rank = len(data) // ctx.world_size
        if self.per_rank == 0:
            raise DataError(f"{len(data)} samples cannot be split over {ctx.world_size} processes")
        self.steps_per_epoch = max(1, self.per_rank // config.batch_size)
        self._epoch, self._perm = -1, None
        if isinstance(data, EmbeddingSet):
            self.emb = torch.from_numpy(data.embeddings).to(ctx.device)
            self.flipped = torch.from_numpy(data.flipped).to(ctx.device) if data.flipped is not None else None
        self.labels = torch.from_numpy(np.asarray(data.labels, np.int64)).to(ctx.device)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
            perm = torch.randperm(len(self.data), generator=gen)
            self._epoch, self._perm = epoch, perm[self.ctx.rank * self.per_rank:(self.ctx.rank + 1) * self.per_rank]
        idx = self._perm[pos * self.config.batch_size:(pos + 1) * self.config.batch_size]
        flip = torch.rand(len(idx)) < 0.5 if self.config.flip else torch.zeros(len(idx), dtype=torch.bool)
        labels = self.labels[idx.to(self.labels.device)]
        if isinstance(self.data, EmbeddingSet):
            x = self.emb[idx.to(self.emb.device)]
            if self.flipped is not None:
                x = torch.where(flip[:, None].to(x.device), self.flipped[idx.to(x.device)], x)
            return x, labels
        crops = np.stack([self.data.load(int(i)) for i in idx])
        x = images_to_tensor(crops, self.ctx.device)
        return torch.where(flip[:, None, None, None].to(x.device), x.flip(3), x), labels


def _class_means(data, backbone: FaceBackbone | None, ctx: DistContext, progress: bool) -> torch.Tensor:
    """Sum of unit embeddings per identity (a pretrained backbone embeds its share of the images on each rank)."""
    labels = torch.from_numpy(np.asarray(data.labels, np.int64))
    if backbone is None:
        emb, rows = torch.from_numpy(data.embeddings), labels
    else:
        idx = np.arange(ctx.rank, len(data), ctx.world_size)
        emb = torch.from_numpy(embed_dataset(backbone.to(ctx.device), data, idx, device=ctx.device,
                                             progress=progress and ctx.is_main))
        rows = labels[idx]
    sums = torch.zeros(len(data.identities), emb.shape[1]).index_add_(0, rows, F.normalize(emb.float(), dim=1))
    if ctx.distributed:
        sums = sums.to(ctx.device)
        dist.all_reduce(sums)
    return sums.cpu()


def _average_buffers(model: nn.Module, ctx: DistContext) -> None:
    if not ctx.distributed:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(ctx.world_size)


def _identities_sha(identities: list[str]) -> str:
    return hashlib.sha256(json.dumps(list(identities)).encode()).hexdigest()[:16]


def train_space(
    data: IdentityFolderDataset | EmbeddingSet,
    config: SpaceTrainConfig,
    backbone: FaceBackbone | None = None,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    until_step: int | None = None,
    init: PrototypeStore | None = None,
    progress: bool = True,
) -> TrainedSpace:
    """Train the prototype head (and a trainable backbone) on ``data``.

    Images need a ``backbone``; precomputed embeddings take none, or the frozen backbone that made
    them (saved with the space). With ``checkpoint_dir`` the run checkpoints every
    ``config.checkpoint_every`` steps and resumes from there; ``until_step`` stops early (the
    learning-rate schedule still follows the full run), e.g. to continue in a later job.
    The prototypes (and σ) start from ``init`` when given, e.g. a head-only space of the same
    start backbone before fine-tuning it; else the real ones start at the class means of the
    embeddings or of a pretrained backbone (``config.init_real_from_means``), else at random.
    """
    ctx = ctx or DistContext()
    from_images = isinstance(data, IdentityFolderDataset)
    if from_images and backbone is None:
        raise InvalidInputError("training from images needs a backbone (iresnet_backbone, recognizer_backbone, arcface_backbone)")
    if not from_images:
        if backbone is not None and (backbone.trainable or backbone.fingerprint != data.fingerprint):
            raise IncompatibleError("precomputed embeddings go with the frozen backbone that produced them "
                                    f"(fingerprint {data.fingerprint}), got {getattr(backbone, 'fingerprint', None)}")
        dim = data.embeddings.shape[1]
    else:
        _check_labels(data.labels, len(data.identities))
        dim = backbone.dim
    identities = list(data.identities)
    torch.manual_seed(config.seed)
    head = VirtualMarginHead(dim, len(identities), config.num_virtual, config.margin_type, config.margin, config.scale,
                             config.sigma_momentum)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    resume = bool(ckpt and (ckpt / "state.json").is_file())
    if init is not None and not resume:
        if init.identities != identities:
            raise IncompatibleError("the initial prototype store was trained on other identities")
        head.init_real(torch.from_numpy(init.real))
        sigma = init.metadata.get("sigma")
        head.init_virtual(torch.from_numpy(init.virtual), None if sigma is None else torch.tensor(sigma))
    elif config.init_real_from_means and not resume and (not from_images or backbone.spec.get("pretrained")):
        head.init_real(_class_means(data, backbone if from_images else None, ctx, progress))
    model = SpaceModel(head, backbone if from_images else None).to(ctx.device)
    groups = [{"params": list(head.parameters()), "lr": config.lr, "weight_decay": 0.0, "base_lr": config.lr}]
    if from_images and backbone.trainable:
        groups.append({"params": [p for p in backbone.parameters() if p.requires_grad], "lr": config.backbone_lr,
                       "weight_decay": config.weight_decay, "base_lr": config.backbone_lr})
    opt = torch.optim.SGD(groups, momentum=config.momentum)

    fingerprint_run = {"identities": _identities_sha(identities), "num_virtual": config.num_virtual, "dim": dim,
                       "backbone": backbone.spec if from_images else data.fingerprint}
    state = {"step": 0, "history": [], "run": fingerprint_run, "config": asdict(config)}
    if resume:
        if read_json(ckpt, "state.json").get("run") != fingerprint_run:
            raise IncompatibleError(f"checkpoint {ckpt} belongs to another run (other identities, virtual count or backbone); "
                                    "use a fresh checkpoint folder")
        state = {**load_checkpoint(ckpt, model, opt), "config": asdict(config)}
    net = wrap_ddp(model, ctx)
    batches = _Batches(data, config, ctx)
    total = config.max_steps or config.epochs * batches.steps_per_epoch
    stop = min(total, until_step) if until_step else total
    step = int(state["step"])
    totals: dict[str, float] = {}
    count = 0
    model.train()
    bar = tqdm(total=stop, initial=min(step, stop), desc="train-space", unit="step", disable=not (progress and ctx.is_main))
    while step < stop:
        torch.manual_seed(config.seed * 1_000_003 + step * 1_009 + ctx.rank)
        x, y = batches(step)
        factor = (1.0 - step / total) ** 2
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
        out = net(x, y)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        step, count = step + 1, count + 1
        for key, value in out.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
        save = step == stop or bool(ckpt and step % config.checkpoint_every == 0)
        if step % config.log_every == 0 or save:
            check_finite(totals, step, ctx, f"lower lr (now {config.lr:g}) or backbone_lr (now {config.backbone_lr:g}) "
                         "or check the data", model if save else None)
        if step % config.log_every == 0 or step == stop:
            state["history"].append({"step": step, **{k: v / count for k, v in totals.items()}})
            bar.set_postfix({k: f"{v / count:.3f}" for k, v in totals.items()})
            totals, count = {}, 0
        bar.update(1)
        if save:
            _average_buffers(model, ctx)  # BatchNorm statistics differ across ranks; saved weights must not
            state["step"] = step
            if ckpt and ctx.is_main:
                save_checkpoint(ckpt, model, opt, state)
            barrier(ctx)
    bar.close()
    state["step"] = step
    model.eval()
    fingerprint = backbone.fingerprint if backbone is not None else data.fingerprint
    return TrainedSpace(head, identities, fingerprint, config, state, backbone)
