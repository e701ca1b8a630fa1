"""``VIGFacePipeline``: identity prototypes in, face images out, in the shape of a diffusers pipeline.

Components, each swappable and saved in its own sub-folder of the pipeline folder (with
``model_index.json`` naming them): ``autoencoder/`` (:class:`FaceAutoencoder`: renders a face from a
latent and the prototype), ``denoiser/`` (:class:`PrototypeDenoiser` over the latent), ``scheduler/``
(any diffusers scheduler: ``pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)``)
and ``virtual_sampler/`` (virtual identity prototypes, kept away from real people).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import numbers
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from facecore.artifacts import member
from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError
from facecore.pretrained import Contents, read_index, read_pretrained, save_components, write_pretrained
from facecore.registry import Registry

from ..models.autoencoder import FaceAutoencoder
from ..models.denoiser import PrototypeDenoiser
from ..models.virtual import VirtualPrototypeSampler

INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"
#: schedulers beyond diffusers' own, registered under their class name (the name a saved config holds)
SCHEDULERS: Registry[SchedulerMixin] = Registry("scheduler", "facepriv.schedulers", error=ArtifactError, base=SchedulerMixin)
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 1.0  # identity is rendered by the decoder; guidance 2 looked the same at twice the cost


def sample_seed(seed: int, identity: int, sample: int) -> int:
    """The noise seed of image ``sample`` of identity ``identity``: any image can be regenerated alone."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    state = np.random.SeedSequence([int(seed), int(identity), int(sample)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def save_scheduler(scheduler: SchedulerMixin, directory: str | Path) -> Path:
    """A scheduler's config as a checksummed artifact folder (diffusers writes it without a checksum)."""
    return write_pretrained(directory, Contents(json.loads(scheduler.to_json_string())), SCHEDULER_CONFIG)


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """The scheduler class saved under ``name``: one registered in :data:`SCHEDULERS` (by class name, or through the
    ``facepriv.schedulers`` entry-point group), else diffusers' own."""
    if name in SCHEDULERS:
        return SCHEDULERS.get(name)
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ArtifactError(f"{name!r} is neither a diffusers scheduler nor one registered in {SCHEDULERS.group} "
                            f"({', '.join(SCHEDULERS.names()) or 'none'})")
    return cls


def load_scheduler(directory: str | Path) -> SchedulerMixin:
    """The scheduler named by a verified ``scheduler_config.json`` (see :func:`scheduler_class`)."""
    config = read_pretrained(directory, SCHEDULER_CONFIG).config
    name = config.get("_class_name")
    try:
        cls = scheduler_class(str(name))
    except ArtifactError as exc:
        raise ArtifactError(f"{directory}: {exc}") from None
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{directory}: invalid {name} config: {exc}") from exc


