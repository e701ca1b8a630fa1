"""Fault injection (issue 13): hostile and clumsy inputs against the API, the CLIs and the artifacts.

    python tests/fault_injection.py [--out benchmarks/results/fault_injection.md]

Five categories: bad arrays, bad files, edited artifacts, signals, full disk. A probe is *handled*
when the SDK either gives the right result or refuses with a typed :class:`FacePrivacyError`
(CLI: exit code 2, one ``error:`` line, no output and no temp file left); anything else — a
traceback, a wrong or non-finite result, exit 0 on nonsense, an overwritten input, a read outside
a gallery folder, debris — is a *defect*. Real components only: the shipped artifacts, ONNX Runtime,
subprocesses (``advface-cli``, ``vigface-cli``), ``RLIMIT_FSIZE``. Exits 1 when any probe is a
defect. Needs no face data: image probes use synthetic files, recognizer and detector probes tiny
``onnx.helper`` graphs, the synthesis probe a random 16x16 VIGFace pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

CLI = [sys.executable, "-m", "advface_sdk"]
PROBES: list[tuple[str, str, Callable[[Path], None]]] = []


class Defect(Exception):
    """The probe found misbehaviour."""


def probe(category: str, name: str):
    def wrap(func):
        PROBES.append((category, name, func))
        return func
    return wrap


def expect_error(func, kinds=None):
    """``func()`` must raise a FacePrivacyError (of ``kinds`` when given)."""
    from facecore.errors import FacePrivacyError

    try:
        func()
    except FacePrivacyError as exc:
        if kinds and not isinstance(exc, kinds):
            raise Defect(f"raised {type(exc).__name__}, expected {kinds}") from exc
        return exc
    except Exception as exc:
        raise Defect(f"untyped {type(exc).__name__}: {exc}") from exc
    raise Defect("accepted without error")


def run_cli(args, tmp: Path, limit: int | None = None, expect_ok: bool = False) -> subprocess.CompletedProcess:
    def pre():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, preexec_fn=pre)
    if expect_ok:
        if proc.returncode != 0:
            raise Defect(f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}")
        return proc
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error:"):
        raise Defect(f"exit {proc.returncode}, stderr {proc.stderr.strip()[-200:]!r}")
    debris = [p.name for p in tmp.rglob(".*tmp*")]
    if debris:
        raise Defect(f"left temp files {debris}")
    return proc


def protector(**kw):
    from advface_sdk import Protector

    return Protector("fr128", **kw)


_P = {}


def p128():
    if "p" not in _P:
        _P["p"] = protector()
    return _P["p"]


def emb(n=16, dim=128, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def fr128_npz(path: Path, n=16, seed=0) -> Path:
    """An embeddings file of fr128 as ``advface-cli embed`` writes it: embeddings, ids, the recognizer's fingerprint."""
    from advface_sdk import load_artifact

    np.savez(path, embeddings=emb(n, seed=seed), ids=np.asarray([f"p{i}" for i in range(n)]),
             fingerprint=np.asarray(load_artifact("fr128").recognizer_fingerprint))
    return path


