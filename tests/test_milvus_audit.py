"""Audit of the Milvus gallery store on real Milvus Lite databases: one test per defect found (ids pasted into filter
expressions, edited store options reaching another gallery, foreign collections, shared and dropped databases, a second
process on a Lite file, partitions removed behind the gallery's back)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from advface_sdk import DeploymentKey, Gallery, Protector
from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError, StoreMissingError

pytest.importorskip("milvus_lite")
from pymilvus import DataType, MilvusClient  # noqa: E402

FR128 = Protector("fr128")
pytestmark = pytest.mark.filterwarnings("ignore::facecore.errors.UnsignedArtifactWarning")


def _people(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"p{seed}-{i}" for i in range(n)], rng.standard_normal((n, 128)).astype(np.float32)


def _edit_options(folder, **options) -> None:
    manifest = json.loads((folder / "gallery.json").read_text())
    manifest["store"]["options"].update(options)
    (folder / "gallery.json").write_text(json.dumps(manifest))


def _cli_error(*args) -> str:
    """The stderr of a failing ``advface-cli`` run in another process, which must be one ``error:`` line."""
    result = subprocess.run([sys.executable, "-m", "advface_sdk", *map(str, args)], capture_output=True, text=True,
                            timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_ids_with_quotes_and_backslashes_are_one_id_each(tmp_path):
    """pymilvus pastes ``ids=`` between quotes unescaped: ``a'b`` failed with a MilvusException, and one crafted id
    removed every template of the gallery."""
    ids, x = _people(5)
    evil = "x'] or id not in ['"
    weird = ["a'b", 'a"b', "a\\b", 'a\\"b', "x\ny", "c\rd", "tab\tid", "[x]", "a,b", "é" * 256, evil]
    with Gallery.create(tmp_path / "g", store="milvus") as g:
        g.enroll(ids, x)
        assert g.enroll(weird, _people(len(weird), 1)[1]) == len(weird)
        assert g.contains(weird).all() and not g.contains(["a", "b", "x", "' or id != '"]).any()
        assert g.remove([evil]) == 1
        assert len(g) == len(ids) + len(weird) - 1 and g.contains(ids).all()
        assert g.remove(weird) == len(weird) - 1 and len(g) == len(ids)


def test_an_edited_collection_or_uri_never_reaches_another_gallery(tmp_path):
    """Two galleries of one protector: a gallery.json pointed at the other's collection (or database) opened it, and
    ``Gallery.delete`` then dropped the other gallery's templates."""
    ids, x = _people(10)
    shared = str(tmp_path / "shared.db")
    with Gallery.create(tmp_path / "a", store="milvus", uri=shared, collection="ca") as g:
        g.enroll(ids, x)
    Gallery.create(tmp_path / "b", store="milvus", uri=shared, collection="cb").close()
    _edit_options(tmp_path / "b", collection="ca")
    with pytest.raises(IncompatibleError, match="another gallery"):
        Gallery.open(tmp_path / "b")
    with pytest.raises(IncompatibleError, match="another gallery"):
        Gallery.delete(tmp_path / "b")
    Gallery.create(tmp_path / "c", store="milvus").close()  # its own milvus.db, collection advface_gallery
    _edit_options(tmp_path / "c", uri=shared, collection="ca")
    with pytest.raises(IncompatibleError, match="another gallery"):
        Gallery.open(tmp_path / "c")
    with Gallery.open(tmp_path / "a") as g:  # untouched
        assert len(g) == 10 and g.search(x[:1], k=1).ids[0, 0] == ids[0]


def test_delete_keeps_a_lite_database_that_holds_another_gallery(tmp_path):
    """``Gallery.delete`` of a gallery whose milvus.db also holds another gallery's collection removed that one too."""
    ids, x = _people(10)
    with Gallery.create(tmp_path / "a", store="milvus") as g:
        g.enroll(ids, x)
    with Gallery.create(tmp_path / "b", store="milvus", uri=str(tmp_path / "a" / "milvus.db"), collection="cb") as g:
        g.enroll(ids[:3], x[:3])
    with pytest.raises(IncompatibleError, match=r"also keeps the collections \['cb'\]"):
        Gallery.delete(tmp_path / "a")
    with Gallery.open(tmp_path / "a") as a, Gallery.open(tmp_path / "b") as b:  # nothing was deleted
        assert len(a) == 10 and len(b) == 3
    assert Gallery.delete(tmp_path / "b") == 3 and not (tmp_path / "b").exists()
    assert Gallery.delete(tmp_path / "a") == 10 and not (tmp_path / "a").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_second_process_on_a_lite_gallery_gets_one_error_line(tmp_path):
    """Milvus Lite serves a file to one process: the second got a logged traceback and "Open local milvus failed"."""
    with Gallery.create(tmp_path / "g", store="milvus") as g:
        g.enroll(*_people(3))
        line = _cli_error("gallery", "info", tmp_path / "g")
        assert "one process at a time" in line and "another process holds the lock" in line


