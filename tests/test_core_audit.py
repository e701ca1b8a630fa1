"""Audit of bad-input and failure handling in facecore (recognizers, registry, artifacts, signing, images) and the
protector's export helpers: one test per defect found, real ONNX Runtime and real models, no mocks.

Small recognizers are built here with ``onnx.helper`` so the error paths run on ONNX Runtime in milliseconds;
plug-ins are real distributions (a ``.dist-info`` folder on ``sys.path``) found through ``importlib.metadata``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from advface_sdk import _tensorrt_build as tb
from advface_sdk._onnx_export import generator_to_onnx, probe_to_onnx
from advface_sdk.artifact import load_artifact
from advface_sdk.cli import main as cli
from facecore.artifacts import CHECKSUMS, read_json, write_artifact
from facecore.errors import (ArtifactError, BackendUnavailableError, InvalidInputError, ModelLoadError,
                             SignatureError)
from facecore.recognizers import RECOGNIZERS, Preprocessing, create_recognizer
from facecore.recognizers.onnx_recognizer import OnnxRecognizer
from facecore.signing import check_signature, generate_key, sign_artifact

pytestmark = pytest.mark.filterwarnings("ignore::facecore.errors.UnsignedArtifactWarning")


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def _recognizer(path: Path, in_shape=("N", 3, 112, 112), out_shape=("N", 8), dtype=TensorProto.FLOAT,
                flatten_pixels: bool = False, two_inputs: bool = False, input_type: int | None = None) -> Path:
    """A tiny linear recognizer: mean colour (or every pixel with ``flatten_pixels``) times a fixed matrix; an
    ``input_type`` other than ``dtype`` is cast inside the graph."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(0)
    width = 3 * 112 * 112 if flatten_pixels else 3
    inits = [numpy_helper.from_array(rng.standard_normal((width, 8)).astype(np_type), "w"),
             numpy_helper.from_array(np.linspace(1, 2, 8).astype(np_type), "b"),
             numpy_helper.from_array(np.asarray([0, -1], np.int64), "flat")]
    first = (helper.make_node("Reshape", ["x", "flat"], ["f"]) if flatten_pixels else
             [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"])])
    nodes = [*(first if isinstance(first, list) else [first]), helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y" if not two_inputs else "y0"])]
    inputs = [helper.make_tensor_value_info("x", input_type or dtype, list(in_shape))]
    if input_type not in (None, dtype):
        nodes[0].input[0] = "xc"
        nodes.insert(0, helper.make_node("Cast", ["x"], ["xc"], to=dtype))
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("bias", dtype, ["N", 8]))
        nodes.append(helper.make_node("Add", ["y0", "bias"], ["y"]))
    graph = helper.make_graph(nodes, "rec", inputs, [helper.make_tensor_value_info("y", dtype, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# 1 -- a plug-in that fails to import: a typed error naming it, the others still listed ------------------------------------
@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    """A distribution on sys.path whose entry points fail in every way a plug-in can."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [facepriv.recognizers]
        raises-at-import = broken_rt:Rec
        syntax-error = broken_syntax:Rec
        not-callable = broken_ok:VALUE
        builds-junk = broken_ok:junk
        [facepriv.backends]
        raises-at-import = broken_rt:Rec
        """))
    (tmp_path / "broken_rt.py").write_text('raise RuntimeError("needs a GPU driver")\n')
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "broken_ok.py").write_text('VALUE = 3\n\ndef junk(**kwargs):\n    return "not a recognizer"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    for name in ("raises-at-import", "syntax-error", "not-callable", "builds-junk"):
        RECOGNIZERS.unregister(name)
    for module in ("broken_rt", "broken_syntax", "broken_ok"):
        sys.modules.pop(module, None)


def test_plugins_that_fail_to_import_get_a_typed_error_naming_them(broken_plugins, tmp_path):
    for name, match in [("raises-at-import", "RuntimeError: needs a GPU driver"), ("syntax-error", "SyntaxError"),
                        ("not-callable", "not a class or a factory")]:
        with pytest.raises(InvalidInputError, match=f"recognizer '{name}'.*broken-plugin.*{match}"):
            create_recognizer(name)
    with pytest.raises(ModelLoadError, match="built a str, not a Recognizer"):
        create_recognizer("builds-junk")
    from advface_sdk import Protector

    with pytest.raises(BackendUnavailableError, match="backend 'raises-at-import' cannot be imported here"):
        Protector("fr128", backend="raises-at-import").protect(np.ones((1, 128), np.float32))
    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code == 0 and "raises-at-import (broken-plugin)" in res.output and "fr128" in res.output
    res = CliRunner().invoke(cli, ["embed", str(tmp_path), "-r", "raises-at-import", "-o", str(tmp_path / "e.npz")])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("error: recognizer 'raises-at-import'")


# 2 -- what is not a recognizer is refused at load, not taken for a 1-d one ------------------------------------------------
def test_a_detector_with_dynamic_input_is_not_taken_for_a_recognizer(shared):
    # SCRFD-2.5G: input [1, 3, ?, ?], first output [anchors, 1]: once accepted as a recognizer of dim 1
    with pytest.raises(ModelLoadError, match="not one embedding per crop"):
        create_recognizer(str(shared / "models" / "scrfd" / "scrfd_2.5g_bnkps.onnx"))


def test_models_with_extra_inputs_or_non_float_inputs_are_refused_and_fp16_runs(tmp_path):
    with pytest.raises(ModelLoadError, match="one input"):
        OnnxRecognizer(_recognizer(tmp_path / "two.onnx", two_inputs=True))
    with pytest.raises(ModelLoadError, match="tensor\\(int32\\), not a float image tensor"):
        OnnxRecognizer(_recognizer(tmp_path / "int.onnx", input_type=TensorProto.INT32))
    fp16 = OnnxRecognizer(_recognizer(tmp_path / "fp16.onnx", dtype=TensorProto.FLOAT16))  # an fp16 export
    ref = OnnxRecognizer(_recognizer(tmp_path / "fp32.onnx")).embed(_crops(3))
    out = fp16.embed(_crops(3))
    assert out.dtype == np.float32 and out.shape == (3, 8)
    np.testing.assert_allclose(out, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_runtime_failures_are_typed_and_fixed_batches_are_measured_whole(tmp_path):
    rec = create_recognizer(str(_recognizer(tmp_path / "pixels.onnx", ("N", 3, "h", "w"), flatten_pixels=True)),
                            input_size=(100, 100))  # the graph only takes 112x112 crops
    with pytest.raises(ModelLoadError, match="onnxruntime failed"):
        rec.embed(_crops(2)[:, :100, :100])
    fixed = OnnxRecognizer(_recognizer(tmp_path / "fixed4.onnx", (4, 3, 112, 112), (4, "d")))  # width measured
    assert fixed.fixed_batch == 4 and fixed.dim == 8
    out = fixed.embed(_crops(5))  # one full chunk of 4, one padded chunk
    np.testing.assert_allclose(out, OnnxRecognizer(_recognizer(tmp_path / "dyn.onnx")).embed(_crops(5)), rtol=1e-5)


# 3 -- preprocessing and arguments -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"mean": float("nan")}, "mean must be a finite number"),
    ({"std": float("inf")}, "std must be a finite number"),
    ({"mean": "127"}, "mean must be a finite number"),
    ({"input_size": (112,)}, "input_size must be two positive integers"),
    ({"input_size": "112"}, "input_size must be two positive integers"),
    ({"input_size": (0, 112)}, "input_size must be two positive integers"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"foo": 1}, "bad parameters for ONNX recognizer"),
])
def test_bad_preprocessing_and_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        create_recognizer(str(_recognizer(tmp_path / "r.onnx")), **kwargs)


def test_numpy_scalars_make_a_json_fingerprint(tmp_path):
    path = _recognizer(tmp_path / "r.onnx")
    a = OnnxRecognizer(path, Preprocessing("RGB", np.float32(127.5), np.float64(128.0), (np.int64(112), 112)))
    assert a.fingerprint == OnnxRecognizer(path, Preprocessing("RGB", 127.5, 128.0)).fingerprint


def test_a_provider_that_is_not_here_is_refused_not_replaced_by_the_cpu(tmp_path):
    path = _recognizer(tmp_path / "r.onnx")
    with pytest.warns(UserWarning), pytest.raises(BackendUnavailableError, match="refusing to fall back"):
        OnnxRecognizer(path, providers=["NoSuchExecutionProvider"])
    with pytest.warns(UserWarning):  # an explicit fallback in the list is the caller's choice
        rec = OnnxRecognizer(path, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert rec.session.get_providers() == ["CPUExecutionProvider"]


# 4 -- images --------------------------------------------------------------------------------------------------------------
def test_float_images_in_0_1_are_refused_not_truncated_to_black(tmp_path):
    rec = OnnxRecognizer(_recognizer(tmp_path / "r.onnx"))
    crops = _crops(3)
    with pytest.raises(InvalidInputError, match="whole values 0..255"):
        rec.embed(crops.astype(np.float32) / 255)
    np.testing.assert_array_equal(rec.embed(crops.astype(np.float32)), rec.embed(crops))  # whole floats are fine
    np.testing.assert_array_equal(rec.embed(c for c in crops), rec.embed(crops))  # so is a generator of crops


# 5 -- the torch copy computes what ONNX Runtime computes ------------------------------------------------------------------
def _pool_model(path: Path, avg_pads=(1, 1, 1, 1)) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.standard_normal((196, 8)).astype(np.float32) * 0.1, "fw")]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=list(avg_pads),
                              count_include_pad=1),
             helper.make_node("Flatten", ["ap"], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_to_torch_honours_ceil_mode_and_count_include_pad(tmp_path):
    rec = OnnxRecognizer(_pool_model(tmp_path / "pool.onnx"), Preprocessing("RGB", 0.0, 255.0))
    crops = _crops(3)
    rgb01 = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = rec.to_torch()(rgb01).numpy()
    ref = rec.embed(crops)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ModelLoadError, match="AveragePool \\(pads"):  # no torch equivalent: refused, not approximated
        OnnxRecognizer(_pool_model(tmp_path / "uneven.onnx", (0, 0, 1, 1))).to_torch()


