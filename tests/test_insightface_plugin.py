"""The InsightFace adapter: same embeddings as the generic ONNX adapter, detect -> align -> embed, errors.

Real models and photos come from $FACEPRIV_SHARED (tests skip without it); the error and
explicit-preprocessing paths also run on a small recognizer exported here with ``torch.onnx.export``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facecore.errors import InvalidInputError, ModelLoadError, NoFaceError
from facecore.images import read_image
from facecore.recognizers import Preprocessing, create_recognizer
from facecore.recognizers.onnx_recognizer import OnnxRecognizer
from facepriv_plugins.insightface_adapter import InsightFacePack, InsightFaceRecognizer

MODELS = {"fr512": "models/fr512_faceplugin/fr_feature.onnx", "fr128": "models/fr128_mobilefacenet/mobilefacenet.onnx"}
DETECTOR = "models/scrfd/scrfd_500m_bnkps.onnx"
IDENTITIES = ("Colin_Powell", "Serena_Williams")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


class SmallNet(nn.Module):
    """A small conv recognizer: (N, 3, 112, 112) -> (N, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 7, stride=8, padding=3)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A dynamic-batch recognizer unknown to the built-ins (InsightFace routes it to ArcFaceONNX)."""
    path = tmp_path_factory.mktemp("small") / "small_rec.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated but needs no onnxscript
        torch.onnx.export(SmallNet().eval(), (torch.zeros(1, 3, 112, 112),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def lfw_crops(lfw_root) -> np.ndarray:
    """20 aligned LFW crops from 20 identities."""
    names = sorted(p.name for p in lfw_root.iterdir())[::250][:20]
    return np.stack([read_image(next((lfw_root / n).glob("*.jpg"))) for n in names])


@pytest.fixture(scope="module")
def pack_dir(shared, tmp_path_factory) -> Path:
    """A pack folder of symlinks to the shared SCRFD detector and 512-d recognizer."""
    folder = tmp_path_factory.mktemp("pack")
    for rel in (DETECTOR, MODELS["fr512"]):
        (folder / Path(rel).name).symlink_to(shared / rel)
    return folder


@pytest.fixture(scope="module")
def pack(pack_dir) -> InsightFacePack:
    return InsightFacePack(pack_dir)


@pytest.mark.data
@pytest.mark.parametrize("builtin", sorted(MODELS))
def test_matches_generic_onnx_adapter(shared, lfw_crops, builtin):
    generic = create_recognizer(builtin)
    rec = InsightFaceRecognizer(shared / MODELS[builtin])
    emb = rec.embed(lfw_crops)
    assert emb.dtype == np.float32 and emb.shape == (len(lfw_crops), generic.dim) and rec.dim == generic.dim
    assert np.diag(_cos(emb, generic.embed(lfw_crops))).min() >= 0.999
    assert rec.preprocessing == generic.preprocessing and rec.fingerprint == generic.fingerprint
    assert rec.name == f"insightface-{builtin}"
    # the InsightFace model object itself now carries the explicit preprocessing
    assert (rec.model.input_mean, rec.model.input_std) == (generic.preprocessing.mean, generic.preprocessing.std)
    assert rec.model.swapRB == (generic.preprocessing.channel_order == "RGB")


@pytest.mark.data
def test_entry_point_and_to_torch(shared, lfw_crops):
    rec = create_recognizer("insightface", model_path=shared / MODELS["fr128"])
    assert isinstance(rec, InsightFaceRecognizer)
    crops = lfw_crops[:4]
    images = torch.from_numpy(crops[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        out = rec.to_torch()(images).numpy()
    assert np.diag(_cos(out, rec.embed(crops))).min() >= 0.999


@pytest.mark.data
def test_builtin_lookup_needs_shared_or_explicit_preprocessing(shared, lfw_crops, monkeypatch):
    monkeypatch.delenv("FACEPRIV_SHARED")
    with pytest.raises(InvalidInputError, match="preprocessing="):
        InsightFaceRecognizer(shared / MODELS["fr128"])
    rec = InsightFaceRecognizer(shared / MODELS["fr128"], preprocessing={"channel_order": "RGB", "mean": 127.5, "std": 128.0})
    assert rec.embed(lfw_crops[:2]).shape == (2, 128)


def test_unknown_model_needs_preprocessing(small_model):
    with pytest.raises(InvalidInputError, match="preprocessing="):
        InsightFaceRecognizer(small_model)
    pre = Preprocessing("BGR", 100.0, 50.0)
    rec = InsightFaceRecognizer(small_model, preprocessing=pre)
    crops = np.random.default_rng(0).integers(0, 256, (70, 112, 112, 3), dtype=np.uint8)  # > one batch of 64
    emb = rec.embed(crops)
    ref = OnnxRecognizer(small_model, pre).embed(crops)
    assert emb.shape == (70, 8) and np.allclose(emb, ref, atol=1e-4)
    with pytest.raises(InvalidInputError, match="112x112"):
        rec.embed(np.zeros((1, 100, 100, 3), np.uint8))


def test_missing_files_raise_model_load_error(tmp_path, small_model):
    with pytest.raises(ModelLoadError, match="not found"):
        InsightFaceRecognizer(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="not found"):
        InsightFacePack(tmp_path / "absent_pack")
    with pytest.raises(ModelLoadError, match="no .onnx"):
        InsightFacePack(tmp_path)
    only_recognizer = tmp_path / "only_rec"
    only_recognizer.mkdir()
    (only_recognizer / "rec.onnx").symlink_to(small_model)
    with pytest.raises(ModelLoadError, match="no detection"):
        InsightFacePack(only_recognizer)
    (only_recognizer / "det.onnx").symlink_to(tmp_path / "gone.onnx")
    with pytest.raises(ModelLoadError, match="broken"):
        InsightFacePack(only_recognizer)


@pytest.mark.data
def test_pack_without_recognizer(shared, tmp_path):
    (tmp_path / "det.onnx").symlink_to(shared / DETECTOR)
    with pytest.raises(ModelLoadError, match="no recognition"):
        InsightFacePack(tmp_path)


@pytest.mark.data
def test_pack_detect_align_embed_raw_photos(shared, pack, lfw_root):
    raw = shared / "data" / "lfw" / "raw250"
    photos = [p for name in IDENTITIES for p in sorted((raw / name).glob("*.jpg"))[:5]]
    emb = pack.embed_photos(photos)
    assert emb.shape == (10, 512) and emb.dtype == np.float32
    sim = _cos(emb, emb)
    same = np.kron(np.eye(2), np.ones((5, 5))).astype(bool)
    off_diag = ~np.eye(10, dtype=bool)
    assert sim[same & off_diag].mean() > sim[~same].mean() + 0.2
    # the crops our pipeline aligns match the pre-aligned LFW crops of the same photos
    aligned = np.stack([read_image(lfw_root / p.parent.name / p.name) for p in photos])
    assert np.diag(_cos(emb, pack.embed(aligned))).min() > 0.8

    crop, score, kps = pack.detect_align(read_image(photos[0]))
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8 and kps.shape == (5, 2) and score >= 0.5


@pytest.mark.data
@pytest.mark.filterwarnings("ignore:.*estimate.* is deprecated:FutureWarning")  # inside InsightFace's FaceAnalysis.get
def test_pack_is_a_recognizer_and_fixes_face_analysis(shared, pack, lfw_crops):
    generic = create_recognizer("fr512")
    assert pack.fingerprint == generic.fingerprint and pack.dim == 512
    assert np.diag(_cos(pack.embed(lfw_crops[:5]), generic.embed(lfw_crops[:5]))).min() >= 0.999
    # FaceAnalysis.get (InsightFace's own pipeline) now embeds with the model's BGR order too
    photo = read_image(next((shared / "data" / "lfw" / "raw250" / IDENTITIES[0]).glob("*.jpg")))
    face = max(pack.app.get(photo), key=lambda f: f.det_score)
    crop, _, _ = pack.detect_align(photo)
    assert _cos(face.embedding[None], generic.embed(crop))[0, 0] >= 0.999
    pack2 = create_recognizer("insightface-pack", root=pack.folder)
    assert isinstance(pack2, InsightFacePack) and pack2.fingerprint == pack.fingerprint


@pytest.mark.data
def test_no_face_raises_with_file_name(pack, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    path = tmp_path / "noise_photo.png"
    cv2.imwrite(str(path), noise)
    with pytest.raises(NoFaceError, match="noise_photo.png"):
        pack.embed_photos([path])
    with pytest.raises(NoFaceError, match="no face"):
        pack.detect_align(np.full((200, 300, 3), 128, np.uint8))
    with pytest.raises(InvalidInputError):
        pack.detect_align(np.zeros((10, 10, 3), np.float32))