class VIGFacePipeline:
    """``pipe(prototypes, num_images_per_prototype=, guidance_scale=, num_inference_steps=, generator=)``
    → uint8 RGB images ``(K * M, S, S, 3)``, prototype-major (image ``k * M + m`` shows prototype ``k``)."""

    def __init__(self, autoencoder: FaceAutoencoder, denoiser: PrototypeDenoiser, scheduler: SchedulerMixin,
                 virtual_sampler: VirtualPrototypeSampler | None = None, metadata: dict | None = None):
        if denoiser.cond_dim != autoencoder.cond_dim or denoiser.latent_shape != autoencoder.latent_shape:
            raise IncompatibleError(f"denoiser ({denoiser.cond_dim}-d prototypes, latent {denoiser.latent_shape}) does not fit "
                                    f"the autoencoder ({autoencoder.cond_dim}-d, latent {autoencoder.latent_shape})")
        if virtual_sampler is not None and virtual_sampler.dim != denoiser.cond_dim:
            raise IncompatibleError(f"virtual sampler makes {virtual_sampler.dim}-d prototypes, the model takes {denoiser.cond_dim}-d")
        if not isinstance(scheduler, SchedulerMixin):
            raise InvalidInputError(f"scheduler must be a diffusers scheduler, got {type(scheduler).__name__}")
        self.autoencoder = autoencoder.eval()
        self.denoiser = denoiser.eval()
        self.scheduler = scheduler
        self.virtual_sampler = virtual_sampler
        self.metadata = dict(metadata or {})

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def image_size(self) -> int:
        return self.autoencoder.image_size

    @property
    def cond_dim(self) -> int:
        return self.denoiser.cond_dim

    def to(self, device: str | torch.device) -> "VIGFacePipeline":
        self.autoencoder.to(device)
        self.denoiser.to(device)
        return self

    def check_prototypes(self, prototypes, fingerprint: str | None = None) -> np.ndarray:
        """Validate ``(K, D)`` prototypes (and the recognizer space they come from, when given)."""
        if isinstance(prototypes, torch.Tensor):
            prototypes = prototypes.detach().cpu().numpy()
        try:
            p = np.asarray(prototypes, np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"prototypes must be a numeric (K, D) array: {exc}") from exc
        p = p[None] if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[1] != self.cond_dim:
            raise IncompatibleError(f"this pipeline takes {self.cond_dim}-d prototypes, got shape {np.shape(prototypes)}")
        if len(p) == 0 or not np.isfinite(p).all() or (np.linalg.norm(p, axis=1) == 0).any():
            raise InvalidInputError("prototypes must be a non-empty finite array of non-zero vectors")
        expected = self.autoencoder.config["condition"].get("fingerprint")
        if fingerprint and expected and fingerprint != expected:
            raise IncompatibleError(f"prototypes come from recognizer {fingerprint}, this pipeline was trained on "
                                    f"prototypes of {expected}")
        return p

    def _step_kwargs(self, generators) -> dict:
        return {"generator": generators} if "generator" in inspect.signature(self.scheduler.step).parameters else {}

    @torch.no_grad()
    def __call__(self, prototypes, num_images_per_prototype: int = 1, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_inference_steps: int = DEFAULT_STEPS, generator: torch.Generator | list[torch.Generator] | None = None,
                 seed: int | None = None, identity_variation: float | None = None, batch_size: int = 128,
                 progress: bool = False) -> np.ndarray:
        """Sample faces. ``generator``: one for the whole call or one per output image (diffusers style);
        ``seed``: per-image generators seeded with :func:`sample_seed` ``(seed, k, m)``, so image ``(k, m)``
        is the same whatever else is generated with it. ``guidance_scale`` 1 is the conditional model alone.
        ``identity_variation``: how far each image's identity strays from its prototype, in units of real
        photos' spread around their person (default: 1 when the virtual sampler knows that spread, else 0)."""
        p = self.check_prototypes(prototypes)
        m = int(num_images_per_prototype)
        if m < 1 or int(batch_size) < 1 or int(num_inference_steps) < 1:
            raise InvalidInputError("num_images_per_prototype, batch_size and num_inference_steps must be at least 1")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise InvalidInputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        if seed is not None and generator is not None:
            raise InvalidInputError("pass either seed or generator, not both")
        n, size, dev = len(p) * m, self.image_size, self.device
        if seed is not None:
            generator = [torch.Generator().manual_seed(sample_seed(seed, k, j)) for k in range(len(p)) for j in range(m)]
        per_image = isinstance(generator, (list, tuple))
        if per_image and len(generator) != n:
            raise InvalidInputError(f"{len(generator)} generators for {n} images")
        spread = self.virtual_sampler.intra_tril is not None if self.virtual_sampler is not None else False
        if identity_variation is None:
            identity_variation = 1.0 if spread else 0.0
        if not np.isfinite(identity_variation) or identity_variation < 0:
            raise InvalidInputError(f"identity_variation must be a finite number >= 0, got {identity_variation}")
        if identity_variation > 0 and not spread:
            raise InvalidInputError("identity_variation needs a virtual sampler fitted with the real intra-identity spread")
        protos = torch.from_numpy(p).repeat_interleave(m, 0).to(dev)
        shape, scale, use_cfg = self.autoencoder.latent_shape, self.autoencoder.scaling_factor, guidance_scale != 1.0
        out = np.empty((n, size, size, 3), np.uint8)
        for lo in tqdm(range(0, n, batch_size), desc="sample", unit="batch", disable=not progress, leave=False):
            hi = min(n, lo + batch_size)
            gens = list(generator[lo:hi]) if per_image else generator
            if per_image:
                z = torch.stack([torch.randn(shape, generator=g) for g in gens])
            else:
                z = torch.randn((hi - lo, *shape), generator=generator)
            self.scheduler.set_timesteps(int(num_inference_steps))
            z = (z * self.scheduler.init_noise_sigma).to(dev)
            cond = protos[lo:hi]
            if use_cfg:
                cond = torch.cat([cond, cond])
                drop = torch.arange(2 * (hi - lo), device=dev) < hi - lo
            for t in self.scheduler.timesteps:
                inp = self.scheduler.scale_model_input(torch.cat([z, z]) if use_cfg else z, t)
                if use_cfg:
                    uncond, condout = self.denoiser(inp, t.to(dev), cond, drop).chunk(2)
                    pred = uncond + guidance_scale * (condout - uncond)
                else:
                    pred = self.denoiser(inp, t.to(dev), cond)
                z = self.scheduler.step(pred, t, z, **self._step_kwargs(gens)).prev_sample
            render = protos[lo:hi]
            if identity_variation > 0:  # drawn after the latent's noise, from the same per-image generators
                gens_v = gens if per_image else [generator or torch.default_generator] * (hi - lo)
                render = torch.from_numpy(self.virtual_sampler.vary(render.cpu().numpy(), gens_v, identity_variation)).to(dev)
            img = self.autoencoder.decode(z / scale, render)
            out[lo:hi] = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
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
        index = {"_class_name": type(self).__name__, "autoencoder": type(self.autoencoder).__name__,
                 "denoiser": type(self.denoiser).__name__, "scheduler": type(self.scheduler).__name__, **self.metadata}
        components = {"autoencoder": lambda path: self.autoencoder.save_pretrained(path, dtype=dtype),
                      "denoiser": lambda path: self.denoiser.save_pretrained(path, dtype=dtype),
                      "scheduler": lambda path: save_scheduler(self.scheduler, path)}
        if self.virtual_sampler is not None:
            index["virtual_sampler"] = type(self.virtual_sampler).__name__
            components["virtual_sampler"] = self.virtual_sampler.save_pretrained
        return save_components(directory, INDEX, index, components)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        scheduler: SchedulerMixin | None = None) -> "VIGFacePipeline":
        """Load a pipeline folder (every checksum verified); ``scheduler`` replaces the saved one."""
        directory = Path(directory)
        index = read_index(directory, INDEX, cls.__name__, "VIGFace pipeline",
                           "; train one with `vigface-cli train-diffusion` or use the default (no --pipeline)")
        autoencoder = FaceAutoencoder.from_pretrained(member(directory, "autoencoder"), map_location=device)
        denoiser = PrototypeDenoiser.from_pretrained(member(directory, "denoiser"), map_location=device)
        scheduler = scheduler or load_scheduler(member(directory, "scheduler"))
        sampler = (VirtualPrototypeSampler.from_pretrained(member(directory, "virtual_sampler"))
                   if "virtual_sampler" in index else None)
        meta = {k: v for k, v in index.items() if k not in ("_class_name", "autoencoder", "denoiser", "scheduler", "virtual_sampler")}
        return cls(autoencoder, denoiser, scheduler, sampler, meta)

    def fingerprint(self) -> str:
        """Hash of the weights and the scheduler config: two pipelines sample alike iff they agree."""
        sched = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}
        digest = hashlib.sha256(json.dumps([type(self.scheduler).__name__, sched], sort_keys=True, default=str).encode())
        for prefix, module in (("autoencoder", self.autoencoder), ("denoiser", self.denoiser)):
            for key, value in sorted(module.state_dict().items()):
                digest.update(f"{prefix}.{key}".encode())
                digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def default_scheduler(train_config: dict) -> DPMSolverMultistepScheduler:
    """The shipped sampler: DPM-Solver++ (2nd order) on the training noise schedule, with ``leading`` timestep
    spacing. The cosine schedule's last step has alpha_bar 2e-9, where an epsilon-predicting model's x0 estimate
    explodes: measured here, every solver that starts at t=999 (``linspace``/``trailing``) returned noise, while
    ``leading`` (first step t=931 for 15 steps) gives faces with DPM-Solver++, UniPC and DDIM alike. A scheduler
    made with ``from_config(pipe.scheduler.config)`` inherits the spacing."""
    return DPMSolverMultistepScheduler.from_config(train_config, algorithm_type="dpmsolver++", solver_order=2,
                                                   timestep_spacing="leading", steps_offset=1)


DEFAULT_PIPELINE = Path(__file__).resolve().parents[1] / "defaults" / "vigface64"


def load_pipeline(path: str | Path | None = None, device: str | torch.device = "cpu") -> VIGFacePipeline:
    """A pipeline folder, or the shipped CPU-trained default (``vigface64``) when ``path`` is None."""
    return VIGFacePipeline.from_pretrained(DEFAULT_PIPELINE if path is None else path, device=device)
