"""VIGFace stage 2 dataset side: writers (RecordIO as arcface_torch reads it), synthesis determinism,
resumption, refusals, and the synthesis report."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST_SYNTHESIS as FAST
from facecore.data import IdentityFolderDataset
from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError
from facecore.images import read_image

from vigface_sdk.evaluation.synthesis_report import build_report, embed_faces, identity_consistency, load_synthetic, save_grid
from vigface_sdk.models.prototypes import PrototypeStore
from vigface_sdk.pipelines.pipeline import VIGFacePipeline, sample_seed
from vigface_sdk.pipelines.synthesize import synthesize
from vigface_sdk.pipelines.writers import (MAGIC, RecordIOReader, RecordIOWriter, encode_jpeg, pack_record,
                                 read_insightface_recordio, read_manifest, unpack_record, write_insightface_recordio)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


# --- RecordIO ----------------------------------------------------------------------------------
def test_recordio_byte_layout_and_magic_splitting(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payloads = [b"abc", b"x" * 8 + magic + b"yyyy" + magic + b"z", magic, b""]
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        for i, p in enumerate(payloads):
            w.write_idx(10 + i, p)
    raw = (tmp_path / "a.rec").read_bytes()
    assert raw[:4] == magic and struct.unpack("<I", raw[4:8])[0] == 3 and raw[8:11] == b"abc" and raw[11] == 0
    assert len(raw) % 4 == 0
    assert struct.unpack("<I", raw[16:20])[0] >> 29 == 1  # the second record starts with a 'first part' flag
    lines = (tmp_path / "a.idx").read_text().splitlines()
    assert lines[0] == "10\t0" and lines[1] == "11\t12"
    r = RecordIOReader(tmp_path / "a.rec", tmp_path / "a.idx")
    assert [r.read_idx(10 + i) for i in range(4)] == payloads


def test_irheader_pack_unpack():
    rec = pack_record(7.0, b"JPEG", id=3)
    assert struct.unpack("IfQQ", rec[:24]) == (0, 7.0, 3, 0)
    assert unpack_record(rec)[1:] == (7.0, 3, 0, b"JPEG")
    flag, label, *_ , body = unpack_record(pack_record([5, 9], b""))
    assert flag == 2 and label.tolist() == [5.0, 9.0] and body == b""


def test_insightface_recordio_as_arcface_torch_reads_it(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (4, 4, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1) for _ in range(7)]
    labels = [0, 0, 0, 2, 2, 3, 3]  # class 1 has no image
    write_insightface_recordio(tmp_path, ((lab, encode_jpeg(im, 100)) for lab, im in zip(labels, images)), 7, 4, (16, 16))
    assert (tmp_path / "property").read_text() == "4,16,16\n"
    r = RecordIOReader(tmp_path / "train.rec", tmp_path / "train.idx")
    flag, head, *_ = unpack_record(r.read_idx(0))
    assert flag == 2 and head.tolist() == [8, 12]  # MXFaceDataset: imgidx = range(1, 8)
    ranges = [unpack_record(r.read_idx(8 + c))[1].tolist() for c in range(4)]
    assert ranges == [[1, 4], [4, 4], [4, 6], [6, 8]]
    back = list(read_insightface_recordio(tmp_path))
    assert [lab for lab, _ in back] == labels
    assert all(np.abs(b.astype(int) - im).mean() < 6 for (_, b), im in zip(back, images))
    with pytest.raises(InvalidInputError):
        write_insightface_recordio(tmp_path / "bad", [(1, b""), (0, b"")], 2, 2, (16, 16))


# --- synthesis ---------------------------------------------------------------------------------
def test_same_seeds_same_images_and_any_image_regenerates_alone(tiny_pipe, tmp_path):
    a = synthesize(tiny_pipe, tmp_path / "a", 3, 2, **FAST)
    b = synthesize(tiny_pipe, tmp_path / "b", 3, 2, **FAST)
    assert a.complete and b.complete and a.num_images == 6
    rows = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert [r["file"] for r in rows] == [f"id_{i:06d}/{m:04d}.jpg" for i in range(3) for m in range(2)]
    for r in rows:
        assert (tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes()
    # image (2, 1) from its seed alone, identity 2's prototype from the sampler
    proto = tiny_pipe.virtual_prototypes(1, seed=0, start=2)
    alone = tiny_pipe(proto, 1, num_inference_steps=3, generator=[torch.Generator().manual_seed(sample_seed(0, 2, 1))])[0]
    assert rows[5]["seed"] == sample_seed(0, 2, 1)
    assert np.abs(read_image(tmp_path / "a" / rows[5]["file"])[..., ::-1].astype(int) - alone).mean() < 4  # JPEG
    other = synthesize(tiny_pipe, tmp_path / "c", 3, 2, seed=1, **FAST)
    assert other.complete and (tmp_path / "c" / rows[0]["file"]).read_bytes() != (tmp_path / "a" / rows[0]["file"]).read_bytes()
    ds = IdentityFolderDataset.from_folder(tmp_path / "a")  # the layout ImageFolder / arcface_torch folders read
    assert ds.identities == ["id_000000", "id_000001", "id_000002"] and len(ds) == 6


def test_progress_counts_the_images_of_partial_shards(tiny_pipe, tmp_path, capsys):
    """The bar's total was shards x shard_size: 5 identities in shards of 4 showed "10/16" at the end."""
    fast = {**FAST, "shard_size": 4, "progress": True}
    res = synthesize(tiny_pipe, tmp_path / "a", 5, 2, batch_size=4, **fast)
    assert res.num_images == 10 and "10/10" in capsys.readouterr().err
    alone = synthesize(tiny_pipe, tmp_path / "b", 5, 2, batch_size=64, **fast)  # one pipeline call per shard
    for row in read_manifest(res.out_dir / "manifest.jsonl"):
        a, b = read_image(res.out_dir / row["file"]), read_image(alone.out_dir / row["file"])
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, row["file"]


