"""``advface-cli embed``, ``pack`` + ``train-generator --init`` on small real data, CLI error lines, ``--help``/``--version``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advface_sdk.cli import main as advface_main
from facecore import __version__
from facecore.data import IdentityFolderDataset
from vigface_sdk.cli import main as vigface_main

IDENTITIES = ("Colin_Powell", "George_W_Bush", "Serena_Williams", "Tony_Blair")


@pytest.fixture
def tiny_lfw(lfw_root, tmp_path, monkeypatch):
    """20 real LFW crops (5 of each of 4 identities), symlinked into tmp identity folders; a private cache."""
    monkeypatch.setenv("FACEPRIV_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "faces"
    for name in IDENTITIES:
        (root / name).mkdir(parents=True)
        for src in sorted((lfw_root / name).iterdir())[:5]:
            (root / name / src.name).symlink_to(src)
    return root


def _error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_embed_writes_npz(tiny_lfw, tmp_path, fr128):
    out = tmp_path / "out" / "emb.npz"
    result = CliRunner().invoke(advface_main, ["embed", str(tiny_lfw), "-r", "fr128", "--out", str(out), "--flip"])
    assert result.exit_code == 0, result.output
    assert "wrote 20 embeddings of dim 128 (4 identities)" in result.output
    with np.load(out, allow_pickle=False) as z:
        assert set(z.files) == {"embeddings", "embeddings_flip", "relpaths", "labels", "identities", "fingerprint"}
        emb, flip = z["embeddings"], z["embeddings_flip"]
        assert emb.shape == flip.shape == (20, 128) and emb.dtype == np.float32
        assert z["relpaths"].shape == (20,) and z["labels"].shape == (20,)
        assert z["identities"].tolist() == list(IDENTITIES)
        np.testing.assert_array_equal(z["labels"], np.repeat(np.arange(4), 5))
        assert str(z["fingerprint"]) == fr128.fingerprint
        relpaths = z["relpaths"].tolist()
    assert relpaths[0] == "Colin_Powell/Colin_Powell_0001.jpg"
    # the stored rows are the recognizer's embeddings of those files
    ds = IdentityFolderDataset.from_folder(tiny_lfw)
    crops = np.stack([ds.load(i) for i in range(len(ds))])
    np.testing.assert_allclose(emb, fr128.embed(crops), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flip, fr128.embed(crops[:, :, ::-1]), rtol=1e-5, atol=1e-5)
    # same identity closer than different identities, on average
    n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim, labels = n @ n.T, ds.labels
    same = np.equal.outer(labels, labels)
    assert sim[same & ~np.eye(20, dtype=bool)].mean() > sim[~same].mean() + 0.3


def test_embed_raw_onnx_path(tiny_lfw, tmp_path, fr128):
    out = tmp_path / "raw.npz"
    args = ["embed", str(tiny_lfw), "-r", str(fr128.model_path), "--channel-order", "RGB", "--mean", "127.5",
            "--std", "128", "-o", str(out)]
    result = CliRunner().invoke(advface_main, args)
    assert result.exit_code == 0, result.output
    with np.load(out) as z:
        assert str(z["fingerprint"]) == fr128.fingerprint  # same bytes and preprocessing as the built-in
        assert "embeddings_flip" not in z.files


@pytest.mark.parametrize("case", ["missing-dataset", "empty-dataset", "missing-model", "corrupt-model", "unknown-name"])
def test_embed_errors_are_one_line(case, tiny_lfw, tmp_path):
    dataset, recognizer = str(tiny_lfw), "fr128"
    if case == "missing-dataset":
        dataset = str(tmp_path / "nowhere")
    elif case == "empty-dataset":
        (tmp_path / "empty").mkdir()
        dataset = str(tmp_path / "empty")
    elif case == "missing-model":
        recognizer = str(tmp_path / "missing.onnx")
    elif case == "corrupt-model":
        recognizer = str(tmp_path / "corrupt.onnx")
        (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 100)
    else:
        recognizer = "no-such-recognizer"
    out = tmp_path / "x.npz"
    result = CliRunner().invoke(advface_main, ["embed", dataset, "-r", recognizer, "-o", str(out)])
    assert result.exit_code != 0
    line = _error_line(result)
    assert "Traceback" not in result.output
    assert {"missing-dataset": "not found", "empty-dataset": "no images", "missing-model": "not found",
            "corrupt-model": "cannot load", "unknown-name": "unknown recognizer"}[case] in line
    assert not out.exists()


def test_embed_error_via_console_script(tmp_path):
    """The installed ``advface-cli``: non-zero exit and exactly one ``error:`` line on stderr."""
    exe = Path(sys.executable).with_name("advface-cli")
    if not exe.is_file():
        pytest.skip(f"advface-cli is not installed next to {sys.executable}")
    proc = subprocess.run([str(exe), "embed", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, env={**os.environ, "FACEPRIV_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    # with the shared folder configured the dataset is the problem, without it the missing face data is
    assert "dataset folder not found" in lines[0] or "FACEPRIV_SHARED" in lines[0]


@pytest.mark.parametrize("cli, prog", [(advface_main, "advface-cli"), (vigface_main, "vigface-cli")])
def test_help_and_version(cli, prog):
    runner = CliRunner()
    for flag in ("--help", "-h"):
        result = runner.invoke(cli, [flag])
        assert result.exit_code == 0 and "Usage:" in result.output and "Options:" in result.output
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"{prog}, version {__version__}"


def test_embed_help_lists_options():
    result = CliRunner().invoke(advface_main, ["embed", "--help"])
    assert result.exit_code == 0
    for option in ("--recognizer", "--out", "--flip", "--channel-order", "--mean", "--std"):
        assert option in result.output


def test_pack_and_fine_tune_the_shipped_protector(tiny_lfw, tmp_path, fr128):
    """``train-generator --init`` fine-tunes a shipped artifact on real faces; a wrong-recognizer init is refused."""
    pack = tmp_path / "pack.npz"
    result = CliRunner().invoke(advface_main, ["pack", str(tiny_lfw), "-r", "fr128", "--group", "all", "-o", str(pack)])
    assert result.exit_code == 0, result.output
    from advface_sdk.artifact import default_shadow, load_artifact

    common = ["train-generator", str(pack), "-r", "fr128", "--shadow", str(default_shadow("fr128")), "--budget", "0.8",
              "--epochs", "1", "--batch-size", "10", "--distortion-weight", "100", "--device", "cpu"]
    out = tmp_path / "tuned"
    result = CliRunner().invoke(advface_main, common + ["--init", "fr128", "-o", str(out)])
    assert result.exit_code == 0, result.output
    tuned, shipped = load_artifact(out), load_artifact("fr128")
    assert tuned.config["training"]["init"] == "fr128" and tuned.config["training"]["config"]["distortion_weight"] == 100
    moved = [np.abs(tuned.state[k] - shipped.state[k]).max() for k in shipped.state]
    assert 0 < max(moved) < 0.05  # a few small steps away from the shipped weights, not a fresh network
    result = CliRunner().invoke(advface_main, common + ["--init", "fr512", "-o", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "trained for recognizer" in _error_line(result)
    assert not (tmp_path / "bad").exists()

    # the shipped face prior and a second one of the same space as an ensemble of shadows; a prior of another
    # embedding space is refused
    from advface_sdk.evaluation.face_prior import load_face_prior
    from vigface_sdk.models.autoencoder import FaceAutoencoder

    FaceAutoencoder(block_out_channels=(8, 16, 16, 16), cond_dim=128, condition=load_face_prior().config["condition"]
                    ).save_pretrained(tmp_path / "second_prior")
    out = tmp_path / "vs_prior"
    result = CliRunner().invoke(advface_main, common + ["--init", "fr128", "--face-prior", "default", "--face-prior",
                                                        str(tmp_path / "second_prior"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    training = load_artifact(out).config["training"]
    assert training["face_prior"] == ["default", str(tmp_path / "second_prior")]
    assert training["config"]["prior_id_weight"] == 4.0
    assert {"prior_identity", "prior_pixel"} <= set(training["history"][0])

    FaceAutoencoder(block_out_channels=(8, 16, 16, 16), cond_dim=128, condition={"recognizer": "other", "fingerprint": "0" * 16}
                    ).save_pretrained(tmp_path / "foreign_prior")
    result = CliRunner().invoke(advface_main, common + ["--face-prior", str(tmp_path / "foreign_prior"), "-o", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "renders prototypes of recognizer" in _error_line(result)
    assert not (tmp_path / "bad").exists()
