"""AdvFace training settings and divergence: nonsense hyper-parameters are refused when a config is made, a diverging
run stops with NonFiniteError before it saves anything, and advface-cli reports either as one ``error:`` line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from advface_sdk.cli import main as cli
from advface_sdk.models.decoders import FaceDecoder
from advface_sdk.training.generator import GeneratorTrainConfig, train_generator
from advface_sdk.training.reconstruction import (ConvergenceConfig, DecoderTrainConfig, train_decoder,
                                                 train_decoder_converged)
from facecore.errors import InvalidInputError, NonFiniteError
from facecore.training.face_pack import FaceTrainingSet

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")

BAD_VALUES = {
    GeneratorTrainConfig: dict(lr=[NAN, 0.0, -1e-3, INF], budget=[0.0, 2.0, NAN], epochs=[0, 2.5], batch_size=[0],
                               hidden=[0], id_weight=[-1.0], pixel_weight=[NAN], utility_weight=[-4.0],
                               genuine_weight=[INF], genuine_margin=[-0.1], margin_weight=[-1.0], margin=[NAN],
                               distortion_weight=[-1.0], prior_id_weight=[NAN], prior_pixel_weight=[-1.0], seed=[-1],
                               max_minutes=[NAN, -1.0, 0.0]),
    DecoderTrainConfig: dict(lr=[NAN, 0.0, -2e-3, INF], epochs=[0, -1], batch_size=[0, 1], pixel_weight=[-1.0],
                             id_weight=[NAN], id_start_epoch=[-1], width=[0], seed=[-1], max_minutes=[INF, 0.0]),
    ConvergenceConfig: dict(max_epochs=[0], patience=[0], warmup_epochs=[-1, 30], val_fraction=[0.0, 1.0, NAN],
                            min_delta=[-0.1, 1.0], max_minutes=[NAN, -1.0]),
}


@pytest.mark.parametrize("cls, field, value", [(cls, field, value) for cls, fields in BAD_VALUES.items()
                                               for field, values in fields.items() for value in values],
                         ids=lambda v: v.__name__ if isinstance(v, type) else repr(v))
def test_configs_refuse_nonsense_values_naming_the_field(cls: type, field: str, value: object) -> None:
    """Each bad value is refused when the config is made, and the message names the field."""
    with pytest.raises(InvalidInputError, match=rf"\b{re.escape(f'{field}={value!r}')} \(must be"):
        cls(**{field: value})


def test_configs_accept_defaults_edge_values_and_the_shipped_training_settings() -> None:
    """Zero loss weights, batch_size 1 for the (norm-free) generator, tiny time budgets and the configs recorded in
    the shipped artifacts are all valid."""
    GeneratorTrainConfig(pixel_weight=0.0, utility_weight=0, genuine_margin=0.0, batch_size=1, max_minutes=None)
    DecoderTrainConfig(id_weight=0.0, batch_size=2, max_minutes=1e-9)
    ConvergenceConfig(max_epochs=1, warmup_epochs=0, min_delta=0.0)
    shipped = {"fr128": GeneratorTrainConfig, "fr512": GeneratorTrainConfig, "shadows/fr128": DecoderTrainConfig}
    for name, cls in shipped.items():
        cls(**json.loads((REPO / "advface_sdk" / "defaults" / name / "config.json").read_text())["training"]["config"])


def _faces(n: int = 16, dim: int = 16, ids: int = 4, fingerprint: str = "synthetic") -> FaceTrainingSet:
    """``n`` random 64 px faces of ``ids`` identities with random ``dim``-d embeddings."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % ids
    return FaceTrainingSet(rng.integers(0, 256, (n, 64, 64, 3), np.uint8), rng.standard_normal((n, dim)).astype(np.float32),
                           labels, [f"id{i}" for i in range(ids)], [f"id{lab}/{i}.jpg" for i, lab in enumerate(labels)],
                           fingerprint)


def _checkpoint_epoch(ckpt: Path) -> int:
    """The epoch of the checkpoint in ``ckpt``, after asserting that all its weights are finite."""
    assert all(bool(torch.isfinite(t).all()) for t in load_file(ckpt / "model.safetensors").values())
    return json.loads((ckpt / "state.json").read_text())["epoch"]


@pytest.mark.parametrize("stage", ["generator", "decoder"])
def test_diverging_run_raises_and_keeps_the_last_good_checkpoint(stage: str, tmp_path: Path) -> None:
    """lr 1e30, one step per epoch: epoch 1 (losses of the initial weights) is saved, epoch 2's NaN losses stop the run
    with NonFiniteError; no model is returned and the epoch-1 checkpoint stays as it was."""
    data = _faces()
    with pytest.raises(NonFiniteError, match=r"diverged.*non-finite by step 2 .*lower lr \(now 1e\+30\)"):
        if stage == "generator":
            train_generator(data, FaceDecoder(16, 64, width=4), None,
                            GeneratorTrainConfig(hidden=8, epochs=3, batch_size=16, lr=1e30), checkpoint_dir=tmp_path,
                            progress=False)
        else:
            train_decoder(data, None, DecoderTrainConfig(epochs=3, batch_size=16, lr=1e30, width=4),
                          checkpoint_dir=tmp_path, progress=False)
    assert _checkpoint_epoch(tmp_path) == 1


