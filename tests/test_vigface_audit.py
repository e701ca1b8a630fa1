"""Audit of VIGFace synthesis against bad input and failure: one test per defect found, real pipelines, real files,
real subprocesses where the CLI is the subject."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import FAST_SYNTHESIS as FAST
from facecore.errors import ArtifactError, DataError, InvalidInputError
from vigface_sdk.cli import main as cli
from vigface_sdk.evaluation.synthesis_report import load_synthetic
from vigface_sdk.pipelines.pipeline import VIGFacePipeline, sample_seed
from vigface_sdk.pipelines.synthesize import synthesize

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "vigface_sdk", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


# 1 -- a refused call pinned its settings in run.json, so the corrected call was refused as "another run" ----------------
@pytest.mark.parametrize("bad", [dict(num_inference_steps=0), dict(guidance_scale=float("nan")), dict(batch_size=0),
                                 dict(seed=-1), dict(seed=1.5), dict(jpeg_quality=500), dict(per_identity=2.5)])
def test_bad_arguments_are_refused_before_the_out_folder_is_claimed(tiny_pipe, tmp_path, bad):
    args = {**FAST, "per_identity": 2, **bad}
    with pytest.raises(InvalidInputError):
        synthesize(tiny_pipe, tmp_path / "out", 2, **args)
    assert not (tmp_path / "out").exists()
    assert synthesize(tiny_pipe, tmp_path / "out", 2, 2, **FAST).complete


def test_an_out_path_that_is_a_file_is_a_typed_error(tiny_pipe, tmp_path):
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(InvalidInputError, match="is a file"):
        synthesize(tiny_pipe, tmp_path / "file", 1, 1, **FAST)
    assert (tmp_path / "file").read_text() == "keep me"


def test_negative_or_fractional_seeds_are_typed_errors(tiny_pipe):
    for seed in (-1, 1.5, "1"):
        with pytest.raises(InvalidInputError, match="seed"):
            sample_seed(seed, 0, 0)
        with pytest.raises(InvalidInputError, match="seed"):
            tiny_pipe.virtual_prototypes(1, seed=seed)
    with pytest.raises(InvalidInputError, match="seed"):
        tiny_pipe(tiny_pipe.virtual_prototypes(1), 1, num_inference_steps=2, seed=-3)


# 2 -- a component folder symlinked outside the pipeline folder was followed ---------------------------------------------
def test_component_folder_symlinked_outside_the_pipeline_is_refused(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "p")
    shutil.move(tmp_path / "p" / "denoiser", tmp_path / "elsewhere")
    (tmp_path / "p" / "denoiser").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        VIGFacePipeline.from_pretrained(tmp_path / "p")


# 3 -- SIGTERM killed `synthesize` outright; temp files of killed runs stayed in the dataset forever -------------------------
def test_sigterm_gives_one_line_and_no_temp_file_and_the_run_resumes(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out"
    args = ["synthesize", "--pipeline", str(tmp_path / "pipe"), "-n", "60", "-m", "2", "--steps", "2", "--shard-size", "1",
            "--device", "cpu", "-q", "--out", str(out)]
    proc = _cli(args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob(".shards/*.json"))) < 2:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["error: interrupted; partial outputs were removed"], err
    assert _temp_files(out) == [] and not (out / "manifest.jsonl").exists()
    done = sorted(int(p.stem) for p in out.glob(".shards/*.json"))
    assert 2 <= len(done) < 60
    # what SIGKILL leaves: temp files of a dead process, in the next shard and in the merge; resuming removes them
    pid, nxt = _dead_pid(), max(done) + 1
    stale = [out / f"id_{nxt:06d}" / f".0001.jpg.tmp{pid}", out / ".shards" / f".{nxt:06d}.rec.tmp{pid}",
             out / f".train.rec.tmp{pid}"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"torn")
    res = synthesize(VIGFacePipeline.from_pretrained(tmp_path / "pipe"), out, 60, 2, num_inference_steps=2, shard_size=1,
                     progress=False)
    assert res.complete and res.shards_skipped == len(done)
    assert _temp_files(out) == [] and len((out / "manifest.jsonl").read_text().splitlines()) == 120


def test_temp_files_left_by_a_killed_run_are_removed_on_resume(tiny_pipe, tmp_path):
    out = tmp_path / "out"
    synthesize(tiny_pipe, out, 3, 2, **FAST)
    # the state of a run SIGKILLed inside shard 1: no marker, no manifest, a temp image of a dead process
    (out / "manifest.jsonl").unlink()
    (out / ".shards" / "000001.json").unlink()
    stale = out / "id_000002" / f".0000.jpg.tmp{_dead_pid()}"
    stale.write_bytes(b"torn")
    res = synthesize(tiny_pipe, out, 3, 2, **FAST)
    assert res.complete and res.shards_done == 1
    assert _temp_files(out) == []


# 4 -- an edited manifest made report-synthesis read outside the dataset or die with a KeyError -------------------------------
def test_edited_manifests_are_typed_errors(tiny_pipe, tmp_path):
    out = tmp_path / "d"
    synthesize(tiny_pipe, out, 2, 2, **FAST)
    manifest = out / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    (tmp_path / "outside.jpg").write_bytes((out / rows[0]["file"]).read_bytes())
    edits = [({"file": "../outside.jpg"}, ArtifactError), ({"identity": "../../pwned"}, ArtifactError),
             ({"label": None}, DataError)]
    for change, error in edits:
        manifest.write_text("".join(json.dumps({**r, **(change if i == 0 else {})}) + "\n" for i, r in enumerate(rows)))
        with pytest.raises(error):
            load_synthetic(out)
    manifest.write_text("")
    with pytest.raises(DataError, match="no images"):
        load_synthetic(out)


def test_report_cli_on_an_edited_manifest_gives_one_line(tiny_pipe, tmp_path, shared):
    out = tmp_path / "d"
    synthesize(tiny_pipe, out, 2, 2, **FAST)
    manifest = out / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in rows))
    proc = _cli(["report-synthesis", str(out), "--evaluator", "fr128"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert not (out / "report").exists()


# 5 -- demo -n 0 complained about "prototypes", not about the option ----------------------------------------------------------
@pytest.mark.parametrize("option", ["--identities", "--per-identity"])
def test_demo_refuses_non_positive_counts_by_option(tmp_path, option):
    res = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo"), option, "0"])
    assert res.exit_code == 2 and option in res.output
    assert not (tmp_path / "demo").exists()


# 6 -- the recognizer trainer returned a NaN network for NaN hyper-parameters or a diverging run -------------------------------
def _faces() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), np.repeat(["a", "b"], 12)


@pytest.mark.parametrize("bad", [dict(lr=float("nan")), dict(lr=-1.0), dict(scale=float("inf")), dict(margin=float("nan")),
                                 dict(batch_size=1), dict(batch_size=0)])
def test_recognizer_trainer_refuses_bad_hyper_parameters(bad):
    from vigface_sdk.training.recognizer import RecognizerTrainConfig

    with pytest.raises(InvalidInputError):
        RecognizerTrainConfig(**bad)


def test_recognizer_trainer_refuses_to_return_a_diverged_network():
    from facecore.errors import NonFiniteError
    from vigface_sdk.training.recognizer import RecognizerTrainConfig, train_recognizer

    cfg = RecognizerTrainConfig(steps=3, batch_size=8, lr=1e6, layers=(1, 1, 1, 1), width=8, dim=16)
    with pytest.raises(NonFiniteError, match="diverged"):
        train_recognizer(*_faces(), cfg, progress=False)


# 7 -- --holdout-folds naming a fold the pairs file lacks held out nothing, silently (test identities leaked into training) ----
def test_holdout_folds_beyond_the_protocol_are_refused(tmp_path):
    from facecore.data import parse_folds, read_pairs

    (tmp_path / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 1 Bob 1\nCid 1 2\nCid 1 Dan 1\n")
    pairs = read_pairs(tmp_path / "pairs.txt")
    assert pairs.identities_in_folds(parse_folds("2")) == {"Cid", "Dan"}
    for folds in ("3", "2-11", "1,7"):
        with pytest.raises(InvalidInputError, match="do not exist"):
            pairs.identities_in_folds(parse_folds(folds))
        with pytest.raises(InvalidInputError, match="do not exist"):
            pairs.select(parse_folds(folds))
