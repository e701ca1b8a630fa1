"""Audit of advface_sdk's bad-input and failure handling: one test per defect found, real artifacts, real ONNX Runtime,
real subprocesses where a signal is the subject."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import sigterm_once_writing
from advface_sdk import DeploymentKey, Gallery, Protector
from advface_sdk.cli import main
from facecore.errors import ArtifactError, DataError, InvalidInputError

CLI = [sys.executable, "-m", "advface_sdk"]
FR128 = Protector("fr128").artifact.recognizer_fingerprint
pytestmark = pytest.mark.filterwarnings("ignore::facecore.errors.UnsignedArtifactWarning")


def _run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _npz(path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, embeddings=rng.standard_normal((n, 128)).astype(np.float32),
             ids=np.asarray([f"p{i}" for i in range(n)]), fingerprint=np.asarray(FR128))
    return path


def _flip_embeddings_byte(src, dst):
    """A copy of ``src`` with one byte of its ``embeddings`` member flipped (the zip's CRC no longer matches)."""
    data = bytearray(src.read_bytes())
    data[data.find(b"embeddings.npy") + 400] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_outputs_never_overwrite_other_inputs(tmp_path):
    """export-onnx onto the deployment key (a symlink or hard link too) or a file of the artifact, protect onto the
    key, gallery search --out onto the probes: refused, every input byte-identical (protect IN IN stays allowed)."""
    src = _npz(tmp_path / "emb.npz")
    before = src.read_bytes()
    key = DeploymentKey.generate(Protector("fr128").artifact.protector_id).save(tmp_path / "deploy.npz")
    (tmp_path / "link.key").symlink_to(key)
    os.link(key, tmp_path / "hard.key")
    key_bytes = key.read_bytes()
    for out in (key, tmp_path / "link.key", tmp_path / "hard.key"):
        assert "is the deployment key" in _error_line(_run("export-onnx", "fr128", "-o", out, "-K", key))
    assert "is the deployment key" in _error_line(_run("protect", src, key, "-K", key))
    art = tmp_path / "art"
    shutil.copytree(Protector("fr128").artifact.directory, art)
    onnx_bytes = (art / "generator.onnx").read_bytes()
    assert "artifact's file generator.onnx" in _error_line(_run("export-onnx", art, "-o", art / "generator.onnx"))
    assert _run("gallery", "enroll", tmp_path / "g", src).exit_code == 0
    assert "is the probes file" in _error_line(_run("gallery", "search", tmp_path / "g", src, "-o", src))
    assert src.read_bytes() == before and key.read_bytes() == key_bytes and (art / "generator.onnx").read_bytes() == onnx_bytes
    assert DeploymentKey.load(key).key_id and Protector(art).dim == 128


def test_write_errors_name_the_output_not_a_temp_file(tmp_path):
    src = _npz(tmp_path / "emb.npz")
    assert _run("gallery", "enroll", tmp_path / "g", src).exit_code == 0
    for args in (("export-onnx", "fr128", "-o", tmp_path / "nowhere" / "g.onnx"),
                 ("gallery", "search", tmp_path / "g", src, "-o", tmp_path / "nowhere" / "hits.tsv")):
        line = _error_line(_run(*args))
        assert "cannot write" in line and str(tmp_path / "nowhere") in line and ".tmp" not in line
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_damaged_npz_files_give_one_error_line_and_change_nothing(tmp_path):
    """A bit flip inside a member (bad CRC), a truncated or foreign file, object ids, a .npy: typed errors, one line
    on the CLI; a damaged file enrolls nothing (not even the chunks read before the damage) and writes nothing."""
    src = _npz(tmp_path / "emb.npz", n=300)
    flipped = _flip_embeddings_byte(src, tmp_path / "flipped.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(src.read_bytes()[:5000])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"hello, world\n" * 10)
    objects = tmp_path / "objects.npz"
    with np.load(src) as z:
        np.savez(objects, embeddings=z["embeddings"], ids=z["ids"].astype(object))
    assert "damaged" in _error_line(_run("protect", flipped, tmp_path / "out.npz"))
    assert not list(tmp_path.glob("*out.npz*"))
    g = tmp_path / "g"
    assert "damaged" in _error_line(_run("gallery", "enroll", g, flipped, "--chunk", "16"))
    assert not g.exists()
    assert _run("gallery", "enroll", g, _npz(tmp_path / "few.npz", n=5, seed=1)).exit_code == 0
    for bad in (flipped, truncated, garbage, objects):
        for command in ("enroll", "search"):
            assert bad.name in _error_line(_run("gallery", command, g, bad))
    with Gallery.open(g) as gallery:
        assert len(gallery) == 5
    keyed = Protector("fr128", key=DeploymentKey.generate(Protector("fr128").artifact.protector_id))
    np.save(tmp_path / "plain.npy", np.ones((2, 128), np.float32))
    for bad in (truncated, garbage, tmp_path / "plain.npy"):
        with pytest.raises(DataError):
            keyed.load_keyed(bad)


def test_sigterm_during_a_tsv_search_leaves_no_temp_file(tmp_path):
    rng = np.random.default_rng(0)
    _npz(tmp_path / "emb.npz", n=20)
    assert _run("gallery", "enroll", tmp_path / "g", tmp_path / "emb.npz").exit_code == 0
    probes = tmp_path / "probes.npz"
    np.savez(probes, embeddings=rng.standard_normal((20000, 128)).astype(np.float32),
             ids=np.asarray([f"q{i}" for i in range(20000)]))
    out = tmp_path / "hits.tsv"
    code, err = sigterm_once_writing([*CLI, "gallery", "search", str(tmp_path / "g"), str(probes), "--batch", "4", "-o",
                                      str(out)], tmp_path, ".hits.tsv.tmp*", {**os.environ, "OMP_NUM_THREADS": "1"})
    assert code != 0 and err.strip().splitlines()[-1].startswith("error:")
    assert not out.exists() and not list(tmp_path.glob(".hits.tsv.tmp*"))


def _gallery(tmp_path, n=6):
    g = Gallery.create(tmp_path / "g")
    g.enroll([f"p{i}" for i in range(n)], np.random.default_rng(0).standard_normal((n, 128)).astype(np.float32))
    g.close()
    return tmp_path / "g"


@pytest.mark.parametrize("edit", [
    lambda m, s: m.pop("store"), lambda m, s: m.update(dim="128"), lambda m, s: m["protector"].pop("id"),
    lambda m, s: m.update(recognizer=None), lambda m, s: s.pop("segments"), lambda m, s: s.update(rows=None),
    lambda m, s: s["segments"][0].update(file="../outside.npz"), lambda m, s: s["segments"][0].update(kind="remove"),
    lambda m, s: s.update(index={"file": "/etc/passwd", "rows": 6, "sha256": "0"}),
])
def test_edited_gallery_files_are_refused(tmp_path, edit):
    """An edited gallery.json or state.json (a missing or mistyped field, a file outside the folder) is an
    ArtifactError, one line on the CLI; nothing outside the folder is read."""
    folder = _gallery(tmp_path)
    manifest, state = (json.loads((folder / name).read_text()) for name in ("gallery.json", "state.json"))
    shutil.copy(folder / state["segments"][0]["file"], tmp_path / "outside.npz")  # its checksum matches
    edit(manifest, state)
    for name, record in (("gallery.json", manifest), ("state.json", state)):
        (folder / name).write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match="corrupt or was edited"):
        Gallery.open(folder)
    assert "corrupt or was edited" in _error_line(_run("gallery", "info", folder))


def test_gallery_ids_k_and_paths_are_checked(tmp_path):
    """One string is one id (never its characters); ids and k of the wrong type, a file where a gallery folder
    belongs, a binary --from-file: typed errors, nothing changed."""
    folder = _gallery(tmp_path, n=2)
    x = np.random.default_rng(1).standard_normal((2, 128)).astype(np.float32)
    with Gallery.open(folder) as g:
        g.enroll(["a", "b"], x)
        with pytest.raises(InvalidInputError, match="1 ids for 2"):
            g.enroll("cd", x)
        assert g.remove("ab") == 0 and len(g) == 4 and g.contains("a").tolist() == [True]
        g.enroll("ab", x[0])
        assert g.remove("ab") == 1 and len(g) == 4
        for bad in (None, 5):
            with pytest.raises(InvalidInputError, match="ids must be"):
                g.enroll(bad, x[:1])
            with pytest.raises(InvalidInputError, match="ids must be"):
                g.contains(bad)
        for k in ("3", 2.7, None, True):
            with pytest.raises(InvalidInputError, match="k must be"):
                g.search(x, k=k)
        assert g.search(x, k=np.int64(2)).ids.shape == (2, 2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="no gallery"):
        Gallery.open(tmp_path / "file")
    with pytest.raises(InvalidInputError, match="is a file"):
        Gallery.create(tmp_path / "file")
    with pytest.raises(DataError, match="cannot write"):
        Gallery.create(tmp_path / "file" / "g")
    (tmp_path / "dir" / "gallery.json").mkdir(parents=True)
    with pytest.raises(ArtifactError):
        Gallery.open(tmp_path / "dir")
    empty = tmp_path / "empty.npz"
    np.savez(empty, embeddings=np.zeros((0, 128), np.float32), ids=np.zeros(0, "U1"), fingerprint=np.asarray(FR128))
    assert "nothing to enroll" in _error_line(_run("gallery", "enroll", tmp_path / "new", empty))
    assert not (tmp_path / "new").exists()
    (tmp_path / "ids.txt").write_bytes(b"\xff\xfe\x00garbage")
    assert "not a text file" in _error_line(_run("gallery", "remove", folder, "--from-file", tmp_path / "ids.txt"))
    with Gallery.open(folder) as g:
        assert len(g) == 4


@pytest.fixture(scope="module")
def pack(shared, tmp_path_factory):
    from facepriv_plugins.insightface_adapter import InsightFacePack

    folder = tmp_path_factory.mktemp("pack")
    for rel in ("models/scrfd/scrfd_500m_bnkps.onnx", "models/fr512_faceplugin/fr_feature.onnx"):
        (folder / rel.rsplit("/", 1)[1]).symlink_to(shared / rel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InsightFacePack(folder)


@pytest.mark.data
def test_insightface_pack_refuses_odd_photos_with_typed_errors(pack):
    for bad in (np.zeros((100, 100)), np.zeros((100, 100), bool), np.zeros((0, 0, 3), np.uint8),
                np.zeros((0, 0), np.uint8), np.array([[None]]), [[1, 2], [3, 4]]):
        with pytest.raises(InvalidInputError, match="uint8 BGR"):
            pack.detect_align(bad)
    with pytest.raises(InvalidInputError, match="sequence of images"):
        pack.embed_photos(None)
    with pytest.raises(InvalidInputError, match="empty list"):
        pack.embed_photos(x for x in ())


def test_training_packs_that_are_not_packs_give_one_error_line(tmp_path):
    """A .npy, a truncated or a damaged pack given to train-shadow: one `error:` line, no traceback, no output."""
    from facecore.training.face_pack import FaceTrainingSet

    np.save(tmp_path / "x.npy", np.zeros((4, 128), np.float32))
    rng = np.random.default_rng(0)
    pack = tmp_path / "pack.npz"
    FaceTrainingSet(rng.integers(0, 255, (8, 64, 64, 3), np.uint8), rng.standard_normal((8, 128)).astype(np.float32),
                    np.arange(8) % 2, ["a", "b"], [f"{i}.jpg" for i in range(8)], FR128).save(pack)
    (tmp_path / "cut.npz").write_bytes(pack.read_bytes()[:300])
    _flip_embeddings_byte(pack, tmp_path / "bad.npz")
    for name, what in (("x.npy", "not an .npz"), ("cut.npz", "not a readable .npz"), ("bad.npz", "not a readable .npz"),
                       ("embeddings.npz", "not a valid training pack")):
        out = tmp_path / f"out_{name}"
        if name == "embeddings.npz":
            _npz(tmp_path / name)
        line = _error_line(_run("train-shadow", tmp_path / name, "-o", out, "--epochs", 1))
        assert what in line and not out.exists(), line


@pytest.mark.data
@pytest.mark.parametrize("kwargs", [{"det_thresh": 1.5}, {"det_thresh": "0.5"}, {"det_thresh": float("nan")},
                                    {"det_size": (100, 100)}, {"det_size": (640,)}])
def test_insightface_pack_refuses_odd_detector_settings(shared, tmp_path, kwargs):
    """A detector threshold outside (0, 1) found no face or raised ValueError later; a det_size off the stride broke
    the anchors: both are InvalidInputError when the pack is made."""
    from facepriv_plugins.insightface_adapter import InsightFacePack

    for rel in ("models/scrfd/scrfd_500m_bnkps.onnx", "models/fr512_faceplugin/fr_feature.onnx"):
        (tmp_path / rel.rsplit("/", 1)[1]).symlink_to(shared / rel)
    with pytest.raises(InvalidInputError, match="det_thresh|det_size"):
        InsightFacePack(tmp_path, **kwargs)


def test_protect_refuses_matrices_and_masked_entries():
    """np.matrix raised a bare TypeError; a masked array was protected with its mask ignored (garbage rows stored)."""
    p, x = Protector("fr128"), np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
    with pytest.raises(InvalidInputError, match="np.matrix"):
        p.protect(np.matrix(x))
    with pytest.raises(InvalidInputError, match="masked"):
        p.protect(np.ma.masked_array(x, mask=np.arange(x.size).reshape(x.shape) == 5))
    out = p.protect(np.ma.masked_array(x, mask=False))
    assert type(out) is np.ndarray and np.array_equal(out, p.protect(x))


def test_ids_that_are_not_utf8_are_refused_by_name(tmp_path):
    """A lone surrogate (``"\\udcff"``, what os.fsdecode makes of a non-UTF-8 file name) raised UnicodeEncodeError."""
    with Gallery.create(tmp_path / "g") as g:
        with pytest.raises(InvalidInputError, match="UTF-8"):
            g.enroll(["ok", "bad\udcff"], np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32))
        assert len(g) == 0
