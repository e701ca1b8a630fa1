"""Resumable training checkpoints: safetensors weights, optimizer state (weights-only load), JSON progress."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import ArtifactError, IncompatibleError
from ..pretrained import Contents, read_pretrained, write_pretrained

WEIGHTS, OPTIMIZER, STATE = "model.safetensors", "optimizer.pt", "state.json"


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    write_pretrained(directory, Contents(state, model.state_dict(), {OPTIMIZER: buf.getvalue()}), STATE, WEIGHTS, "torch")


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    expect: dict | None = None) -> dict:
    """Restore model (and optimizer) in place; returns the saved progress dict.

    ``expect`` lists config values the checkpoint must have been made with (checked before loading).
    """
    directory = Path(directory)
    contents = read_pretrained(directory, STATE, WEIGHTS, "torch", (OPTIMIZER,))
    state = contents.config
    saved = state.get("config", {})
    differ = sorted(k for k, v in (expect or {}).items() if saved.get(k) != v)
    if differ:
        raise IncompatibleError(f"checkpoint {directory} belongs to another run ({', '.join(differ)} differ); "
                                "use another checkpoint folder")
    try:
        model.load_state_dict(contents.tensors)
        if optimizer is not None:  # weights_only: torch's restricted unpickler, no code runs
            optimizer.load_state_dict(torch.load(io.BytesIO(contents.files[OPTIMIZER]), weights_only=True, map_location="cpu"))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"checkpoint {directory} does not fit this model: {exc}") from exc
    return state