def test_a_gallery_deleted_and_made_again_in_one_process_stays_locked(tmp_path):
    """The Lite server of a deleted gallery outlived it: a gallery made again at that path in the same process was
    served without its lock, so another process opened (and could write) the same database at once."""
    ids, x = _people(3)
    with Gallery.create(tmp_path / "g", store="milvus") as g:
        g.enroll(ids, x)
    Gallery.delete(tmp_path / "g")
    with Gallery.create(tmp_path / "g", store="milvus") as g:
        g.enroll(ids[:2], x[:2])
        assert "one process at a time" in _cli_error("gallery", "info", tmp_path / "g")
        assert len(g) == 2


def _foreign(client: MilvusClient, name: str, dim: int = 128, metric: str = "IP", id_field: str = "id",
             id_type: DataType = DataType.VARCHAR, max_length: int = 512) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(id_field, id_type, is_primary=True, **({"max_length": max_length} if id_type == DataType.VARCHAR else {}))
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type=metric)
    client.create_collection(name, schema=schema, index_params=params)


def test_collections_of_another_schema_are_refused(tmp_path):
    """An empty collection made by someone else was adopted whatever its schema: enroll then failed with pymilvus
    errors (other dimension, field names, key type) or scores were L2 distances passed off as cosines."""
    db = str(tmp_path / "foreign.db")
    client = MilvusClient(db)
    variants = {"dim64": {"dim": 64}, "l2": {"metric": "L2"}, "pk": {"id_field": "pk"}, "intpk": {"id_type": DataType.INT64},
                "short": {"max_length": 8}}
    for name, kwargs in variants.items():
        _foreign(client, name, **kwargs)
    for name in variants:
        with pytest.raises(IncompatibleError, match="someone else"):
            Gallery.create(tmp_path / name, store="milvus", uri=db, collection=name)
        assert not (tmp_path / name).exists()
    _foreign(client, "good")
    client.close()
    with Gallery.create(tmp_path / "good", store="milvus", uri=db, collection="good") as g:  # the right schema: adopted
        g.enroll(*_people(3))
    _edit_options(tmp_path / "good", index="hnsw")  # the collection's index is FLAT
    with pytest.raises(IncompatibleError, match="HNSW/IP"):
        Gallery.open(tmp_path / "good")


def test_a_collection_dropped_behind_an_open_gallery_gives_typed_errors(tmp_path, caplog):
    """... and only those: pymilvus also logged each one with a full traceback at ERROR."""
    ids, x = _people(5)
    g = Gallery.create(tmp_path / "g", store="milvus")
    g.enroll(ids, x)
    client = MilvusClient(str(tmp_path / "g" / "milvus.db"))
    client.drop_collection("advface_gallery")
    for call in (lambda: len(g), lambda: g.search(x[:1]), lambda: g.contains(ids), lambda: g.enroll(["n"], x[:1]),
                 lambda: g.remove(ids)):
        with pytest.raises(StoreMissingError, match="no collection 'advface_gallery' any more"):
            call()
    assert not [r for r in caplog.records if r.name.startswith("pymilvus")], caplog.text
    with pytest.raises(Exception, match="does not exist"):  # pymilvus used directly still logs
        client.search("advface_gallery", data=x[:1].tolist(), limit=1)
    assert [r for r in caplog.records if r.name.startswith("pymilvus")]
    client.close()
    g.close()


@pytest.mark.parametrize("options", [{"collection": ""}, {"collection": None}, {"collection": 3},
                                     {"collection": "a b"}, {"uri": 3}])
def test_bad_store_options_are_typed_errors_and_leave_no_folder(tmp_path, options):
    with pytest.raises(InvalidInputError, match="milvus (collection|uri)"):
        Gallery.create(tmp_path / "g", store="milvus", **options)
    assert not (tmp_path / "g").exists()