def test_diverging_converged_attacker_raises_instead_of_returning_a_model() -> None:
    """Early stopping must not hand back the weights of a diverged run (a NaN validation loss would become its best)."""
    with pytest.raises(NonFiniteError, match=r"diverged.*val_loss.*non-finite"):
        train_decoder_converged(_faces(), None, DecoderTrainConfig(batch_size=16, lr=1e30, width=4),
                                ConvergenceConfig(max_epochs=3, val_fraction=0.25), progress=False)


def _stderr_lines(result) -> list[str]:
    """The stderr lines (progress-bar redraws split apart) of a CLI run that failed with exit status 2 and ended with
    one ``error:`` line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [part for part in re.split(r"[\r\n]", result.stderr) if part.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.output
    return lines


def test_cli_train_shadow_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    """``train-shadow --lr nan --epochs 0``: exit 2, one ``error:`` line naming both, before the pack is read (it does
    not even exist here), no output or checkpoint folder."""
    out = tmp_path / "shadow"
    [line] = _stderr_lines(CliRunner().invoke(cli, ["train-shadow", str(tmp_path / "pack.npz"), "-o", str(out),
                                                    "--id-weight", "0", "--lr", "nan", "--epochs", "0",
                                                    "--device", "cpu"]))
    assert line.startswith("error: invalid DecoderTrainConfig:") and "lr=nan" in line and "epochs=0" in line
    assert not any(tmp_path.iterdir())


def test_cli_train_shadow_that_diverges_writes_no_decoder(tmp_path: Path) -> None:
    """``train-shadow --lr 1e30``: NonFiniteError as one ``error:`` line; only the epoch-1 checkpoint is on disk."""
    _faces().save(tmp_path / "pack.npz")
    out = tmp_path / "shadow"
    line = _stderr_lines(CliRunner().invoke(cli, ["train-shadow", str(tmp_path / "pack.npz"), "-o", str(out),
                                                  "--id-weight", "0", "--lr", "1e30", "--epochs", "3",
                                                  "--batch-size", "16", "--width", "4", "--device", "cpu"]))[-1]
    assert line.startswith("error: training diverged:"), line
    assert not out.exists() and _checkpoint_epoch(tmp_path / "shadow.ckpt") == 1


def test_cli_train_generator_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    """``train-generator --lr nan --budget 3``: exit 2, one ``error:`` line naming both, before the pack (missing here)
    and the shadow are read."""
    out = tmp_path / "protector"
    [line] = _stderr_lines(CliRunner().invoke(cli, ["train-generator", str(tmp_path / "pack.npz"), "-r", "fr128",
                                                    "--shadow", str(tmp_path / "no_shadow"), "-o", str(out),
                                                    "--lr", "nan", "--budget", "3", "--device", "cpu"]))
    assert line.startswith("error: invalid GeneratorTrainConfig:") and "lr=nan" in line and "budget=3.0" in line
    assert not any(tmp_path.iterdir())


def test_decoder_training_leaves_out_a_last_batch_of_one_row() -> None:
    """17 faces at batch size 16 leave one row over: batch norm cannot train on it, so that batch is skipped (it
    crashed with 'Expected more than 1 value per channel'); fewer than 2 faces is a typed error."""
    model, _ = train_decoder(_faces(n=17), None, DecoderTrainConfig(epochs=1, batch_size=16, lr=1e-3, width=4),
                               progress=False)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with pytest.raises(InvalidInputError, match="at least 2"):
        train_decoder(_faces(n=1, ids=1), None, DecoderTrainConfig(epochs=1, batch_size=16, width=4), progress=False)


@pytest.mark.parametrize("stage", ["generator", "decoder"])
def test_max_minutes_stops_inside_an_epoch(stage: str, tmp_path: Path) -> None:
    """``--max-minutes`` was checked only at the end of an epoch, and a CPU epoch of the defender pack is 4-11 min:
    ``train_protector.sh`` with a 4-minute shadow budget trained for 11. Now a run out of time stops after the step
    in progress, says how far it got, and writes no checkpoint of the unfinished epoch."""
    data = _faces(n=64)
    if stage == "generator":
        _, state = train_generator(data, FaceDecoder(16, 64, width=4), None,
                                   GeneratorTrainConfig(hidden=8, epochs=5, batch_size=8, max_minutes=1e-9),
                                   checkpoint_dir=tmp_path, progress=False)
    else:
        _, state = train_decoder(data, None, DecoderTrainConfig(epochs=5, batch_size=8, width=4, max_minutes=1e-9),
                                 checkpoint_dir=tmp_path, progress=False)
    assert state["epoch"] == 0 and state["partial_epoch"] == "1/8 steps"
    assert len(state["history"]) == 1 and state["history"][0]["steps"] == 1
    assert all(np.isfinite(v) for v in state["history"][0].values())
    assert not (tmp_path / "state.json").exists()


def test_cli_train_shadow_says_how_far_a_timed_out_run_got(tmp_path: Path) -> None:
    _faces(n=64).save(tmp_path / "pack.npz")
    result = CliRunner().invoke(cli, ["train-shadow", str(tmp_path / "pack.npz"), "-o", str(tmp_path / "shadow"),
                                      "--id-weight", "0", "--epochs", "3", "--batch-size", "8", "--width", "4",
                                      "--max-minutes", "1e-9", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "after 0 epochs and 1/8 steps of the next (--max-minutes reached)" in result.stdout
    assert FaceDecoder.from_pretrained(tmp_path / "shadow").config["width"] == 4
