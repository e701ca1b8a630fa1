"""Noise schedulers, separate from the model as in diffusers: DDPM for training and ancestral sampling,
DDIM for fast deterministic sampling. Both read and write the same JSON config, so one can replace
the other in a pipeline (``DDIMScheduler.from_config(ddpm.config)``).

Images live in ``[-1, 1]``; ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with ``a_t`` the cumulative
product of ``1 - beta``. With ``prediction_type="v_prediction"`` the model predicts
``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from facecore.errors import ArtifactError, InvalidInputError

CONFIG_NAME = "scheduler_config.json"
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _betas(schedule: str, steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    # cosine schedule of Nichol & Dhariwal (2021), betas capped at 0.999
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)], dtype=torch.float64)


def _gather(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[timesteps]`` shaped to broadcast over ``like`` (N, ...)."""
    t = torch.as_tensor(timesteps, device=values.device).long().reshape(-1)
    out = values[t].to(device=like.device, dtype=like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


class _NoiseScheduler:
    """Shared schedule, conversions between predictions and the JSON config round trip."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                 beta_start: float = 1e-4, beta_end: float = 0.02, prediction_type: str = "v_prediction",
                 clip_sample: bool = True, timestep_spacing: str = "trailing", **extra):
        if num_train_timesteps < 2:
            raise InvalidInputError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
        if beta_schedule not in BETA_SCHEDULES:
            raise InvalidInputError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise InvalidInputError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if timestep_spacing not in ("trailing", "leading"):
            raise InvalidInputError(f"timestep_spacing must be 'trailing' or 'leading', got {timestep_spacing!r}")
        self.config = {"num_train_timesteps": int(num_train_timesteps), "beta_schedule": beta_schedule,
                       "beta_start": float(beta_start), "beta_end": float(beta_end),
                       "prediction_type": prediction_type, "clip_sample": bool(clip_sample),
                       "timestep_spacing": timestep_spacing, **extra}
        self.num_train_timesteps = int(num_train_timesteps)
        self.prediction_type = prediction_type
        self.clip_sample = bool(clip_sample)
        self.betas = _betas(beta_schedule, self.num_train_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # float64, on CPU
        self.set_timesteps(self.num_train_timesteps)

    # --- training side -------------------------------------------------------------------------
    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process ``q(x_t | x_0)``."""
        a = _gather(self.alphas_cumprod, timesteps, original)
        return a.sqrt() * original + (1 - a).sqrt() * noise

    def get_velocity(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target ``sqrt(a_t) eps - sqrt(1 - a_t) x_0``."""
        a = _gather(self.alphas_cumprod, timesteps, original)
        return a.sqrt() * noise - (1 - a).sqrt() * original

    def training_target(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model is trained to output under this scheduler's ``prediction_type``."""
        if self.prediction_type == "v_prediction":
            return self.get_velocity(original, noise, timesteps)
        return noise if self.prediction_type == "epsilon" else original

    def predict_original(self, model_output: torch.Tensor, timesteps, sample: torch.Tensor) -> torch.Tensor:
        """``x_0`` implied by the model output at ``x_t`` (differentiable)."""
        a = _gather(self.alphas_cumprod, torch.as_tensor(timesteps).expand(len(sample)), sample)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * sample - (1 - a).sqrt() * model_output
        if self.prediction_type == "epsilon":
            return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
        return model_output

    # --- sampling side -------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:
        """``num_inference_steps`` evenly spaced descending timesteps, as diffusers' ``timestep_spacing``:
        "trailing" starts at the last training step (pure noise), "leading" ends at 0."""
        n, total = int(num_inference_steps), self.num_train_timesteps
        if not 1 <= n <= total:
            raise InvalidInputError(f"num_inference_steps must lie in 1..{total}, got {num_inference_steps}")
        if self.config["timestep_spacing"] == "trailing":
            steps = torch.round(torch.arange(total, 0, -total / n, dtype=torch.float64)).long() - 1
        else:
            steps = (torch.arange(n) * (total // n)).flip(0)
        self.timesteps = steps[:n].long()
        self._prev = dict(zip(self.timesteps.tolist(), self.timesteps[1:].tolist() + [-1]))
        self.num_inference_steps = n

    def _prev_timestep(self, timestep: int) -> int:
        try:
            return self._prev[int(timestep)]
        except KeyError:
            raise InvalidInputError(f"timestep {int(timestep)} is not one of the {self.num_inference_steps} set by set_timesteps") from None

    def _x0_eps(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor):
        a = self.alphas_cumprod[int(timestep)].item()
        x0 = self.predict_original(model_output, timestep, sample)
        if self.clip_sample:
            x0 = x0.clamp(-1, 1)
        eps = (sample - math.sqrt(a) * x0) / math.sqrt(1 - a)
        return x0, eps

    def _alpha_prev(self, timestep: int) -> float:
        prev = self._prev_timestep(timestep)
        return self.alphas_cumprod[prev].item() if prev >= 0 else 1.0

    # --- persistence ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict):
        return cls(**{k: v for k, v in config.items() if k != "_class_name"})

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{CONFIG_NAME}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"_class_name": type(self).__name__, **self.config}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ArtifactError(f"no {CONFIG_NAME} in {directory}: not a saved scheduler")
        try:
            config = json.loads(path.read_text())
            return cls.from_config(config)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ArtifactError(f"{path} is not a valid scheduler config: {exc}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class DDPMScheduler(_NoiseScheduler):
    """Denoising diffusion (Ho et al. 2020): the training schedule and ancestral sampling."""

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None) -> SchedulerOutput:
        """One ancestral step ``x_t -> x_{t_prev}`` with the posterior variance."""
        a_t, a_prev = self.alphas_cumprod[int(timestep)].item(), self._alpha_prev(timestep)
        x0, _ = self._x0_eps(model_output, timestep, sample)
        beta = 1 - a_t / a_prev
        mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * sample
        if self._prev_timestep(timestep) < 0:
            return SchedulerOutput(mean, x0)
        var = beta * (1 - a_prev) / (1 - a_t)
        return SchedulerOutput(mean + math.sqrt(var) * randn_like(sample, generator), x0)


class DDIMScheduler(_NoiseScheduler):
    """Denoising diffusion implicit models (Song et al. 2021); ``eta=0`` makes sampling deterministic."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                 beta_start: float = 1e-4, beta_end: float = 0.02, prediction_type: str = "v_prediction",
                 clip_sample: bool = True, eta: float = 0.0, **extra):
        if not 0.0 <= eta <= 1.0:
            raise InvalidInputError(f"eta must lie in [0, 1], got {eta}")
        super().__init__(num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type, clip_sample,
                         eta=float(eta), **extra)
        self.eta = float(eta)

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None) -> SchedulerOutput:
        """One DDIM step (eq. 12 of the paper) to the previous inference timestep."""
        a_t, a_prev = self.alphas_cumprod[int(timestep)].item(), self._alpha_prev(timestep)
        x0, eps = self._x0_eps(model_output, timestep, sample)
        sigma = self.eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            prev = prev + sigma * randn_like(sample, generator)
        return SchedulerOutput(prev, x0)


SCHEDULERS = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}


def randn_like(sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Gaussian noise shaped like ``sample``; a list of generators draws each row from its own one,
    so a sample's noise does not depend on which batch it is in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != len(sample):
            raise InvalidInputError(f"{len(generator)} generators for a batch of {len(sample)}")
        rows = [torch.randn(sample.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generator]
        return torch.stack(rows).to(sample.device, sample.dtype)
    device = generator.device if generator is not None else sample.device
    return torch.randn(sample.shape, generator=generator, device=device, dtype=torch.float32).to(sample.device, sample.dtype)


def load_scheduler(directory: str | Path) -> _NoiseScheduler:
    """Load whichever scheduler class the config names."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ArtifactError(f"no {CONFIG_NAME} in {directory}: not a saved scheduler")
    try:
        name = json.loads(path.read_text()).get("_class_name", "DDIMScheduler")
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if name not in SCHEDULERS:
        raise ArtifactError(f"{path} names unknown scheduler {name!r}; known: {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_pretrained(directory)
