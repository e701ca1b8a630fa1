"""Resumable training checkpoints: safetensors weights, optimizer state (weights-only load), JSON progress."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facecore.artifacts import read_json, verify_artifact, write_artifact
from facecore.errors import ArtifactError, IncompatibleError


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    weights = st_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    write_artifact(directory, {"model.safetensors": weights, "optimizer.pt": buf.getvalue(), "state.json": state})


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    expect: dict | None = None) -> dict:
    """Restore model (and optimizer) in place; returns the saved progress dict.

    ``expect`` lists config values the checkpoint must have been made with (checked before loading).
    """
    verify_artifact(directory, ("model.safetensors", "optimizer.pt", "state.json"))
    directory = Path(directory)
    state = read_json(directory, "state.json")
    saved = state.get("config", {})
    differ = sorted(k for k, v in (expect or {}).items() if saved.get(k) != v)
    if differ:
        raise IncompatibleError(f"checkpoint {directory} belongs to another run ({', '.join(differ)} differ); "
                                "use another checkpoint folder")
    try:
        model.load_state_dict(st_load((directory / "model.safetensors").read_bytes()))
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True, map_location="cpu"))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"checkpoint {directory} does not fit this model: {exc}") from exc
    return state
