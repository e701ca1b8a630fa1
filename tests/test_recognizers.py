"""The generic ONNX recognizer adapter, its torch copy and its error paths.

Real models come from $FACEPRIV_SHARED; small dynamic-batch and NaN-producing recognizers are
exported here with ``torch.onnx.export`` so the batched and error paths run on real ONNX Runtime.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facecore.errors import InvalidInputError, ModelLoadError, NonFiniteError
from facecore.recognizers import Preprocessing, create_recognizer, list_recognizers
from facecore.recognizers.onnx_recognizer import OnnxRecognizer
from facecore.recognizers.torch_graph import load_onnx_as_torch


class TinyNet(nn.Module):
    """A small conv recognizer: (N, 3, 112, 112) -> (N, 16)."""

    def __init__(self, nan: bool = False):
        super().__init__()
        self.nan = nan
        self.conv1 = nn.Conv2d(3, 8, 5, stride=4, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
        y = self.fc(y)
        if self.nan:  # log of a negative number: NaN for every input
            y = torch.log(-(y.abs() + 1.0))
        return y


def _export(net: nn.Module, path: Path, dynamic: bool) -> Path:
    net = net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy (TorchScript) exporter is deprecated but needs no onnxscript
        torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None,
                          dynamo=False)
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    return {"dynamic": _export(TinyNet(), root / "tiny_dynamic.onnx", dynamic=True),
            "nan": _export(TinyNet(nan=True), root / "tiny_nan.onnx", dynamic=True)}


def _random_crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def real_crops(lfw_root) -> np.ndarray:
    from facecore.data import IdentityFolderDataset

    ds = IdentityFolderDataset.from_folder(lfw_root)
    return np.stack([ds.load(i) for i in range(0, len(ds), len(ds) // 8)][:8])


# ---------------------------------------------------------------- batching

def test_fixed_batch_model_loops(fr128, real_crops):
    assert fr128.fixed_batch == 1 and fr128.dim == 128
    batched = fr128.embed(real_crops[:5])
    single = np.concatenate([fr128.embed(c) for c in real_crops[:5]])  # (112, 112, 3) crops one at a time
    assert batched.shape == (5, 128) and batched.dtype == np.float32
    np.testing.assert_array_equal(batched, single)
    assert np.abs(batched[0] - batched[1]).max() > 0.1  # different faces, different embeddings


def test_dynamic_batch_model(tiny_models):
    rec = OnnxRecognizer(tiny_models["dynamic"], Preprocessing("BGR", 127.0, 128.0), batch_size=3)
    assert rec.fixed_batch is None and rec.dim == 16 and rec.name == "tiny_dynamic"
    crops = _random_crops(7)
    batched = rec.embed(crops)  # runs as batches of 3, 3, 1
    single = np.concatenate([rec.embed(c[None]) for c in crops])
    assert batched.shape == (7, 16)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    # and it computes what the network computes, with the explicit BGR preprocessing
    torch.manual_seed(0)
    net = TinyNet().eval()  # same seed as the exported one -> same weights
    with torch.no_grad():
        ref = net(torch.from_numpy((crops.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(batched, ref, rtol=1e-4, atol=1e-5)


def test_onnx_entry_point_adapter(tiny_models):
    assert {"fr128", "fr512", "onnx"} <= set(list_recognizers())
    rec = create_recognizer("onnx", model_path=tiny_models["dynamic"], preprocessing={"channel_order": "RGB"})
    assert isinstance(rec, OnnxRecognizer) and rec.preprocessing.channel_order == "RGB"
    by_path = create_recognizer(str(tiny_models["dynamic"]), channel_order="RGB")
    assert by_path.fingerprint == rec.fingerprint
    np.testing.assert_array_equal(rec.embed(_random_crops(2)), by_path.embed(_random_crops(2)))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("bad", [
    pytest.param(np.zeros((2, 100, 100, 3), np.uint8), id="wrong-size"),
    pytest.param(np.zeros((2, 112, 112), np.uint8), id="no-channels"),
    pytest.param(np.zeros((2, 112, 112, 3), bool), id="bool-dtype"),
    pytest.param(np.full((2, 112, 112, 3), "x"), id="str-dtype"),
    pytest.param(np.full((2, 112, 112, 3), 1000.0), id="out-of-range"),
    pytest.param(np.full((1, 112, 112, 3), np.nan, np.float32), id="nan-pixels"),
    pytest.param(np.zeros((0, 112, 112, 3), np.uint8), id="empty-batch"),
    pytest.param([], id="empty-list"),
])
def test_bad_images_raise(tiny_models, bad):
    rec = OnnxRecognizer(tiny_models["dynamic"])
    with pytest.raises(InvalidInputError):
        rec.embed(bad)


def test_bad_images_raise_on_real_model(fr128):
    with pytest.raises(InvalidInputError, match="112x112"):
        fr128.embed(np.zeros((1, 96, 112, 3), np.uint8))


def test_non_finite_output_raises(tiny_models):
    rec = OnnxRecognizer(tiny_models["nan"])
    with pytest.raises(NonFiniteError, match="NaN"):
        rec.embed(_random_crops(2))


def test_missing_and_corrupt_models(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxRecognizer(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="not found"):
        create_recognizer(str(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxRecognizer(corrupt)
    with pytest.raises(ModelLoadError):
        load_onnx_as_torch(corrupt)
    with pytest.raises(ModelLoadError, match="not found"):
        load_onnx_as_torch(tmp_path / "missing.onnx")
    with pytest.raises(InvalidInputError, match="unknown recognizer"):
        create_recognizer("no-such-recognizer")


def test_to_torch_unsupported_operator(tiny_models):
    # the tiny net's spatial mean exports as ReduceMean, which the converter does not implement
    with pytest.raises(ModelLoadError, match="unsupported operators"):
        OnnxRecognizer(tiny_models["dynamic"]).to_torch()


def test_input_size_mismatch(tiny_models):
    with pytest.raises(ModelLoadError, match="112x112"):
        OnnxRecognizer(tiny_models["dynamic"], Preprocessing(input_size=(96, 112)))


# ---------------------------------------------------------------- fingerprints

def test_fingerprint(fr128, fr512, tiny_models):
    again = create_recognizer("fr128")
    assert again.fingerprint == fr128.fingerprint  # stable across loads
    by_path = OnnxRecognizer(fr128.model_path, Preprocessing("RGB", 127.5, 128.0), name="other-name")
    assert by_path.fingerprint == fr128.fingerprint  # the name does not matter, bytes + preprocessing do
    bgr = create_recognizer(str(fr128.model_path), channel_order="BGR", mean=127.5, std=128.0)
    mean = create_recognizer(str(fr128.model_path), channel_order="RGB", mean=127.0, std=128.0)
    prints = {fr128.fingerprint, bgr.fingerprint, mean.fingerprint, fr512.fingerprint,
              OnnxRecognizer(tiny_models["dynamic"]).fingerprint}
    assert len(prints) == 5
    assert all(len(p) == 16 and int(p, 16) >= 0 for p in prints)


# ---------------------------------------------------------------- torch copies

def _to_rgb01(crops_bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(crops_bgr[..., ::-1])).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("name", ["fr128", "fr512"])
def test_to_torch_matches_onnxruntime(name, request, real_crops):
    rec = request.getfixturevalue(name)
    module = rec.to_torch()
    assert not any(p.requires_grad for p in module.parameters())
    with torch.no_grad():
        out = module(_to_rgb01(real_crops)).numpy()  # a batch of 8, although the ONNX file is fixed at batch 1
    ref = rec.embed(real_crops)
    assert out.shape == ref.shape == (8, rec.dim)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
    with torch.no_grad():
        one = module(_to_rgb01(real_crops[3:4])).numpy()
    np.testing.assert_allclose(one[0], out[3], rtol=0, atol=1e-5)


def test_to_torch_is_differentiable(fr128, real_crops):
    module = fr128.to_torch(trainable=True)
    assert all(p.requires_grad for p in module.parameters())
    x = _to_rgb01(real_crops[:2])
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False).requires_grad_(True)
    emb = module(x)  # any input size: resized to 112x112 inside
    assert emb.shape == (2, 128)
    torch.nn.functional.cosine_similarity(emb[0:1], emb[1:2]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
