"""VIGFace: a face feature space with virtual identities, and a CPU-sized latent diffusion model that
draws faces of those virtual identities into training sets for face recognizers.

Stage 1: :func:`train_space` → :class:`PrototypeStore` (real + virtual prototypes).
Stage 2: :class:`FaceAutoencoder` + :class:`PrototypeDenoiser` + a diffusers scheduler →
:class:`VIGFacePipeline`; :func:`synthesize` writes a dataset; :func:`load_pipeline` opens the shipped one.
Everything is imported on first use.
"""

import importlib

_LAZY = {
    "PrototypeStore": "models.prototypes", "VirtualPrototypeSampler": "models.virtual",
    "FaceAutoencoder": "models.autoencoder", "PrototypeDenoiser": "models.denoiser",
    "SpaceTrainConfig": "training.space", "train_space": "training.space",
    "AutoencoderTrainConfig": "training.autoencoder", "train_autoencoder": "training.autoencoder",
    "DiffusionTrainConfig": "training.diffusion", "train_latent_diffusion": "training.diffusion",
    "build_pipeline": "training.diffusion",
    "VIGFacePipeline": "pipelines.pipeline", "sample_seed": "pipelines.pipeline", "load_pipeline": "pipelines.pipeline",
    "synthesize": "pipelines.synthesize",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
