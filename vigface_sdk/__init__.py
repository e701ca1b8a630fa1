"""VIGFace: virtual-identity face space and prototype-conditioned dataset synthesis."""

import importlib

# stage 2 (diffusion synthesis): ``from vigface_sdk import VIGFacePipeline`` etc., imported on first use;
# the functions live in their modules (``vigface_sdk.synthesize.synthesize``, ``vigface_sdk.train_diffusion.train_diffusion``)
_LAZY = {"VIGFacePipeline": "pipeline", "PrototypeUNet": "unet", "UNetConfig": "unet", "DDPMScheduler": "schedulers",
         "DDIMScheduler": "schedulers", "VirtualPrototypeSampler": "virtual", "LandmarkBank": "landmarks",
         "DiffusionData": "train_diffusion", "DiffusionTrainConfig": "train_diffusion"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
