"""VIGFace training settings and divergence: nonsense hyper-parameters are refused before a run starts, a diverging run
stops with NonFiniteError before it saves anything, and the CLI reports either as one ``error:`` line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from facecore.errors import InvalidInputError, NonFiniteError
from vigface_sdk.cli import main as cli
from vigface_sdk.models.autoencoder import FaceAutoencoder
from vigface_sdk.models.backbones import iresnet_backbone
from vigface_sdk.training.autoencoder import AutoencoderTrainConfig, train_autoencoder
from vigface_sdk.training.diffusion import DiffusionTrainConfig, train_latent_diffusion
from vigface_sdk.training.recognizer import RecognizerTrainConfig
from vigface_sdk.training.space import SpaceTrainConfig, load_training_dataset, train_space

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")
TINY_AE = dict(image_size=16, latent_channels=2, block_out_channels=(8, 16), cond_dim=8, cond_embed_dim=16, norm_groups=4)
TINY_DEN = dict(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=8, norm_num_groups=8)

BAD_VALUES = {
    AutoencoderTrainConfig: dict(lr=[NAN, 0.0, -1e-3, INF], max_minutes=[NAN, -1.0, 0.0], batch_size=[0, 1],
                                 max_steps=[0, -5, 2.5], identity_batch=[0, 64], kl_weight=[-1.0], grad_clip=[NAN],
                                 log_every=[0], checkpoint_every=[0]),
    DiffusionTrainConfig: dict(lr=[NAN, 0.0, -1.0], max_minutes=[NAN, -1.0], batch_size=[0], max_steps=[0],
                               cond_drop_prob=[1.0, -0.1], ema_decay=[NAN, 1.5], warmup_steps=[-1], checkpoint_every=[0]),
    SpaceTrainConfig: dict(lr=[NAN, -0.1], backbone_lr=[INF, -0.1], batch_size=[0], max_steps=[0], epochs=[0], scale=[0.0],
                           margin=[NAN, -0.5], momentum=[1.0], sigma_momentum=[NAN], num_virtual=[0], log_every=[0]),
    RecognizerTrainConfig: dict(lr=[NAN, 0.0], steps=[0], batch_size=[0, 1], scale=[INF], margin=[NAN], width=[0]),
}
REQUIRED = {SpaceTrainConfig: dict(num_virtual=4)}


@pytest.mark.parametrize("cls, field, value", [(cls, field, value) for cls, fields in BAD_VALUES.items()
                                               for field, values in fields.items() for value in values],
                         ids=lambda v: v.__name__ if isinstance(v, type) else repr(v))
def test_configs_refuse_nonsense_values_naming_the_field(cls: type, field: str, value: object) -> None:
    """Each bad value is refused when the config is made, and the message names the field."""
    with pytest.raises(InvalidInputError, match=rf"\b{re.escape(f'{field}={value!r}')} \(must be"):
        cls(**{**REQUIRED.get(cls, {}), field: value})


def test_configs_accept_their_defaults_and_edge_values() -> None:
    """Defaults, "no limit" Nones, a disabled grad clip and a frozen space head (lr 0) are valid."""
    AutoencoderTrainConfig(max_minutes=None, grad_clip=0.0, adversarial_weight=0.0, warmup_steps=0)
    DiffusionTrainConfig(max_minutes=0.5, cond_drop_prob=0.0, ema_decay=1.0)
    SpaceTrainConfig(num_virtual=1, max_steps=None, lr=0.0, margin_type="cosface")
    RecognizerTrainConfig()


def _arrays(n: int = 8, ids: int = 4, dim: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random 16 px faces of ``ids`` identities with random ``dim``-d embeddings."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % ids
    return (rng.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8),
            rng.standard_normal((ids, dim)).astype(np.float32)[labels], labels)


def _checkpoint_step(ckpt: Path) -> int:
    """The step of the checkpoint in ``ckpt``, after asserting that all its weights are finite."""
    assert all(bool(torch.isfinite(t).all()) for t in load_file(ckpt / "model.safetensors").values())
    return json.loads((ckpt / "state.json").read_text())["step"]


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_diverging_run_raises_and_keeps_the_last_good_checkpoint(stage: str, tmp_path: Path) -> None:
    """lr 1e12: the step-1 checkpoint is written, the run stops at step 2 (NaN loss) and returns no model."""
    images, emb, labels = _arrays()
    common = dict(max_steps=4, batch_size=4, lr=1e12, warmup_steps=0, log_every=1, checkpoint_every=1)
    with pytest.raises(NonFiniteError, match=r"diverged.*by step 2 .*lower lr \(now 1e\+12\)"):
        if stage == "autoencoder":
            recognizer = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 8))
            model = {k: v for k, v in TINY_AE.items() if k not in ("image_size", "cond_dim")}
            train_autoencoder(images, emb, labels, recognizer, AutoencoderTrainConfig(**common, identity_batch=2, model=model),
                              checkpoint_dir=tmp_path, progress=False)
        else:
            train_latent_diffusion(FaceAutoencoder(**TINY_AE), images, emb, labels,
                                   DiffusionTrainConfig(**common, model=TINY_DEN), checkpoint_dir=tmp_path, progress=False)
    assert _checkpoint_step(tmp_path) == 1


def test_diverging_space_run_on_real_faces_keeps_the_last_good_checkpoint(lfw_root: Path, tmp_path: Path) -> None:
    """A backbone fine-tuned at backbone_lr 1e12 on three LFW people: NonFiniteError at step 2, step-1 checkpoint kept."""
    data = load_training_dataset(lfw_root, min_images=1, size=(32, 32)).subset(["Aaron_Peirsol", "Abdullah_Gul",
                                                                                 "Adam_Sandler"])
    torch.manual_seed(0)
    backbone = iresnet_backbone(layers=(1, 1, 1, 1), width=4, dim=16, input_size=32)
    cfg = SpaceTrainConfig(num_virtual=3, max_steps=6, batch_size=4, backbone_lr=1e12, checkpoint_every=1, log_every=1)
    with pytest.raises(NonFiniteError, match=r"diverged.*by step 2 .*backbone_lr \(now 1e\+12\)"):
        train_space(data, cfg, backbone, checkpoint_dir=tmp_path, progress=False)
    assert _checkpoint_step(tmp_path) == 1


def test_cli_train_space_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    """``vigface-cli train-space --lr nan --steps 0``: exit 2, one ``error:`` line naming both, nothing written."""
    out = tmp_path / "space"
    proc = subprocess.run([sys.executable, "-m", "vigface_sdk", "train-space", str(tmp_path / "faces"), "-k", "2", "-o",
                           str(out), "--lr", "nan", "--steps", "0", "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid SpaceTrainConfig:"), proc.stderr[-2000:]
    assert "max_steps=0" in lines[0] and "lr=nan" in lines[0] and not out.exists()


@pytest.mark.parametrize("command", ["train-autoencoder", "train-diffusion"])
def test_cli_synthesis_training_refuses_bad_settings(command: str, fr128, tmp_path: Path) -> None:
    """``--max-minutes -1 --steps 0`` on a tiny fr128 pack: exit 2 with one ``error:`` line, before any training."""
    from facecore.training.face_pack import FaceTrainingSet

    size = 64 if command == "train-autoencoder" else 16
    images, _, labels = _arrays()
    emb = np.random.default_rng(1).standard_normal((len(labels), 128)).astype(np.float32)
    FaceTrainingSet(np.stack([np.kron(im, np.ones((size // 16, size // 16, 1), np.uint8)) for im in images]), emb, labels,
                    [f"p{i}" for i in range(4)], [f"p{lab}/{i}.jpg" for i, lab in enumerate(labels)], fr128.fingerprint
                    ).save(tmp_path / "pack.npz")
    args = [command, str(tmp_path / "pack.npz"), "-o", str(tmp_path / "out"), "--max-minutes", "-1", "--steps", "0",
            "--device", "cpu"]
    if command == "train-diffusion":
        FaceAutoencoder(**{**TINY_AE, "cond_dim": 128}, condition={"recognizer": "fr128", "fingerprint": fr128.fingerprint}
                        ).save_pretrained(tmp_path / "ae")
        args += ["-a", str(tmp_path / "ae")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: invalid "), result.output
    assert "max_steps=0" in result.stderr and "max_minutes=-1.0" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train-autoencoder", "train-diffusion"])
@pytest.mark.parametrize("option, value, named", [("--steps", "0", "max_steps=0"), ("--max-minutes", "nan", "max_minutes=nan"),
                                                   ("--batch-size", "0", "batch_size=0")])
def test_cli_synthesis_training_checks_settings_before_reading_data(command: str, option: str, value: str, named: str,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting is the error even when DATA (an empty folder) and the autoencoder (a missing folder) are unusable:
    the config is checked before either is read."""
    import vigface_sdk._cli_synthesis as synthesis

    def no_data(*args: object) -> None:
        pytest.fail("the training data were read before the settings were checked")

    monkeypatch.setattr(synthesis, "_training_set", no_data)
    (tmp_path / "faces").mkdir()
    args = [command, str(tmp_path / "faces"), "-o", str(tmp_path / "out"), option, value, "--device", "cpu"]
    if command == "train-diffusion":
        args += ["-a", str(tmp_path / "no_autoencoder")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: invalid "), result.output
    assert named in result.stderr and not (tmp_path / "out").exists()