def test_resume_skips_finished_shards_and_redoes_partial_ones(tiny_pipe, tmp_path):
    synthesize(tiny_pipe, tmp_path / "full", 5, 2, **FAST)
    out = tmp_path / "part"
    synthesize(tiny_pipe, out, 5, 2, **FAST)
    # the state of a run killed inside shard 1 (identities 2-3): no marker, a missing and a torn image, no manifest
    (out / "manifest.jsonl").unlink()
    (out / ".shards" / "000001.json").unlink()
    (out / "id_000002" / "0001.jpg").unlink()
    (out / "id_000003" / "0000.jpg").write_bytes(b"torn")
    stamp = (out / "id_000000" / "0000.jpg").stat().st_mtime_ns
    res = synthesize(tiny_pipe, out, 5, 2, **FAST)
    assert (res.shards_done, res.shards_skipped, res.num_images, res.complete) == (1, 2, 4, True)
    assert (out / "id_000000" / "0000.jpg").stat().st_mtime_ns == stamp
    for f in sorted((tmp_path / "full").rglob("*.jpg")):
        assert (out / f.relative_to(tmp_path / "full")).read_bytes() == f.read_bytes()
    assert (out / "manifest.jsonl").read_text() == (tmp_path / "full" / "manifest.jsonl").read_text()
    again = synthesize(tiny_pipe, out, 5, 2, **FAST)
    assert again.num_images == 0 and again.shards_skipped == 3


def test_refuses_a_folder_holding_another_run(tiny_pipe, tmp_path):
    synthesize(tiny_pipe, tmp_path / "a", 2, 2, **FAST)
    with pytest.raises(IncompatibleError, match="another synthesis run"):
        synthesize(tiny_pipe, tmp_path / "a", 2, 3, **FAST)
    with pytest.raises(IncompatibleError):
        synthesize(tiny_pipe, tmp_path / "a", 2, 2, guidance_scale=3.0, **FAST)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="not empty"):
        synthesize(tiny_pipe, tmp_path / "b", 2, 2, **FAST)


