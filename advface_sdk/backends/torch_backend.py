"""torch backend: the generator as a module on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from facecore.errors import BackendUnavailableError


class TorchBackend:
    name = "torch"

    def __init__(self, artifact, device: str = "cpu", threads: int | None = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("torch backend: CUDA was requested but torch sees no GPU here")
        self.device = torch.device(device)
        self.model = artifact.build_generator().to(self.device)
        if threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def run_torch(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device, torch.float32))

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_torch(torch.from_numpy(x)).cpu().numpy()