def tiny_onnx(path: Path, in_shape, out_shape, detector: bool = False) -> Path:
    """A linear recognizer (mean colour times a fixed matrix, one 8-d embedding per crop) or, with ``detector``, a
    detector-like graph: one score per pixel of a batch-1 image, shape ``(anchors, 1)`` (no batch axis)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray([-1, 1] if detector else [0, -1], np.int64), "shape"),
             numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32), "w")]
    nodes = ([helper.make_node("Reshape", ["x", "shape"], ["y"])] if detector else
             [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Reshape", ["g", "shape"], ["f"]),
              helper.make_node("MatMul", ["f", "w"], ["y"])])
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def unchanged(path: Path, before: bytes) -> None:
    if not path.exists() or path.read_bytes() != before:
        raise Defect(f"{path.name} was changed")


# --- bad arrays -----------------------------------------------------------------------------------------------------------
def _bad_array(name, make):
    probe("bad arrays", name)(lambda tmp: expect_error(lambda: p128().protect(make())))


for _name, _make in {
    "NaN row": lambda: np.where(np.arange(16)[:, None] == 3, np.nan, emb()),
    "Inf row": lambda: np.where(np.arange(16)[:, None] == 3, np.inf, emb()),
    "zero row": lambda: np.where(np.arange(16)[:, None] == 3, 0, emb()).astype(np.float32),
    "wrong dimension": lambda: emb(dim=127),
    "3-d array": lambda: emb().reshape(2, 8, 128),
    "0-d array": lambda: np.float32(1.0),
    "empty batch": lambda: np.zeros((0, 128), np.float32),
    "int dtype": lambda: np.ones((2, 128), np.int32),
    "bool dtype": lambda: np.ones((2, 128), bool),
    "complex dtype": lambda: np.ones((2, 128), np.complex64),
    "object array": lambda: np.array([[None] * 128], dtype=object),
    "python list": lambda: emb().tolist(),
    "None": lambda: None,
    "string": lambda: "embeddings",
    "float16 of 60,000 (overflows)": lambda: np.where(np.arange(128) % 2, 60000, -60000).astype(np.float16)[None],
}.items():
    _bad_array(_name, _make)


def _torch_bad(kind):
    import torch

    t = {"sparse": lambda: torch.ones(2, 128).to_sparse(), "meta": lambda: torch.empty(2, 128, device="meta"),
         "int": lambda: torch.ones(2, 128, dtype=torch.int64), "bfloat16": lambda: torch.ones(2, 128, dtype=torch.bfloat16),
         "NaN": lambda: torch.full((2, 128), float("nan"))}[kind]()
    expect_error(lambda: p128().protect(t))


for _kind in ("sparse", "meta", "int", "bfloat16", "NaN"):
    probe("bad arrays", f"torch {_kind} tensor")(lambda tmp, k=_kind: _torch_bad(k))


@probe("bad arrays", "norm ~1e20 comes back finite")
def _(tmp):
    x = emb()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = p128().protect((x * 1e20).astype(np.float32))
    if not np.isfinite(out).all() or np.abs(out / 1e20 - p128().protect(x)).max() > 1e-4:
        raise Defect("non-finite or wrong output")


@probe("bad arrays", "strided, read-only, Fortran-ordered inputs")
def _(tmp):
    x = emb(32)
    ref = p128().protect(np.ascontiguousarray(x[::2]))
    ro = x[::2].copy()
    ro.setflags(write=False)
    for variant in (x[::2], ro, np.asfortranarray(x[::2])):
        if np.abs(p128().protect(variant) - ref).max() > 1e-6:
            raise Defect("result differs from the contiguous input")


@probe("bad arrays", "NaN row number across batches")
def _(tmp):
    x = emb(40)
    x[37] = np.nan
    exc = expect_error(lambda: protector(batch_size=8).protect(x))
    if "[37]" not in str(exc):
        raise Defect(f"wrong row in {exc}")


for _name, _kw in {"batch_size='a'": {"batch_size": "a"}, "batch_size=0": {"batch_size": 0},
                   "unknown backend": {"backend": "nope"}, "unknown backend option": {"no_such_option": 1},
                   "device='cuda:x'": {"device": "cuda:x"}, "device=None": {"device": None}}.items():
    probe("bad arrays", f"Protector({_name})")(lambda tmp, kw=_kw: expect_error(lambda: protector(**kw)))
probe("bad arrays", "Protector(None)")(lambda tmp: expect_error(lambda: __import__("advface_sdk").Protector(None)))


@probe("bad arrays", "device='cuda' without a GPU")
def _(tmp):
    import torch

    if torch.cuda.is_available():
        return  # the GPU path is the right result here
    expect_error(lambda: protector(device="cuda"))


@probe("bad arrays", "float images in 0..1 to a recognizer's embed")
def _(tmp):
    from facecore.errors import InvalidInputError
    from facecore.recognizers import create_recognizer

    rec = create_recognizer(str(tiny_onnx(tmp / "r.onnx", ["N", 3, 112, 112], ["N", 8])))
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    expect_error(lambda: rec.embed(crops.astype(np.float32) / 255), InvalidInputError)  # not silently black
    if not np.array_equal(rec.embed(crops.astype(np.float32)), rec.embed(crops)):
        raise Defect("whole-valued float crops embed differently from the uint8 ones")


@probe("bad arrays", "GeneratorTrainConfig(lr=nan), DecoderTrainConfig(epochs=0)")
def _(tmp):
    from advface_sdk.training.generator import GeneratorTrainConfig
    from advface_sdk.training.reconstruction import DecoderTrainConfig
    from facecore.errors import InvalidInputError

    for make, field in ((lambda: GeneratorTrainConfig(lr=float("nan")), "lr=nan"),
                        (lambda: DecoderTrainConfig(epochs=0), "epochs=0")):
        exc = expect_error(make, InvalidInputError)
        if field not in str(exc):
            raise Defect(f"{field} not named in {exc}")


@probe("bad arrays", "Gallery.enroll('xy', one row) is one id")
def _(tmp):
    from advface_sdk import Gallery

    x = emb(3)
    with Gallery.create(tmp / "g") as g:
        g.enroll(["a", "b"], x[:2])
        g.enroll("xy", x[2])
        if len(g) != 3 or g.contains(["xy", "x", "y"]).tolist() != [True, False, False]:
            raise Defect(f"{len(g)} templates, contains(xy, x, y) = {g.contains(['xy', 'x', 'y']).tolist()}")
        if g.remove("ab") != 0 or g.remove("xy") != 1 or len(g) != 2 or g.contains(["a", "b"]).tolist() != [True, True]:
            raise Defect(f"remove took a string for its characters ({len(g)} templates left)")


# --- bad files --------------------------------------------------------------------------------------------------------------
def _file_probe(name, write, suffix=".npy", out="out.npy"):
    def run(tmp):
        src = tmp / f"in{suffix}"
        write(src)
        run_cli(["protect", src, tmp / out], tmp)
    probe("bad files", name)(run)


_file_probe("0-byte .npy", lambda p: p.write_bytes(b""))
_file_probe("text file named .npy", lambda p: p.write_text("hello\n" * 10))
_file_probe("truncated .npy", lambda p: (np.save(p, emb(100)), p.write_bytes(p.read_bytes()[:2000])))
_file_probe("pickled object .npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True))
_file_probe("3-d .npy", lambda p: np.save(p, emb().reshape(2, 8, 128)))
_file_probe("wrong dimension .npy", lambda p: np.save(p, emb(dim=64)))
_file_probe("int .npy", lambda p: np.save(p, np.ones((3, 128), np.int16)))
_file_probe("NaN .npy", lambda p: np.save(p, np.full((3, 128), np.nan, np.float32)))
_file_probe("corrupt .npz", lambda p: p.write_bytes(b"PK\x03\x04broken"), ".npz")
_file_probe(".npz without the key", lambda p: np.savez(p, other=emb()), ".npz")
_file_probe(".npz of another recognizer", lambda p: np.savez(p, embeddings=emb(), fingerprint=np.asarray("0" * 16)), ".npz")
_file_probe("missing input", lambda p: None)
_file_probe("output of unknown suffix", lambda p: np.save(p, emb()), ".npy", "out.txt")


@probe("bad files", "NaN at row 70,003 named as such")
def _(tmp):
    x = np.ones((70010, 128), np.float32)
    x[70003] = np.nan
    np.save(tmp / "in.npy", x)
    if "70003" not in run_cli(["protect", tmp / "in.npy", tmp / "o.npy"], tmp).stderr:
        raise Defect("wrong row number")


@probe("bad files", ".npz protected in place keeps every member")
def _(tmp):
    from advface_sdk import load_artifact

    members = {"embeddings": emb(), "relpaths": np.asarray([f"{i}.jpg" for i in range(16)]), "labels": np.arange(16),
               "fingerprint": np.asarray(load_artifact("fr128").recognizer_fingerprint)}
    np.savez(tmp / "e.npz", **members)
    run_cli(["protect", tmp / "e.npz", tmp / "e.npz"], tmp, expect_ok=True)
    with np.load(tmp / "e.npz") as z:
        if sorted(z.files) != sorted(members) or not np.array_equal(z["relpaths"], members["relpaths"]):
            raise Defect(f"members {z.files}")


def _image_probe(name, image, kind):
    def run(tmp):
        import cv2

        from facecore.errors import DegenerateImageWarning
        from facecore.images import read_image

        path = tmp / "img.png"
        if isinstance(image, bytes):
            path.write_bytes(image)
            expect_error(lambda: read_image(path))
            return
        cv2.imwrite(str(path), image)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read_image(path, (112, 112))
        flagged = any(issubclass(w.category, DegenerateImageWarning) for w in caught)
        if flagged != (kind == "degenerate"):
            raise Defect("not flagged" if kind == "degenerate" else "flagged a real image")
    probe("bad files", name)(run)


_image_probe("1x1 image", np.full((1, 1, 3), 90, np.uint8), "degenerate")
_image_probe("all-black image", np.zeros((112, 112, 3), np.uint8), "degenerate")
_image_probe("6000x6000 black image", np.zeros((6000, 6000, 3), np.uint8), "degenerate")
_image_probe("textured image is not flagged", np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8), "ok")
_image_probe("corrupt image", b"\xff\xd8\xff\xe0garbage", "error")


def _rec_probe(name, output):
    def run(tmp):
        sys.path.insert(0, str(Path(__file__).parent))
        from test_hardening import _recognizer_onnx

        from facecore.recognizers.onnx_recognizer import OnnxRecognizer

        path = _recognizer_onnx(tmp / "r.onnx", output)
        expect_error(lambda: OnnxRecognizer(path).embed(np.full((2, 112, 112, 3), 120, np.uint8)))
    probe("bad files", name)(run)


_rec_probe("recognizer that outputs an image", "image")
_rec_probe("recognizer that outputs zeros", "zeros")


@probe("bad files", "detector .onnx (no batch axis) given to create_recognizer")
def _(tmp):
    from facecore.errors import ModelLoadError
    from facecore.recognizers import create_recognizer

    path = tiny_onnx(tmp / "det.onnx", [1, 3, "h", "w"], ["anchors", 1], detector=True)  # once a "recognizer" of dim 1
    expect_error(lambda: create_recognizer(str(path)), ModelLoadError)


@probe("bad files", "export-onnx -o onto its own deployment key")
def _(tmp):
    key = tmp / "deploy.key"
    run_cli(["keygen", key], tmp, expect_ok=True)
    before = key.read_bytes()
    run_cli(["export-onnx", "fr128", "-o", key, "-K", key], tmp)
    unchanged(key, before)


@probe("bad files", "gallery search -o onto the probes file")
def _(tmp):
    probes = fr128_npz(tmp / "probes.npz")
    before = probes.read_bytes()
    run_cli(["gallery", "enroll", tmp / "g", probes], tmp, expect_ok=True)
    run_cli(["gallery", "search", tmp / "g", probes, "-o", probes], tmp)
    unchanged(probes, before)


@probe("bad files", "gallery enroll of an .npz with a flipped byte (bad CRC)")
def _(tmp):
    data = bytearray(fr128_npz(tmp / "e.npz", n=300).read_bytes())
    data[data.find(b"embeddings.npy") + 400] ^= 0xFF  # inside the member: its CRC no longer matches
    (tmp / "e.npz").write_bytes(bytes(data))
    run_cli(["gallery", "enroll", tmp / "g", tmp / "e.npz", "--chunk", "16"], tmp)
    if (tmp / "g").exists():
        raise Defect("a gallery was created from the chunks before the damage")


@probe("bad files", "gallery enroll of an empty embeddings file")
def _(tmp):
    from advface_sdk import load_artifact

    np.savez(tmp / "e.npz", embeddings=np.zeros((0, 128), np.float32), ids=np.zeros(0, "U1"),
             fingerprint=np.asarray(load_artifact("fr128").recognizer_fingerprint))
    run_cli(["gallery", "enroll", tmp / "g", tmp / "e.npz"], tmp)
    if (tmp / "g").exists():
        raise Defect("an empty gallery was created")


@probe("bad files", "gallery delete of a gallery that lost a segment (--missing-ok removes it)")
def _(tmp):
    probes = fr128_npz(tmp / "probes.npz")
    run_cli(["gallery", "enroll", tmp / "g", probes], tmp, expect_ok=True)
    next((tmp / "g").glob("seg-*.npz")).unlink()
    run_cli(["gallery", "delete", "--yes", tmp / "g"], tmp)
    if not (tmp / "g" / "gallery.json").is_file():
        raise Defect("the folder was removed without --missing-ok")
    run_cli(["gallery", "delete", "--yes", "--missing-ok", tmp / "g"], tmp, expect_ok=True)
    if (tmp / "g").exists():
        raise Defect("--missing-ok kept the folder")


@probe("bad files", "train-shadow of a .npy; train-shadow --lr nan")
def _(tmp):
    from advface_sdk import load_artifact
    from facecore.training.face_pack import FaceTrainingSet

    rng = np.random.default_rng(0)
    np.save(tmp / "x.npy", emb(8))
    FaceTrainingSet(rng.integers(0, 255, (8, 64, 64, 3), np.uint8), emb(8), np.arange(8) % 2, ["a", "b"],
                    [f"{i}.jpg" for i in range(8)], load_artifact("fr128").recognizer_fingerprint).save(tmp / "pack.npz")
    before = sorted(p.name for p in tmp.iterdir())
    small = ["--epochs", 1, "--batch-size", 4, "--width", 4, "--id-weight", 0, "--device", "cpu"]
    run_cli(["train-shadow", tmp / "x.npy", "-o", tmp / "out", *small], tmp)
    line = run_cli(["train-shadow", tmp / "pack.npz", "-o", tmp / "out", *small, "--lr", "nan"], tmp).stderr
    if "lr=nan" not in line:
        raise Defect(f"lr=nan not named: {line.strip()!r}")
    if sorted(p.name for p in tmp.iterdir()) != before:
        raise Defect(f"wrote {sorted(set(p.name for p in tmp.iterdir()) - set(before))}")


# --- edited artifacts --------------------------------------------------------------------------------------------------------
def _toy(tmp: Path) -> Path:
    import torch

    from advface_sdk import save_artifact
    from advface_sdk.models.generator import NoiseGenerator

    torch.manual_seed(0)
    return save_artifact(NoiseGenerator(16, hidden=8, budget=0.4), tmp / "art", {"name": "toy", "fingerprint": "f"})


def _rewrite(path: Path, name: str, data: bytes) -> None:
    (path / name).write_bytes(data)
    lines = [x for x in (path / "checksums.sha256").read_text().splitlines() if not x.endswith(f"  {name}")]
    (path / "checksums.sha256").write_text("\n".join([*lines, f"{hashlib.sha256(data).hexdigest()}  {name}"]) + "\n")


def _config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    _rewrite(path, "config.json", json.dumps(cfg).encode())


def _artifact_probe(name, edit):
    def run(tmp):
        from advface_sdk import load_artifact

        path = _toy(tmp)
        edit(path, tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expect_error(lambda: load_artifact(path))
        run_cli(["info", path], tmp)
    probe("edited artifacts", name)(run)


def _passthrough(path, tmp):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_hardening import _passthrough_onnx

    _rewrite(path, "generator.onnx", _passthrough_onnx(16))


def _weights(path, change):
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    state = change(st_load((path / "generator.safetensors").read_bytes()))
    _rewrite(path, "generator.safetensors", st_save(state))
    return state


def _zero_weights(path, tmp):
    from advface_sdk._onnx_export import generator_to_onnx

    state = _weights(path, lambda s: {k: np.zeros_like(v) for k, v in s.items()})
    _rewrite(path, "generator.onnx", generator_to_onnx(state, json.loads((path / "config.json").read_text())).SerializeToString())


def _flip(path, tmp):
    data = bytearray((path / "generator.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (path / "generator.safetensors").write_bytes(bytes(data))


def _symlink(path, tmp):
    (tmp / "w.safetensors").write_bytes((path / "generator.safetensors").read_bytes())
    (path / "generator.safetensors").unlink()
    (path / "generator.safetensors").symlink_to(tmp / "w.safetensors")


def _manifest(entry):
    def edit(path, tmp):
        with open(path / "checksums.sha256", "a") as fh:
            fh.write(f"{hashlib.sha256(b'').hexdigest()}  {entry}\n")
    return edit


def _signed_then_edited(path, tmp):
    from facecore.signing import generate_key, sign_artifact

    generate_key(tmp / "k.pem")
    sign_artifact(path, tmp / "k.pem", "me")
    _config(path, budget=0.5)


for _name, _edit in {
    "flipped byte in the weights": _flip,
    "pass-through generator.onnx, checksums recomputed": _passthrough,
    "garbage generator.onnx, checksums recomputed": lambda p, t: _rewrite(p, "generator.onnx", b"\x08\x07junk" * 20),
    "budget 0": lambda p, t: _config(p, budget=0),
    "budget 100": lambda p, t: _config(p, budget=100),
    "hidden missing": lambda p, t: _rewrite(p, "config.json", b'{"format": "advface-protector/1", "dim": 16, "budget": 0.4}'),
    "config is []": lambda p, t: _rewrite(p, "config.json", b"[]"),
    "config is not JSON": lambda p, t: _rewrite(p, "config.json", b"{budget: 0.4"),
    "NaN weight": lambda p, t: _weights(p, lambda s: {**s, "net.0.weight": np.full_like(s["net.0.weight"], np.nan)}),
    "missing tensor": lambda p, t: _weights(p, lambda s: {k: v for k, v in s.items() if k != "net.4.bias"}),
    "all-zero weights with a matching graph": _zero_weights,
    "manifest lists /etc/passwd": _manifest("/etc/passwd"),
    "manifest lists ../..": _manifest("../../x"),
    "symlink out of the folder": _symlink,
    "no checksums file": lambda p, t: (p / "checksums.sha256").unlink(),
    "unlisted JSON added (scheduler_config.json)": lambda p, t: (p / "scheduler_config.json").write_text("{}"),
    "signed, then edited with recomputed checksums": _signed_then_edited,
}.items():
    _artifact_probe(_name, _edit)


@probe("edited artifacts", "unsigned artifact with require_signature")
def _(tmp):
    from advface_sdk import load_artifact

    path = _toy(tmp)
    expect_error(lambda: load_artifact(path, require_signature=True))


@probe("edited artifacts", "shipped defaults verify under the pinned key")
def _(tmp):
    from advface_sdk import load_artifact

    for name in ("fr128", "fr512"):
        if not load_artifact(name, require_signature=True).signature.verified:
            raise Defect(f"{name} not verified")


@probe("edited artifacts", "ONNX recognizer with external data ../x")
def _(tmp):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facecore.recognizers.onnx_recognizer import OnnxRecognizer

    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../x")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    (tmp / "m").mkdir()
    onnx.save(helper.make_model(graph), tmp / "m" / "r.onnx")
    expect_error(lambda: OnnxRecognizer(tmp / "m" / "r.onnx"))


@probe("edited artifacts", "model_index.json = [] (JSON type check)")
def _(tmp):
    from facecore.artifacts import read_json

    (tmp / "model_index.json").write_text("[]")
    expect_error(lambda: read_json(tmp, "model_index.json"))


@probe("edited artifacts", "backend that ignores the weights")
def _(tmp):
    from advface_sdk.backends import register_backend

    register_backend("identity-probe", lambda artifact, device="cpu": type("B", (), {"run": staticmethod(lambda x: x)})())
    expect_error(lambda: protector(backend="identity-probe"))


_OPENED: list[str] | None = None  # paths opened while a probe watches (an audit hook: Python's own open events)
_PROBE_HOOK: list[bool] = []  # the hook is added once (audit hooks cannot be removed)


def _watch_opens(event, args):
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


def _gallery_edit(name, edit):
    def run(tmp):
        global _OPENED
        from advface_sdk import Gallery
        from facecore.errors import ArtifactError

        folder = tmp / "g"
        with Gallery.create(folder) as g:
            g.enroll([f"p{i}" for i in range(6)], emb(6))
        manifest, state = (json.loads((folder / f).read_text()) for f in ("gallery.json", "state.json"))
        (tmp / "outside.npz").write_bytes((folder / state["segments"][0]["file"]).read_bytes())  # its sha256 matches
        edit(manifest, state)
        for f, record in (("gallery.json", manifest), ("state.json", state)):
            (folder / f).write_text(json.dumps(record))
        if not _PROBE_HOOK:
            sys.addaudithook(_watch_opens)
            _PROBE_HOOK.append(True)
        _OPENED = []
        try:
            expect_error(lambda: Gallery.open(folder).search(emb(2), k=1), ArtifactError)
        finally:
            opened, _OPENED = _OPENED, None
        if any(Path(o).name == "outside.npz" for o in opened):  # the copy next to the folder
            raise Defect("read the segment outside the gallery folder")
        run_cli(["gallery", "info", folder], tmp)
    probe("edited artifacts", name)(run)


_gallery_edit('gallery.json "dim": "abc"', lambda m, s: m.update(dim="abc"))
_gallery_edit("state.json segment renamed ../outside.npz (sha256 matches)",
              lambda m, s: s["segments"][0].update(file="../outside.npz"))


@probe("edited artifacts", "signature.json with an edited key_id (the pinned key's)")
def _(tmp):
    from advface_sdk import load_artifact
    from facecore.errors import SignatureError
    from facecore.signing import generate_key, sign_artifact

    path = _toy(tmp)
    generate_key(tmp / "k.pem")
    sign_artifact(path, tmp / "k.pem", "me")
    record = json.loads((path / "signature.json").read_text())
    pinned = json.loads((load_artifact("fr128").directory / "signature.json").read_text())["key_id"]
    (path / "signature.json").write_text(json.dumps({**record, "key_id": pinned}))
    expect_error(lambda: load_artifact(path), SignatureError)
    run_cli(["info", path], tmp)


# --- signals -------------------------------------------------------------------------------------------------------------------
def _signal_probe(sig, suffix):
    def run(tmp):
        src = tmp / "in.npy"
        np.save(src, emb(60000))
        dst = tmp / f"out{suffix}"
        proc = subprocess.Popen([*CLI, "protect", src, dst, "--chunk", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # background shells ignore it
        deadline = time.time() + 120
        while not list(tmp.glob(f".out{suffix}.tmp*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            raise Defect("finished before the signal")
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        if sig == signal.SIGKILL:  # debris is allowed until the next run, which must remove it
            np.save(tmp / "small.npy", emb(2))
            run_cli(["protect", tmp / "small.npy", dst], tmp, expect_ok=True)
        if proc.returncode == 0 or list(tmp.glob(".*tmp*")):
            raise Defect(f"exit {proc.returncode}, debris {[p.name for p in tmp.glob('.*tmp*')]}")
    probe("signals", f"{signal.Signals(sig).name} during protect to {suffix}")(run)


for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
    for _suffix in (".npy", ".npz"):
        _signal_probe(_sig, _suffix)


def _tiny_pipeline(folder: Path) -> Path:
    """A randomly initialised VIGFace pipeline of 16x16 faces (seconds per shard on one core), saved to ``folder``."""
    from conftest import tiny_vigface_pipeline

    tiny_vigface_pipeline().save_pretrained(folder)
    return folder


@probe("signals", "SIGTERM during vigface-cli synthesize, then the same command resumes")
def _(tmp):
    out = tmp / "out"
    args = [sys.executable, "-m", "vigface_sdk", "synthesize", "--pipeline", _tiny_pipeline(tmp / "pipe"), "-n", 40, "-m", 2,
            "--steps", 2, "--shard-size", 1, "--device", "cpu", "-q", "--out", out]
    proc = subprocess.Popen([*map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(out.glob(".shards/*.json"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        raise Defect(f"finished (exit {proc.returncode}) before the signal")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    debris = [p.name for p in out.rglob("*") if ".tmp" in p.name]
    if (proc.returncode in (0, -signal.SIGTERM) or len(lines) != 1 or not lines[0].startswith("error:") or debris
            or (out / "manifest.jsonl").exists()):
        raise Defect(f"exit {proc.returncode}, stderr {err.strip()[-200:]!r}, debris {debris}")
    rerun = subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=300)
    rows = (out / "manifest.jsonl").read_text().splitlines() if (out / "manifest.jsonl").exists() else []
    if rerun.returncode != 0 or len(rows) != 80 or [p.name for p in out.rglob("*") if ".tmp" in p.name]:
        raise Defect(f"rerun: exit {rerun.returncode}, {len(rows)} manifest rows, stderr {rerun.stderr.strip()[-200:]!r}")


# --- full disk -----------------------------------------------------------------------------------------------------------------
def _disk_probe(name, args_of):
    def run(tmp):
        np.save(tmp / "in.npy", emb(8000))
        np.savez(tmp / "in.npz", embeddings=emb(8000), relpaths=np.asarray(["x"] * 8000))
        (tmp / "o").mkdir()
        run_cli(args_of(tmp), tmp / "o", limit=1 << 20)
        if list((tmp / "o").iterdir()):
            raise Defect(f"left {[p.name for p in (tmp / 'o').iterdir()]}")
    probe("full disk", name)(run)


_disk_probe("protect .npy → .npy", lambda t: ["protect", t / "in.npy", t / "o" / "x.npy"])
_disk_probe("protect .npy → .npz", lambda t: ["protect", t / "in.npy", t / "o" / "x.npz"])
_disk_probe("protect .npz → .npz (members copied)", lambda t: ["protect", t / "in.npz", t / "o" / "x.npz"])
_disk_probe("export-onnx (fr512, 1.5 MB)", lambda t: ["export-onnx", "fr512", "-o", t / "o" / "g.onnx"])


@probe("full disk", "atomic_save_npz under a file-size limit")
def _(tmp):
    code = ("import numpy as np, sys\nfrom facecore.embeddings import atomic_save_npz\nfrom facecore.errors import DataError\n"
            f"try:\n    atomic_save_npz({str(tmp / 'o' / 'e.npz')!r}, x=np.ones((1000, 1000)))\n"
            "except DataError as e:\n    print('error:', e, file=sys.stderr); sys.exit(2)\n")
    (tmp / "o").mkdir()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)))
    if proc.returncode != 2 or list((tmp / "o").iterdir()):
        raise Defect(f"exit {proc.returncode} {proc.stderr[-200:]!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Also write the table (markdown) here.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Print each probe.")
    parser.add_argument("--only", default=None, help="Run one category only (e.g. signals).")
    args = parser.parse_args()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    rows: dict[str, list[int]] = {}
    defects = []
    start = time.time()
    for category, name, func in PROBES:
        if args.only and category != args.only:
            continue
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    func(Path(tmp))
                ok = True
            except Defect as exc:
                ok, why = False, str(exc)
            except Exception as exc:  # a crash of the probe itself counts as a defect of the SDK
                ok, why = False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        tried, handled = rows.setdefault(category, [0, 0])
        rows[category] = [tried + 1, handled + ok]
        if not ok:
            defects.append(f"{category} / {name}: {why}")
        if args.verbose:
            print(f"{'ok    ' if ok else 'DEFECT'} {time.time() - t0:6.1f}s {category} / {name}", flush=True)
    lines = ["| category | tried | handled | defects |", "|---|---:|---:|---:|"]
    for category, (tried, handled) in rows.items():
        lines.append(f"| {category} | {tried} | {handled} | {tried - handled} |")
    total, ok_total = sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())
    lines.append(f"| **all** | **{total}** | **{ok_total}** | **{total - ok_total}** |")
    table = "\n".join(lines)
    print(table)
    for d in defects:
        print("DEFECT", d)
    print(f"({time.time() - start:.0f} s)")
    if args.out:
        args.out.write_text("# Fault injection (issue 13)\n\n`python tests/fault_injection.py` — every probe either gets the "
                            "right result or a typed error (CLI: exit 2, one `error:` line, no output, no temp file).\n\n"
                            + table + "\n" + "".join(f"\nDEFECT {d}" for d in defects) + "\n")
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