def test_prototype_dimension_and_space_mismatch(tiny_pipe, tmp_path):
    with pytest.raises(IncompatibleError):
        synthesize(tiny_pipe, tmp_path / "a", 2, 1, prototypes=np.ones((2, 9), np.float32), **FAST)
    with pytest.raises(InvalidInputError):
        synthesize(tiny_pipe, tmp_path / "b", 3, 1, prototypes=np.ones((2, 8), np.float32), **FAST)
    store = PrototypeStore(np.eye(8)[:3], np.eye(8)[3:], ["a", "b", "c"], {"backbone_fingerprint": "other"})
    with pytest.raises(IncompatibleError):
        tiny_pipe.check_prototypes(store.virtual, store.backbone_fingerprint)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def _run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "vigface_sdk", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def test_cli_killed_mid_run_resumes_to_the_same_dataset(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    args = ["synthesize", "--pipeline", str(tmp_path / "pipe"), "-n", "12", "-m", "2", "--steps", "3", "--shard-size", "1",
            "--evaluator", "none", "--device", "cpu", "-q", "--format", "recordio"]
    proc = _run_cli(args + ["--out", str(tmp_path / "killed")])
    shards = tmp_path / "killed" / ".shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(shards.glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(shards.glob("*.json")))
    resumed = _run_cli(args + ["--out", str(tmp_path / "killed")])
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err[-2000:]
    assert f"{done_before} finished shards skipped" in out or done_before == 12
    full = _run_cli(args + ["--out", str(tmp_path / "full")])
    assert full.wait(timeout=180) == 0
    assert (tmp_path / "killed" / "train.rec").read_bytes() == (tmp_path / "full" / "train.rec").read_bytes()
    bad = _run_cli(args[:6] + ["3"] + args[7:] + ["--out", str(tmp_path / "full")])
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and err.strip().startswith("error:") and "another synthesis run" in err


def test_corrupt_pipeline_is_an_artifact_error(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "p")
    w = tmp_path / "p" / "denoiser" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="checksum"):
        VIGFacePipeline.from_pretrained(tmp_path / "p")
    proc = _run_cli(["synthesize", "--pipeline", str(tmp_path / "p"), "-n", "1", "-m", "1", "--out", str(tmp_path / "o")])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "checksum mismatch" in err


# --- report ------------------------------------------------------------------------------------
def test_consistency_and_report_on_real_faces(fr128, lfw_root, tmp_path):
    """Real LFW faces stand in for a perfect generator: 'virtual' identities that are real people held
    out of the 'training' set are consistent, controllable and mostly not leaks."""
    ds = IdentityFolderDataset.from_folder(lfw_root, min_images=10)
    names = ds.identities[:12]
    sub = ds.subset(names)
    pick = np.concatenate([np.flatnonzero(sub.labels == k)[:4] for k in range(12)])
    images = np.stack([sub.load(i)[..., ::-1] for i in pick])  # RGB
    images64 = np.stack([im[::2, ::2] for im in images])  # generated-size faces go through the same resize
    emb = embed_faces(fr128, images64)
    labels = sub.labels[pick]
    cons = identity_consistency(emb, labels)
    assert np.isfinite(cons).all() and cons.mean() > 0.4
    train_lab = labels >= 6  # identities 6..11 are 'training'; 0..5 play the virtual ones
    real = (emb[train_lab], labels[train_lab], names)
    rep = build_report(emb[~train_lab], labels[~train_lab], "fr128", real, (emb, labels), None, n_pairs=200)
    assert rep["identity_control"]["accuracy"] > 0.9 and rep["identities"] == 6 and rep["per_identity"] == 4
    assert rep["leakage"]["samples"] == 24 and 0 <= rep["leakage"]["clean_rate"] <= 1
    leak = build_report(emb[train_lab], labels[train_lab], "fr128", real, (emb, labels), None, n_pairs=200)["leakage"]
    assert leak["clean_rate"] < 0.2  # training faces themselves are found as leaks
    path = save_grid(images64[:4], tmp_path / "g.png", title="x")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_cli_on_a_synthesized_folder(tiny_pipe, tmp_path, shared):
    synthesize(tiny_pipe, tmp_path / "syn", 3, 3, **FAST)
    images, labels, rows = load_synthetic(tmp_path / "syn")
    assert images.shape == (9, 16, 16, 3) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    real = tmp_path / "real"
    for name in ("Aaron_Peirsol", "Abdullah_Gul"):
        (real / name).mkdir(parents=True)
        for f in sorted((shared / "data" / "lfw" / "aligned112" / name).glob("*.jpg"))[:3]:
            (real / name / f.name).symlink_to(f)
    proc = _run_cli(["report-synthesis", str(tmp_path / "syn"), "--real-root", str(real), "--grids", "2", "-r", "fr128"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    rep = json.loads((tmp_path / "syn" / "report" / "synthesis_report.json").read_text())
    assert rep["leakage"]["samples"] == 9 and rep["grids"] == ["grids/id_000000.png", "grids/id_000001.png"]
    assert (tmp_path / "syn" / "report" / "grids" / "id_000001.png").is_file()
    assert "identity control" in (tmp_path / "syn" / "report" / "synthesis_report.md").read_text()