def test_the_torch_copy_refuses_uint8_or_channels_last_images(fr128):
    module = fr128.to_torch()
    with pytest.raises(InvalidInputError, match="float RGB images in \\[0, 1\\]"):
        module(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))
    with pytest.raises(InvalidInputError, match="\\(N, 3, H, W\\)"):
        module(torch.zeros(1, 112, 112, 3))


# 6 -- artifacts: never replace what is not an artifact; deep JSON; signature edits -----------------------------------------
def test_saving_never_replaces_a_folder_or_file_that_is_not_an_artifact(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        write_artifact(work, {"config.json": {"a": 1}})
    assert (work / "thesis.tex").read_text() == "years of work"
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        write_artifact(work / "thesis.tex", {"config.json": {"a": 1}})
    assert (work / "thesis.tex").read_text() == "years of work" and sorted(p.name for p in work.iterdir()) == ["thesis.tex"]
    (tmp_path / "empty").mkdir()
    write_artifact(tmp_path / "empty", {"config.json": {"a": 1}})  # an empty folder, or a previous artifact, is fine
    write_artifact(tmp_path / "empty", {"config.json": {"a": 2}})
    assert read_json(tmp_path / "empty") == {"a": 2}


def test_deeply_nested_json_is_an_artifact_error(tmp_path):
    path = write_artifact(tmp_path / "a", {"config.json": {"a": 1}})
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_json(path, expect=list)


def _signed(tmp_path) -> tuple[Path, Path]:
    key = tmp_path / "me.pem"
    generate_key(key)
    path = write_artifact(tmp_path / "a", {"config.json": {"a": 1}})
    sign_artifact(path, key, "me")
    return path, key


def test_an_edited_signature_file_is_refused(tmp_path):
    path, _ = _signed(tmp_path)
    record = json.loads((path / "signature.json").read_text())
    (path / "signature.json").write_text(json.dumps({**record, "key_id": "0123456789abcdef"}))
    with pytest.raises(SignatureError, match="key_id"):
        check_signature(path, {})
    (path / "signature.json").unlink()
    (path / "signature.json").mkdir()
    with pytest.raises(SignatureError, match="malformed"):
        check_signature(path, {})


def test_a_failed_signature_write_leaves_no_temp_file(tmp_path):
    path, key = _signed(tmp_path)
    (path / "signature.json").unlink()
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)); "
            "from facecore.signing import sign_artifact; sign_artifact(sys.argv[1], sys.argv[2], 'me')")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(key)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "File too large" in proc.stderr
    assert sorted(p.name for p in path.iterdir()) == [CHECKSUMS, "config.json"]


