"""``VIGFacePipeline``: prototypes in, face images out, in the style of diffusers' pipelines.

A pipeline folder holds ``model_index.json`` and one sub-folder per component: ``unet/``,
``scheduler/`` (any scheduler class; swap with ``pipeline.scheduler = DDPMScheduler.from_config(...)``),
and optionally ``virtual_sampler/`` (virtual identity prototypes) and ``landmarks/`` (pose bank).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from facecore.artifacts import replace_dir
from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError

from .landmarks import LandmarkBank, landmark_heatmaps
from .schedulers import _NoiseScheduler, load_scheduler
from .unet import PrototypeUNet
from .virtual import VirtualPrototypeSampler

INDEX = "model_index.json"


def sample_seed(seed: int, identity: int, sample: int) -> int:
    """The noise seed of image ``sample`` of identity ``identity``: any image can be regenerated alone."""
    state = np.random.SeedSequence([int(seed), int(identity), int(sample)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class VIGFacePipeline:
    """``pipeline(prototypes, num_images_per_prototype, guidance_scale, num_inference_steps, ...)``
    → uint8 RGB images ``(K * M, S, S, 3)``, prototype-major (image ``k * M + m`` shows prototype ``k``)."""

    def __init__(self, unet: PrototypeUNet, scheduler: _NoiseScheduler, virtual_sampler: VirtualPrototypeSampler | None = None,
                 landmark_bank: LandmarkBank | None = None, metadata: dict | None = None):
        if unet.config.landmark_channels and landmark_bank is None:
            raise InvalidInputError("a UNet that takes landmarks needs a landmark bank to draw poses from")
        if virtual_sampler is not None and virtual_sampler.dim != unet.cond_dim:
            raise IncompatibleError(f"virtual sampler makes {virtual_sampler.dim}-d prototypes, the UNet takes {unet.cond_dim}-d")
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.virtual_sampler = virtual_sampler
        self.landmark_bank = landmark_bank
        self.metadata = dict(metadata or {})

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size

    def to(self, device: str | torch.device) -> "VIGFacePipeline":
        self.unet.to(device)
        return self

    def check_prototypes(self, prototypes, backbone_fingerprint: str | None = None) -> np.ndarray:
        """Validate ``(K, D)`` prototypes (and their space, when given) against the UNet."""
        p = np.asarray(prototypes, np.float32)
        p = p[None] if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[1] != self.unet.cond_dim:
            raise IncompatibleError(f"this pipeline takes {self.unet.cond_dim}-d prototypes, got shape {np.shape(prototypes)}")
        if len(p) == 0 or not np.isfinite(p).all() or (np.linalg.norm(p, axis=1) == 0).any():
            raise InvalidInputError("prototypes must be a non-empty finite array of non-zero vectors")
        expected = self.metadata.get("condition", {}).get("backbone_fingerprint")
        if backbone_fingerprint and expected and backbone_fingerprint != expected:
            raise IncompatibleError(f"prototypes come from backbone {backbone_fingerprint}, this pipeline was trained on "
                                    f"prototypes of {expected}")
        return p

    @torch.no_grad()
    def __call__(self, prototypes, num_images_per_prototype: int = 1, guidance_scale: float = 2.0,
                 num_inference_steps: int = 25, generator: torch.Generator | list[torch.Generator] | None = None,
                 seed: int | None = None, landmarks=None, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Sample faces. ``generator``: one for the whole call or one per output image (diffusers style);
        ``seed``: per-image generators seeded with :func:`sample_seed` ``(seed, k, m)``. ``landmarks``:
        normalised ``(K * M, 5, 2)`` poses for a UNet with landmark input (default: drawn from the bank).
        ``guidance_scale`` 1 is the conditional model alone; larger values push harder toward the identity."""
        p = self.check_prototypes(prototypes)
        m = int(num_images_per_prototype)
        if m < 1 or batch_size < 1:
            raise InvalidInputError("num_images_per_prototype and batch_size must be at least 1")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise InvalidInputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        n, size, dev = len(p) * m, self.image_size, self.device
        if seed is not None and generator is not None:
            raise InvalidInputError("pass either seed or generator, not both")
        if seed is not None:
            generator = [torch.Generator().manual_seed(sample_seed(seed, k, j)) for k in range(len(p)) for j in range(m)]
        per_image = isinstance(generator, (list, tuple))
        if per_image and len(generator) != n:
            raise InvalidInputError(f"{len(generator)} generators for {n} images")
        if landmarks is not None:
            if not self.unet.config.landmark_channels:
                raise InvalidInputError("this pipeline's UNet takes no landmarks")
            landmarks = torch.as_tensor(np.asarray(landmarks, np.float32))
            if landmarks.shape != (n, 5, 2):
                raise InvalidInputError(f"landmarks must be ({n}, 5, 2) normalised coordinates, got {tuple(landmarks.shape)}")
        protos = torch.from_numpy(p).repeat_interleave(m, 0).to(dev)
        self.scheduler.set_timesteps(num_inference_steps)
        use_cfg = guidance_scale != 1.0
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
        out = np.empty((n, size, size, 3), np.uint8)
        for lo in tqdm(range(0, n, batch_size), desc="sample", unit="batch", disable=not progress, leave=False):
            hi = min(n, lo + batch_size)
            gens = generator[lo:hi] if per_image else generator
            if per_image:
                x = torch.stack([torch.randn((3, size, size), generator=g, device=g.device) for g in gens]).to(dev)
            else:
                gdev = generator.device if generator is not None else dev
                x = torch.randn((hi - lo, 3, size, size), generator=generator, device=gdev).to(dev)
            heat = None
            if self.unet.config.landmark_channels:
                lm = landmarks[lo:hi] if landmarks is not None else self.landmark_bank.draw(
                    gens if per_image else [generator or torch.default_generator] * (hi - lo))
                heat = landmark_heatmaps(lm.to(dev), size)
            cond = protos[lo:hi]
            if use_cfg:
                cond = torch.cat([cond, cond])
                drop = torch.cat([torch.ones(hi - lo, dtype=torch.bool), torch.zeros(hi - lo, dtype=torch.bool)]).to(dev)
                heat = torch.cat([heat, heat]) if heat is not None else None
            for t in self.scheduler.timesteps:
                with autocast:
                    if use_cfg:
                        uncond, condout = self.unet(torch.cat([x, x]), t.to(dev), cond, heat, drop).float().chunk(2)
                        pred = uncond + guidance_scale * (condout - uncond)
                    else:
                        pred = self.unet(x, t.to(dev), cond, heat).float()
                x = self.scheduler.step(pred, int(t), x, generator=gens).prev_sample
            img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
            out[lo:hi] = img.cpu().numpy()
        return out

    def virtual_prototypes(self, count: int, seed: int = 0, start: int = 0) -> np.ndarray:
        """Prototypes of virtual identities ``start .. start + count - 1`` from the pipeline's sampler."""
        if self.virtual_sampler is None:
            raise InvalidInputError("this pipeline has no virtual prototype sampler; pass prototypes "
                                    "(e.g. a stage-1 PrototypeStore's .virtual)")
        return self.virtual_sampler.sample(np.arange(start, start + count), seed)

    # --- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write every component into ``directory`` atomically (built aside, then swapped in)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.unet.save_pretrained(tmp / "unet", dtype=dtype)
            self.scheduler.save_pretrained(tmp / "scheduler")
            index = {"_class_name": type(self).__name__, "unet": "PrototypeUNet",
                     "scheduler": type(self.scheduler).__name__, **self.metadata}
            if self.virtual_sampler is not None:
                self.virtual_sampler.save_pretrained(tmp / "virtual_sampler")
                index["virtual_sampler"] = "VirtualPrototypeSampler"
            if self.landmark_bank is not None:
                self.landmark_bank.save_pretrained(tmp / "landmarks")
                index["landmarks"] = "LandmarkBank"
            (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        scheduler: _NoiseScheduler | None = None) -> "VIGFacePipeline":
        """Load a pipeline folder (checksums verified); ``scheduler`` replaces the saved one."""
        directory = Path(directory)
        if not (directory / INDEX).is_file():
            raise ArtifactError(f"{directory} is not a VIGFace pipeline folder (no {INDEX}); train one with "
                                "`vigface-cli train-diffusion`")
        try:
            index = json.loads((directory / INDEX).read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{directory / INDEX} is not valid JSON: {exc}") from exc
        unet = PrototypeUNet.from_pretrained(directory / "unet", map_location=device)
        scheduler = scheduler or load_scheduler(directory / "scheduler")
        sampler = VirtualPrototypeSampler.from_pretrained(directory / "virtual_sampler") if "virtual_sampler" in index else None
        bank = LandmarkBank.from_pretrained(directory / "landmarks") if "landmarks" in index else None
        meta = {k: v for k, v in index.items() if k not in ("_class_name", "unet", "scheduler", "virtual_sampler", "landmarks")}
        return cls(unet, scheduler, sampler, bank, meta)

    def fingerprint(self) -> str:
        """Hash of the UNet weights and the scheduler config: two pipelines sample alike iff they agree."""
        digest = hashlib.sha256(json.dumps(self.scheduler.config, sort_keys=True).encode())
        for key, value in sorted(self.unet.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

