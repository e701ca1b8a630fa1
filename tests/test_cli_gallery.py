"""``advface-cli gallery enroll / search / info / remove / rebuild``: files in, one ``error:`` line on bad input,
and the README's three commands (embed → enroll → search) on real LFW crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from advface_sdk import Gallery, Protector
from advface_sdk.cli import main

FR128 = Protector("fr128").artifact.recognizer_fingerprint


def _npz(path, n=40, dim=128, fingerprint=FR128, seed=0, **extra):
    rng = np.random.default_rng(seed)
    arrays = {"embeddings": rng.standard_normal((n, dim)).astype(np.float32),
              "relpaths": np.asarray([f"person{i}/img{i}.jpg" for i in range(n)]), **extra}
    if fingerprint:
        arrays["fingerprint"] = np.asarray(fingerprint)
    np.savez(path, **arrays)
    return arrays


def _run(*args):
    return CliRunner().invoke(main, ["gallery", *map(str, args)])


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("store", ["faiss", "milvus"])
def test_enroll_search_info_remove(tmp_path, store):
    arrays = _npz(tmp_path / "emb.npz")
    g = tmp_path / "g"
    result = _run("enroll", g, tmp_path / "emb.npz", "--store", store, "--chunk", "16")
    assert result.exit_code == 0, result.output
    assert "enrolled 40 templates" in result.output
    result = _run("search", g, tmp_path / "emb.npz", "-k", "2")
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) == 80 and all(probe == hit for probe, rank, hit, _ in lines if rank == "1")
    result = _run("search", g, tmp_path / "emb.npz", "-k", "2", "--consistency", "Bounded")
    if store == "milvus":  # a search-time option of Milvus galleries: the same hits without waiting for a time tick
        assert result.exit_code == 0 and result.stdout.splitlines() == [*map("\t".join, lines)], result.output
    else:
        assert "applies to Milvus galleries" in _error_line(result)
    result = _run("search", g, tmp_path / "emb.npz", "-k", "3", "--out", tmp_path / "hits.npz")
    with np.load(tmp_path / "hits.npz") as z:
        assert z["ids"].shape == (40, 3) and (z["ids"][:, 0] == arrays["relpaths"]).all()
    info = json.loads(_run("info", g).stdout)
    assert info["templates"] == 40 and info["store"]["name"] == store and info["key_id"] is None
    assert info["recognizer"]["fingerprint"] == FR128 and info["protector"]["id"].startswith("fr128@")
    result = _run("remove", g, "person0/img0.jpg", "nobody")
    assert "removed 1 of 2 ids" in result.output and "(39 left)" in result.output
    result = _run("enroll", g, tmp_path / "emb.npz", "--skip-existing")  # resume: only the missing one goes in
    assert "enrolled 1 templates" in result.output and "(40 in total; protector fr128@" in result.output
    result = CliRunner().invoke(main, ["gallery", "delete", str(g)], input="n\n")  # asks first; "n" keeps everything
    assert result.exit_code != 0 and g.exists()
    result = _run("delete", g, "--yes")
    assert result.exit_code == 0 and "deleted" in result.output and "(40 templates)" in result.output and not g.exists()
    assert "no gallery" in _error_line(_run("delete", g, "--yes"))


def test_bad_input_one_error_line_nothing_lost(tmp_path):
    _npz(tmp_path / "emb.npz")
    g = tmp_path / "g"
    assert _run("enroll", g, tmp_path / "emb.npz").exit_code == 0
    _npz(tmp_path / "dim.npz", dim=64, fingerprint=None)
    assert "dimension 64" in _error_line(_run("enroll", g, tmp_path / "dim.npz"))
    assert "already enrolled" in _error_line(_run("enroll", g, tmp_path / "emb.npz"))
    _npz(tmp_path / "other.npz", fingerprint="0123456789abcdef", seed=1,
         ids=np.asarray([f"x{i}" for i in range(40)]))
    assert "recognizer" in _error_line(_run("enroll", g, tmp_path / "other.npz"))
    assert "recognizer" in _error_line(_run("search", g, tmp_path / "other.npz"))
    bad = _npz(tmp_path / "nan.npz", fingerprint=None, ids=np.asarray([f"n{i}" for i in range(40)]))
    bad["embeddings"][3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", **bad)
    assert "NaN" in _error_line(_run("enroll", g, tmp_path / "nan.npz"))
    np.savez(tmp_path / "dup.npz", embeddings=np.ones((2, 128), np.float32), ids=np.asarray(["a", "a"]))
    assert "more than once" in _error_line(_run("enroll", g, tmp_path / "dup.npz"))
    assert "no gallery" in _error_line(_run("search", tmp_path / "nowhere", tmp_path / "emb.npz"))
    assert "no ids array" in _error_line(_run("enroll", g, tmp_path / "emb.npz", "--ids", "names"))
    other = tmp_path / "g512"
    assert "trained for recognizer" in _error_line(_run("enroll", other, tmp_path / "emb.npz", "-m", "fr512"))
    with Gallery.open(g) as gallery:  # every refusal left the 40 committed templates alone
        assert len(gallery) == 40
    index = next(g.glob("index-*.faiss"))
    index.write_bytes(b"garbage" + index.read_bytes()[7:])
    assert "index file is corrupt" in _error_line(_run("info", g))
    assert "rebuilt the index" in _run("rebuild", g).output
    assert json.loads(_run("info", g).stdout)["templates"] == 40


def test_readme_three_commands(lfw_root, tmp_path, monkeypatch):
    """embed → gallery enroll → gallery search on real crops: other photos of a person find that person."""
    monkeypatch.setenv("FACEPRIV_CACHE", str(tmp_path / "cache"))
    faces, probes = tmp_path / "faces", tmp_path / "probes"
    for name in ("Colin_Powell", "George_W_Bush", "Serena_Williams", "Tony_Blair", "Hugo_Chavez"):
        files = sorted((lfw_root / name).iterdir())
        for folder, picked in ((faces, files[:1]), (probes, files[1:4])):
            (folder / name).mkdir(parents=True)
            for src in picked:
                (folder / name / src.name).symlink_to(src)
    runner = CliRunner()
    for folder in (faces, probes):
        result = runner.invoke(main, ["embed", str(folder), "-r", "fr128", "--out", str(folder) + ".npz"])
        assert result.exit_code == 0, result.output
    assert _run("enroll", tmp_path / "gallery", f"{faces}.npz").exit_code == 0
    result = _run("search", tmp_path / "gallery", f"{probes}.npz", "-k", "1")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 15
    assert sum(probe.split("/")[0] == hit.split("/")[0] for probe, _, hit, _ in rows) >= 14


def test_keyed_gallery_ivf_and_model_of_an_existing_gallery(tmp_path):
    """-K: a keyed gallery is created and searched with the key file, refused without it or with another; --index ivf
    records nprobe and rebuild retrains; -m / --index of an existing gallery must be the recorded ones."""
    from advface_sdk import DeploymentKey

    pid = Protector("fr128").artifact.protector_id
    for name in ("a", "b"):
        DeploymentKey.generate(pid).save(tmp_path / f"{name}.key")
    arrays = _npz(tmp_path / "emb.npz", n=60)
    g = tmp_path / "g"
    result = _run("enroll", g, tmp_path / "emb.npz", "-K", tmp_path / "a.key", "--index", "ivf", "--nprobe", "4",
                  "--chunk", "10")
    assert result.exit_code == 0, result.output
    key_id = DeploymentKey.load(tmp_path / "a.key").key_id
    assert f"deployment key {key_id}" in result.stdout
    assert "gallery rebuild" in result.stderr  # trained on the first 10 of 60 rows: retraining advised
    info = json.loads(_run("info", g, "-K", tmp_path / "a.key").stdout)
    assert info["key_id"] == key_id and info["store"]["options"]["nprobe"] == 4 and info["store_info"]["nlist"] == 10  # 4*sqrt(10) capped at 10 rows
    assert "keyed gallery" in _error_line(_run("search", g, tmp_path / "emb.npz"))
    assert "not the key" in _error_line(_run("search", g, tmp_path / "emb.npz", "-K", tmp_path / "b.key"))
    assert "not found" in _error_line(_run("search", g, tmp_path / "emb.npz", "-K", tmp_path / "nokey.key"))
    assert "IVF retrained: 31 lists" in _run("rebuild", g, "-K", tmp_path / "a.key").output  # 4*sqrt(60)
    result = _run("search", g, tmp_path / "emb.npz", "-K", tmp_path / "a.key", "-k", "1", "--nprobe", "31")
    assert result.exit_code == 0, result.output
    hits = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(hits) == 60 and all(probe == hit for probe, _, hit, _ in hits)
    # an existing gallery keeps its protector and index: a different -m or --index is refused, naming the recorded one
    more = _npz(tmp_path / "more.npz", n=5, seed=2, ids=np.asarray([f"m{i}" for i in range(5)]))
    assert "fr128@" in _error_line(_run("enroll", g, tmp_path / "more.npz", "-K", tmp_path / "a.key", "-m", "fr512"))
    assert "index 'ivf' (not 'flat')" in _error_line(_run("enroll", g, tmp_path / "more.npz", "-K", tmp_path / "a.key",
                                                          "--index", "flat"))
    result = _run("enroll", g, tmp_path / "more.npz", "-K", tmp_path / "a.key", "-m", "fr128")
    assert result.exit_code == 0 and "(65 in total; protector fr128@" in result.stdout
    with Gallery.open(g, key=tmp_path / "a.key") as gallery:
        assert len(gallery) == 65 and gallery.contains(list(more["ids"])).all()
        assert gallery.contains(list(arrays["relpaths"])).all()