# 7 -- export helpers and TensorRT sidecars ---------------------------------------------------------------------------------
def test_export_refuses_nan_fresh_noise_and_bad_arguments(tmp_path):
    key = tmp_path / "deploy.key"
    assert CliRunner().invoke(cli, ["keygen", "--model", "fr128", str(key)]).exit_code == 0
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(cli, ["export-onnx", "fr128", "-o", str(out), "--deployment-key", str(key),
                                   "--fresh-noise", "nan"])  # click's FloatRange lets NaN through
    assert res.exit_code == 2 and "fresh_noise" in res.output and not out.exists()
    art = load_artifact("fr128")
    for kwargs, match in [({"precision": "fp8"}, "precision"), ({"rotation": np.eye(64)}, "rotation"),
                          ({"rotation": np.full((128, 128), np.nan)}, "rotation"),
                          ({"rotation": np.eye(128), "fresh_noise": -0.1}, "fresh_noise")]:
        with pytest.raises(InvalidInputError, match=match):
            generator_to_onnx(art.state, art.config, **kwargs)
    with pytest.raises(InvalidInputError, match="rotation"):
        probe_to_onnx(np.ones((3, 4), np.float32))


@pytest.mark.parametrize("content", [
    b"[]", b'{"format": "advface-tensorrt-engine/1", "tensorrt_version": "10.0", "gpu": "H100"}', b"\xff\xfe"])