def test_a_uri_to_no_database_is_refused_without_making_one(tmp_path):
    """A gallery.json (or ``uri=``) naming a Lite file that is not there made an empty database there first."""
    Gallery.create(tmp_path / "g", store="milvus").close()
    elsewhere = tmp_path / "elsewhere.db"
    for call in (lambda: Gallery.open(tmp_path / "g", uri=str(elsewhere)),
                 lambda: Gallery.delete(tmp_path / "g", uri=str(elsewhere))):
        with pytest.raises(ArtifactError, match="no Milvus Lite database"):
            call()
    _edit_options(tmp_path / "g", collection=7)
    with pytest.raises(InvalidInputError, match="milvus collection"):
        Gallery.open(tmp_path / "g")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    shutil.rmtree(tmp_path / "g" / "milvus.db")
    with pytest.raises(ArtifactError, match="milvus.db is gone"):
        Gallery.open(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["gallery.json"]


def test_a_bucketed_gallery_missing_a_partition_names_it(tmp_path):
    """The refusal counted partitions ("keeps 3 ... open it with partitions=3"), advice that was refused in turn."""
    key = tmp_path / "deploy.key"
    DeploymentKey.generate(FR128.artifact.protector_id, buckets=4).save(key)
    with Gallery.create(tmp_path / "g", store="milvus", key=key) as g:
        g.enroll(*_people(12))
    client = MilvusClient(str(tmp_path / "g" / "milvus.db"))
    client.release_collection("advface_gallery")
    client.drop_partition("advface_gallery", "b002")
    client.close()
    with pytest.raises(IncompatibleError, match=r"missing: \['b002'\]") as info:
        Gallery.open(tmp_path / "g", key=key)
    assert "partitions=3" not in str(info.value)


def test_a_gallery_whose_collection_is_gone_is_deleted_only_with_missing_ok(tmp_path):
    """``Gallery.delete`` of a gallery whose collection was dropped refused with no way out but ``rm -r``."""
    with Gallery.create(tmp_path / "g", store="milvus") as g:
        g.enroll(*_people(4))
    client = MilvusClient(str(tmp_path / "g" / "milvus.db"))
    client.drop_collection("advface_gallery")
    client.close()
    with pytest.raises(StoreMissingError, match="no collection 'advface_gallery'; nothing was deleted.*missing_ok=True"):
        Gallery.delete(tmp_path / "g")
    assert (tmp_path / "g" / "gallery.json").is_file()
    assert Gallery.delete(tmp_path / "g", missing_ok=True) == 0 and not (tmp_path / "g").exists()
    with Gallery.create(tmp_path / "g", store="milvus") as g:  # made again in this process: served locked
        g.enroll(*_people(2))
        assert "one process at a time" in _cli_error("gallery", "info", tmp_path / "g")


def test_missing_ok_keeps_a_lite_database_that_holds_another_gallery(tmp_path):
    db = tmp_path / "a" / "milvus.db"
    with Gallery.create(tmp_path / "a", store="milvus") as a:
        a.enroll(*_people(3))
    with Gallery.create(tmp_path / "b", store="milvus", uri=str(db), collection="b") as b:
        b.enroll(*_people(2, 1))
    client = MilvusClient(str(db))
    client.drop_collection("advface_gallery")
    client.close()
    with pytest.raises(IncompatibleError, match=r"keeps the collections \['b'\]"):
        Gallery.delete(tmp_path / "a", missing_ok=True)
    with Gallery.open(tmp_path / "b") as b:
        assert len(b) == 2


def test_cli_gallery_delete_missing_ok(tmp_path):
    """The same from the CLI, each step in its own process (Milvus Lite serves a database to one process)."""
    make = ("import sys, numpy as np; from advface_sdk import Gallery; from pymilvus import MilvusClient\n"
            "with Gallery.create(sys.argv[1], store='milvus') as g: g.enroll(['a', 'b'], np.ones((2, 128), 'f4'))\n"
            "c = MilvusClient(sys.argv[1] + '/milvus.db'); c.drop_collection('advface_gallery'); c.close()")
    subprocess.run([sys.executable, "-W", "ignore", "-c", make, str(tmp_path / "g")], check=True, timeout=120)
    assert "--missing-ok" in _cli_error("gallery", "delete", "--yes", tmp_path / "g")
    assert (tmp_path / "g" / "gallery.json").is_file()
    result = subprocess.run([sys.executable, "-m", "advface_sdk", "gallery", "delete", "--yes", "--missing-ok",
                             str(tmp_path / "g")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "(0 templates)" in result.stdout, result.stderr
    assert not (tmp_path / "g").exists()


def test_missing_ok_removes_a_gallery_whose_lite_file_is_lost_and_nothing_else(tmp_path):
    with Gallery.create(tmp_path / "g", store="milvus") as g:
        g.enroll(*_people(4))
    with Gallery.create(tmp_path / "live", store="milvus") as g:
        g.enroll(*_people(3))
    shutil.rmtree(tmp_path / "g" / "milvus.db")
    assert Gallery.delete(tmp_path / "g", missing_ok=True) == 0 and not (tmp_path / "g").exists()
    assert Gallery.delete(tmp_path / "live", missing_ok=True) == 3  # a store that is there is deleted as usual
    with pytest.raises(ArtifactError, match="no gallery"):  # not a gallery: refused, missing_ok or not
        Gallery.delete(tmp_path, missing_ok=True)
    assert tmp_path.is_dir()
