"""Regression tests of issue 13 (hardening): one group per defect, real artifacts, real ONNX Runtime, real subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from conftest import sigterm_once_writing
from advface_sdk import Protector, load_artifact, save_artifact
from advface_sdk import protector as protector_module
from advface_sdk.backends import register_backend
from advface_sdk.cli import main as cli
from advface_sdk.models.generator import NoiseGenerator
from facecore.artifacts import read_json, verify_artifact, write_artifact
from facecore.errors import (ArtifactError, BackendUnavailableError, DegenerateImageWarning, InvalidInputError, ModelLoadError, NonFiniteError, SignatureError, UnsignedArtifactWarning)
from facecore.signing import generate_key

FR128_FINGERPRINT = load_artifact("fr128").recognizer_fingerprint
CLI = [sys.executable, "-m", "advface_sdk"]
pytestmark = pytest.mark.filterwarnings("ignore::facecore.errors.UnsignedArtifactWarning")


def _toy(tmp_path, name="art", budget=0.4) -> Path:
    torch.manual_seed(0)
    return save_artifact(NoiseGenerator(16, hidden=8, budget=budget), tmp_path / name, {"name": "toy", "fingerprint": "f"})


def _rewrite(path: Path, name: str, data: bytes) -> None:
    """Edit a file of an artifact and recompute its checksum, as an attacker would."""
    (path / name).write_bytes(data)
    lines = [line for line in (path / "checksums.sha256").read_text().splitlines() if not line.endswith(f"  {name}")]
    lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    (path / "checksums.sha256").write_text("\n".join(lines) + "\n")


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    _rewrite(path, "config.json", json.dumps(cfg).encode())


def _passthrough_onnx(dim: int) -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", ["embeddings"], ["protected"])], "g",
                              [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("protected", TensorProto.FLOAT, ["batch", dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# 1 -- protection cannot be switched off; signatures ----------------------------------------------------------------
def test_passthrough_onnx_with_recomputed_checksums_is_refused(tmp_path):
    path = _toy(tmp_path)
    _rewrite(path, "generator.onnx", _passthrough_onnx(16))
    with pytest.raises(ArtifactError, match="not the graph of generator.safetensors"):
        load_artifact(path)
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 2 and res.output.startswith("error:")


@pytest.mark.parametrize("edit,match", [
    ({"budget": 0}, "outside"), ({"budget": 100}, "outside"), ({"budget": float("nan")}, "outside"),
    ({"budget": 1e-6}, "outside"), ({"hidden": 0}, "must lie in"), ({"budget": "x"}, "must be"),
])
def test_config_ranges_are_checked(tmp_path, edit, match):
    path = _toy(tmp_path)
    _edit_config(path, **edit)
    with pytest.raises(ArtifactError, match=match):
        load_artifact(path)


@pytest.mark.parametrize("damage", ["nan", "missing", "zero"])
def test_damaged_weights_are_refused(tmp_path, damage):
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    path = _toy(tmp_path)
    state = st_load((path / "generator.safetensors").read_bytes())
    if damage == "nan":
        state["net.2.weight"][0, 0] = np.nan
    elif damage == "missing":
        del state["net.4.bias"]
    else:  # a generator producing no noise: the graph is rebuilt from it too, so only the probe check can catch it
        state = {k: np.zeros_like(v) for k, v in state.items()}
        from advface_sdk._onnx_export import generator_to_onnx

        cfg = json.loads((path / "config.json").read_text())
        _rewrite(path, "generator.onnx", generator_to_onnx(state, cfg).SerializeToString())
    _rewrite(path, "generator.safetensors", st_save(state))
    with pytest.raises(ArtifactError, match="NaN|missing|budget"):
        load_artifact(path)


def test_every_backend_is_checked_against_the_weights_on_the_probe_set(tmp_path):
    class PassThrough:
        def __init__(self, artifact, device="cpu"):
            pass

        def run(self, x):
            return x

    register_backend("passthrough-test", PassThrough)
    with pytest.raises(ArtifactError, match="does not compute the protection"):
        Protector("fr128", backend="passthrough-test")
    art = load_artifact("fr128")  # the numpy reference is the torch module's math
    x = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32) * 5
    with torch.no_grad():
        ref = art.build_generator()(torch.from_numpy(x)).numpy()
    assert np.abs(art.reference(x) - ref).max() < 1e-4


def test_signatures(tmp_path):
    key = tmp_path / "keys" / "me.pem"
    generate_key(key)
    assert key.stat().st_mode & 0o777 == 0o600
    path = _toy(tmp_path)
    with pytest.warns(UnsignedArtifactWarning, match="unsigned"):
        load_artifact(path)
    with pytest.raises(SignatureError, match="unsigned"):
        load_artifact(path, require_signature=True)
    res = CliRunner().invoke(cli, ["sign", str(path), "--key", str(key), "--signer", "me"])
    assert res.exit_code == 0, res.output
    with pytest.warns(UnsignedArtifactWarning, match="not trusted"):
        assert load_artifact(path).signature.status == "untrusted"
    art = load_artifact(path, trust=[str(key)], require_signature=True)
    assert art.signature.verified
    res = CliRunner().invoke(cli, ["info", str(path), "--trust", str(key)])
    assert res.exit_code == 0 and "signature: verified" in res.output
    _edit_config(path, budget=0.5)  # a consistent edit with recomputed checksums breaks the signature
    with pytest.raises(SignatureError, match="modified after it was signed"):
        load_artifact(path, trust=[str(key)])


@pytest.mark.parametrize("name", ["fr128", "fr512"])
def test_shipped_defaults_are_signed_by_the_pinned_key(name):
    art = load_artifact(name, require_signature=True)
    assert art.signature.verified and art.signature.signer == "face-privacy-sdk release key"
    res = CliRunner().invoke(cli, ["info", name])
    assert res.exit_code == 0 and "signature: verified: signed by face-privacy-sdk release key" in res.output


# 2 -- no path is followed outside the artifact ------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside.json", "sub/../../outside.json", "~/x"])
def test_manifest_paths_outside_the_folder_are_refused(tmp_path, entry):
    path = _toy(tmp_path)
    (tmp_path / "outside.json").write_text("{}")
    with open(path / "checksums.sha256", "a") as fh:
        fh.write(f"{'0' * 64}  {entry}\n")
    with pytest.raises(ArtifactError, match="refusing path"):
        load_artifact(path)


def test_symlinks_out_of_the_artifact_are_refused(tmp_path):
    path = _toy(tmp_path)
    outside = tmp_path / "weights.safetensors"
    outside.write_bytes((path / "generator.safetensors").read_bytes())
    (path / "generator.safetensors").unlink()
    (path / "generator.safetensors").symlink_to(outside)
    with pytest.raises(ArtifactError, match="outside the artifact|symbolic link"):
        load_artifact(path)


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    from onnx import numpy_helper

    from facecore.recognizers.onnx_recognizer import OnnxRecognizer

    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(graph), folder / "rec.onnx")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        OnnxRecognizer(folder / "rec.onnx")


# 3 -- protect keeps every .npz member and checks the fingerprint ------------------------------------------------------
def test_cli_protect_keeps_npz_members_and_checks_the_fingerprint(tmp_path):
    emb = np.random.default_rng(0).standard_normal((50, 128)).astype(np.float32)
    path = tmp_path / "e.npz"
    members = {"embeddings": emb, "relpaths": np.asarray([f"a/{i}.jpg" for i in range(50)]), "labels": np.arange(50),
               "identities": np.asarray(["a"]), "fingerprint": np.asarray(FR128_FINGERPRINT)}
    np.savez_compressed(path, **members)
    res = CliRunner().invoke(cli, ["protect", str(path), str(path)])  # OUT == IN
    assert res.exit_code == 0, res.output
    with np.load(path) as z:
        assert sorted(z.files) == sorted(members)
        for k in members:
            if k != "embeddings":
                np.testing.assert_array_equal(z[k], members[k])
        np.testing.assert_allclose(z["embeddings"], Protector("fr128").protect(emb), atol=1e-6)
    np.savez(path, embeddings=emb, fingerprint=np.asarray("0123456789abcdef"))
    res = CliRunner().invoke(cli, ["protect", str(path), str(tmp_path / "o.npz")])
    assert res.exit_code == 2 and "embedded by recognizer 0123456789abcdef" in res.output


# 4 -- full disk -----------------------------------------------------------------------------------------------------------
def _under_file_size_limit(nbytes: int, argv: list[str]) -> list[str]:
    """``argv`` run by a launcher that sets ``RLIMIT_FSIZE`` and execs it. Not a ``preexec_fn``: that runs Python's
    at-fork handlers in the child, and gRPC's (loaded here by the Milvus Lite tests) abort it while its threads run."""
    launcher = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, "
                f"({nbytes}, {nbytes})); os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", launcher, *argv]


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_full_disk_gives_one_error_line_and_no_temp_file(tmp_path, suffix):
    src = tmp_path / "in.npy"
    np.save(src, np.random.default_rng(0).standard_normal((8000, 128)).astype(np.float32))  # 4 MB
    dst = tmp_path / "out" / f"o{suffix}"
    dst.parent.mkdir()
    proc = subprocess.run(_under_file_size_limit(1 << 20, [*CLI, "protect", str(src), str(dst), "--chunk", "1000"]),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1 and "limit" in proc.stderr
    assert list(dst.parent.iterdir()) == []


# 5 -- signals and stale temp files ----------------------------------------------------------------------------------------
def test_sigterm_removes_the_temp_file_and_stale_ones_are_cleaned(tmp_path):
    src = tmp_path / "in.npy"
    np.save(src, np.random.default_rng(0).standard_normal((60000, 128)).astype(np.float32))
    dst = tmp_path / "out.npy"
    code, err = sigterm_once_writing([*CLI, "protect", str(src), str(dst), "--chunk", "8"], tmp_path, ".out.npy.tmp*")
    assert code != 0 and err.startswith("error:")
    assert not dst.exists() and not list(tmp_path.glob(".out.npy.tmp*"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.npy.tmp{dead.pid}"
    stale.write_bytes(b"x" * 1000)  # what SIGKILL leaves behind
    alive = tmp_path / f".out.npy.tmp{os.getppid()}"
    alive.write_bytes(b"x")
    small = tmp_path / "small.npy"
    np.save(small, np.ones((4, 128), np.float32))
    assert CliRunner().invoke(cli, ["protect", str(small), str(dst)]).exit_code == 0
    assert not stale.exists() and alive.exists()


# 6 -- row numbers -----------------------------------------------------------------------------------------------------------
def test_bad_rows_are_named_by_their_row_in_the_whole_input(tmp_path):
    x = np.ones((70000, 128), np.float32)
    x[68003] = np.nan
    src = tmp_path / "in.npy"
    np.save(src, x)
    res = CliRunner().invoke(cli, ["protect", str(src), str(tmp_path / "o.npy")])
    assert res.exit_code == 2 and "[68003]" in res.output
    x[68003] = 1
    x[9] = 0
    with pytest.raises(InvalidInputError, match=r"\[9\]"):
        Protector("fr128", batch_size=4).protect(x[:20])
    with pytest.raises(InvalidInputError, match=r"\[9\]"):
        Protector("fr128", batch_size=4).protect(torch.from_numpy(x[:20]))


# 7 -- never non-finite output ----------------------------------------------------------------------------------------------
def test_huge_inputs_never_come_back_non_finite():
    p = Protector("fr128")
    x = np.random.default_rng(0).standard_normal((8, 128))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    big = (unit * 1e20).astype(np.float32)
    out = p.protect(big)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out / 1e20, p.protect(unit.astype(np.float32)), atol=1e-5)
    assert np.isfinite(p.protect(torch.from_numpy(big)).numpy()).all()
    h = np.full((2, 128), 60000, np.float16)
    h[:, ::2] = -60000
    with pytest.raises(NonFiniteError, match="overflow float16"):
        p.protect(h)
    assert np.isfinite(p.protect((unit * 100).astype(np.float16))).all()


# 8 -- no silent CPU fallback -----------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without a GPU")
def test_cuda_without_gpu_is_refused():
    with pytest.raises(BackendUnavailableError, match="GPU|CUDA"):
        Protector("fr128", device="cuda")
    with pytest.raises(BackendUnavailableError):
        protector_module.protect(np.ones((1, 128), np.float32), device="cuda")
    res = CliRunner().invoke(cli, ["protect", "x.npy", "y.npy", "--device", "cuda"])
    assert res.exit_code == 2 and res.output.startswith("error:")


# 9 -- typed errors instead of tracebacks ------------------------------------------------------------------------------------
def test_typed_errors_for_bad_arguments_and_tensors():
    with pytest.raises(InvalidInputError, match="model must be"):
        Protector(None)
    with pytest.raises(InvalidInputError, match="batch_size"):
        Protector("fr128", batch_size="a")
    with pytest.raises(InvalidInputError, match="takes no option"):
        Protector("fr128", no_such_option=1)  # at construction, not on the first call
    p = Protector("fr128")
    with pytest.raises(InvalidInputError, match="dense"):
        p.protect(torch.ones(2, 128).to_sparse())
    with pytest.raises(InvalidInputError, match="dense"):
        p.protect(torch.empty(2, 128, device="meta"))
    res = CliRunner().invoke(cli, ["train-generator", "p.npz", "--shadow", "s", "-o", "o", "--seed", "-1"])
    assert res.exit_code == 2 and "--seed" in res.output


def test_denoise_prior_needs_a_face_prior(tmp_path):
    (tmp_path / "p.npz").write_bytes(b"")
    res = CliRunner().invoke(cli, ["train-generator", str(tmp_path / "p.npz"), "--shadow", str(tmp_path), "-o",
                                   str(tmp_path / "o"), "--denoise-prior", "64"])
    assert res.exit_code == 2 and "--denoise-prior needs --face-prior" in res.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("config", [b"[]", b"{}", b'{"format": "advface-protector/1", "dim": 16, "budget": 0.4}'])
def test_typed_errors_for_bad_configs(tmp_path, config):
    path = _toy(tmp_path)
    _rewrite(path, "config.json", config)
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_typed_errors_for_garbage_onnx_and_json_of_the_wrong_type(tmp_path):
    path = _toy(tmp_path)
    _rewrite(path, "generator.onnx", b"\x08\x07garbage" * 10)
    with pytest.raises(ArtifactError, match="not a valid ONNX model|not the graph"):
        load_artifact(path)
    (tmp_path / "index.json").write_text("[]")  # model_index.json = [] for the VIGFace pipeline
    with pytest.raises(ArtifactError, match="must hold a JSON object"):
        read_json(tmp_path, "index.json")


@pytest.mark.parametrize("content,match", [(b"", "not a NumPy array file"), (b"hello, world\n" * 5, "not a NumPy array file"),
                                           (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'", "damaged"),
                                           ])
def test_bad_npy_files_give_one_error_line(tmp_path, content, match):
    src = tmp_path / "in.npy"
    src.write_bytes(content)
    proc = subprocess.run([*CLI, "protect", str(src), str(tmp_path / "o.npy")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and match in proc.stderr
    assert "Aborted" not in proc.stderr + proc.stdout and "pickled" not in proc.stderr


def _recognizer_onnx(path: Path, output: str) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 112, 112])
    if output == "image":
        nodes, y = [helper.make_node("Identity", ["input"], ["out"])], [1, 3, 112, 112]
    else:  # zeros: ReduceMean over the image times 0
        nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
                 helper.make_node("Mul", ["m", "zero"], ["out"])]
        y = [1, 3]
    inits = [onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    graph = helper.make_graph(nodes, "rec", [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, y)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_recognizers_that_output_images_or_zeros_are_refused(tmp_path):
    from facecore.recognizers.onnx_recognizer import OnnxRecognizer

    with pytest.raises(ModelLoadError, match="not \\(N, D\\) embeddings"):
        OnnxRecognizer(_recognizer_onnx(tmp_path / "img.onnx", "image"))
    rec = OnnxRecognizer(_recognizer_onnx(tmp_path / "zero.onnx", "zeros"))
    with pytest.raises(ModelLoadError, match="all-zero embeddings"):
        rec.embed(np.full((2, 112, 112, 3), 128, np.uint8))


# 10 -- degenerate images are flagged; uncovered configs are refused ------------------------------------------------------
def test_degenerate_images_are_flagged_per_image(tmp_path):
    import cv2

    from facecore.images import read_image

    cv2.imwrite(str(tmp_path / "tiny.png"), np.full((1, 1, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((112, 112, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "huge.png"), np.zeros((6000, 6000, 3), np.uint8))
    face = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "ok.png"), face)
    for name in ("tiny", "black", "huge"):
        with pytest.warns(DegenerateImageWarning, match=name):
            assert read_image(tmp_path / f"{name}.png", (112, 112)).shape == (112, 112, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateImageWarning)
        read_image(tmp_path / "ok.png")


def test_json_files_not_covered_by_the_manifest_are_refused(tmp_path):
    path = write_artifact(tmp_path / "sched", {"weights.bin": b"x", "config.json": {"a": 1}})
    verify_artifact(path)
    (path / "scheduler_config.json").write_text('{"num_train_timesteps": 3}')  # edited/added, no checksum
    with pytest.raises(ArtifactError, match="not covered"):
        verify_artifact(path)


# 11 -- bounded memory ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_extra_memory_is_bounded_by_the_batch(dtype):
    import tracemalloc

    x = np.random.default_rng(0).standard_normal((200_000, 128)).astype(dtype)
    p = Protector("fr128", batch_size=4096)
    tracemalloc.start()
    out = p.protect(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    extra = peak - out.nbytes
    assert extra < 16 * 4096 * 128 * 8, f"{extra / 1e6:.1f} MB beyond the output"  # a few batch copies, not the input
    assert out.dtype == dtype and np.isfinite(out).all()


# 12 -- permissions and one Protector per key ----------------------------------------------------------------------------------
def test_artifact_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = _toy(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o755


def test_concurrent_first_calls_build_one_protector(tmp_path, monkeypatch):
    path = _toy(tmp_path)
    built = []
    original = Protector.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Protector, "__init__", counting)
    x = np.ones((4, 16), np.float32)
    barrier = threading.Barrier(8)
    results, errors = [], []

    def call():
        barrier.wait()
        try:
            results.append(protector_module.protect(x, model=str(path)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(built) == 1 and len(results) == 8
    protector_module._CACHE.pop((str(path), "auto", "cpu"), None)