def test_damaged_tensorrt_sidecars_are_artifact_errors(tmp_path, content):
    engine = tmp_path / "p.engine"
    engine.write_bytes(b"engine")
    tb.sidecar_path(engine).write_bytes(content)
    with pytest.raises(ArtifactError):  # the backend then rebuilds a cached engine instead of failing
        meta = tb.read_sidecar(engine)
        tb.check_engine(meta, "10.0", {"name": "H100", "compute_capability": "9.0"})



def test_preprocessing_options_on_a_named_recognizer_are_one_clear_line(tmp_path):
    """``-r fr128 --channel-order BGR`` said "unexpected keyword argument 'channel_order'"; now it names the options."""
    result = CliRunner().invoke(cli, ["embed", str(tmp_path), "-r", "fr128", "--channel-order", "BGR", "--mean", "1",
                                       "-o", str(tmp_path / "x.npz")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --channel-order, --mean: for a raw .onnx recognizer only; 'fr128' brings "
                                     "its own preprocessing")


def test_replacing_an_artifact_puts_the_old_one_back_when_the_swap_fails(tmp_path, monkeypatch):
    """A failure between replace_dir's two renames (a signal, an error) restores the previous artifact."""
    from facecore import artifacts

    target = artifacts.write_artifact(tmp_path / "art", {"config.json": {"v": 1}})
    real_replace, calls = artifacts.os.replace, []

    def failing_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", failing_second_rename)
    with pytest.raises(KeyboardInterrupt):
        artifacts.write_artifact(target, {"config.json": {"v": 2}})
    monkeypatch.undo()
    assert json.loads((target / "config.json").read_text()) == {"v": 1}


def test_images_outside_the_identity_folder_layout_are_reported_not_silently_dropped(tmp_path):
    """``<root>/<id>/<session>/<img>`` and ``<root>/<img>`` are not part of the layout: a warning counts them."""
    from facecore.data.identity_folder import IdentityFolderDataset
    from facecore.errors import FacePrivacyWarning

    for rel in ("a/1.jpg", "a/2.jpg", "b/s1/1.jpg", "b/s1/deeper/2.png", "loose.jpg", "a/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.warns(FacePrivacyWarning, match="3 images .* were left out"):
        ds = IdentityFolderDataset.from_folder(tmp_path)
    assert ds.identities == ["a"] and ds.relpaths == ["a/1.jpg", "a/2.jpg"]
