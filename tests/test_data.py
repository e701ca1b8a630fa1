"""Datasets, the LFW pairs protocol and identity splits."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest

from facecore.data import IdentityFolderDataset, pair_indices, read_pairs, identity_split
from facecore.errors import DataError, InvalidInputError
from facecore.images import as_image_batch, read_image


# ---------------------------------------------------------------- the real LFW View-2 protocol

@pytest.fixture(scope="module")
def pairs(shared):
    return read_pairs(shared / "data" / "lfw" / "pairs.txt")


def test_real_pairs_shape(pairs, shared):
    assert pairs.n_folds == 10
    assert len(pairs.left) == len(pairs.right) == len(pairs.issame) == len(pairs.folds) == 6000
    for f in range(10):
        sel = pairs.folds == f
        assert sel.sum() == 600
        assert pairs.issame[sel].sum() == 300 and (~pairs.issame[sel]).sum() == 300
    # first pair line of the file is "<name> <n1> <n2>": a genuine pair of that identity
    first = (shared / "data" / "lfw" / "pairs.txt").read_text().splitlines()[1].split()
    assert pairs.left[0] == f"{first[0]}/{first[0]}_{int(first[1]):04d}.jpg"
    assert pairs.right[0] == f"{first[0]}/{first[0]}_{int(first[2]):04d}.jpg"
    assert pairs.issame[0]
    # genuine pairs share the identity folder, impostor pairs do not
    same_id = np.array([l.split("/")[0] == r.split("/")[0] for l, r in zip(pairs.left, pairs.right)])
    np.testing.assert_array_equal(same_id, pairs.issame)


def test_real_pairs_folds_are_identity_disjoint(pairs):
    ids = [pairs.identities_in_folds([f]) for f in range(10)]
    assert all(len(s) > 0 for s in ids)
    for a, b in combinations(range(10), 2):
        assert not ids[a] & ids[b], f"folds {a} and {b} share identities"
    # identities_in_folds really reads the listed pairs
    sub = pairs.select([3])
    assert ids[3] == {p.split("/")[0] for p in sub.left + sub.right}
    assert len(sub.left) == 600 and set(sub.folds.tolist()) == {3}


def test_real_pairs_resolve_in_dataset(pairs, lfw_root):
    ds = IdentityFolderDataset.from_folder(lfw_root)
    assert len(ds) == 13233 and len(ds.identities) == 5749
    left, right = pair_indices(ds, pairs)
    assert left.shape == right.shape == (6000,)
    rel = ds.relpaths
    assert [rel[i] for i in left] == pairs.left
    assert [rel[i] for i in right] == pairs.right
    np.testing.assert_array_equal(ds.labels[left] == ds.labels[right], pairs.issame)


# ---------------------------------------------------------------- malformed pairs files

def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    return path


GOOD = "1 2\nA 1 2\nB 1 3\nA 1 B 2\nC 4 B 1\n"


def test_small_pairs_file(tmp_path):
    p = read_pairs(_write(tmp_path, GOOD))
    assert p.left == ["A/A_0001.jpg", "B/B_0001.jpg", "A/A_0001.jpg", "C/C_0004.jpg"]
    assert p.right == ["A/A_0002.jpg", "B/B_0003.jpg", "B/B_0002.jpg", "B/B_0001.jpg"]
    np.testing.assert_array_equal(p.issame, [True, True, False, False])
    np.testing.assert_array_equal(p.folds, [0, 0, 0, 0])


@pytest.mark.parametrize("text, match", [
    ("", "first line"),
    ("ten 300\nA 1 2\n", "first line"),
    ("1\nA 1 2\n", "first line"),
    ("1 2\nA 1 2\nB 1 3\nA 1 B 2\n", "expected 4 pairs"),
    ("1 2\nA 1 2\nB 1 3\nA 1 B 2\nC 4 B 1\nD 1 2\n", "expected 4 pairs"),
    ("1 2\nA 1 2\nB 1\nA 1 B 2\nC 4 B 1\n", "line 3"),
    ("1 2\nA 1 2\nB 1 3 4 5 6\nA 1 B 2\nC 4 B 1\n", "line 3"),
    ("1 2\nA 1 x\nB 1 3\nA 1 B 2\nC 4 B 1\n", "line 2"),
])
def test_malformed_pairs_raise(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_pairs(_write(tmp_path, text))


def test_missing_pairs_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "nope.txt")


def test_pair_not_in_dataset(tmp_path):
    ds = _make_dataset(tmp_path / "ds", {"A": 2, "B": 2})
    with pytest.raises(DataError, match="not in dataset"):
        pair_indices(ds, read_pairs(_write(tmp_path, GOOD)))


# ---------------------------------------------------------------- identity folders (generated images)

def _img(seed: int, h: int = 112, w: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _make_dataset(root: Path, counts: dict[str, int]) -> IdentityFolderDataset:
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            assert cv2.imwrite(str(root / name / f"{name}_{i:04d}.png"), _img(100 * k + i))
    return IdentityFolderDataset.from_folder(root)


def test_identity_folder_dataset(tmp_path):
    root = tmp_path / "faces"
    ds = _make_dataset(root, {"bob": 3, "alice": 2, "carol": 1})
    (root / "alice" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (root / "README.md").write_text("top-level files are ignored")
    ds = IdentityFolderDataset.from_folder(root)
    assert ds.identities == ["alice", "bob", "carol"]  # sorted
    assert len(ds) == 6
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1, 2])
    assert ds.relpaths[0] == "alice/alice_0000.png"
    assert ds.index_of("bob/bob_0002.png") == 4
    with pytest.raises(DataError):
        ds.index_of("bob/missing.png")
    crop = ds.load(2)
    assert crop.dtype == np.uint8 and crop.shape == (112, 112, 3)
    np.testing.assert_array_equal(crop, _img(0))  # bob is the first folder written (seed 0); PNG is lossless

    sub = ds.subset({"carol", "bob", "nobody"})
    assert sub.identities == ["bob", "carol"] and len(sub) == 4
    np.testing.assert_array_equal(sub.labels, [0, 0, 0, 1])
    assert sub.relpaths[-1] == "carol/carol_0000.png"

    kept = IdentityFolderDataset.from_folder(root, min_images=2)
    assert kept.identities == ["alice", "bob"] and len(kept) == 5


def test_resize_and_grey_images(tmp_path):
    root = tmp_path / "faces"
    (root / "x").mkdir(parents=True)
    cv2.imwrite(str(root / "x" / "big.png"), _img(1, 224, 200))
    cv2.imwrite(str(root / "x" / "grey.pgm"), _img(2, 112, 92)[..., 0])
    ds = IdentityFolderDataset.from_folder(root, size=(96, 112))
    big, grey = ds.load(0), ds.load(1)
    assert big.shape == grey.shape == (112, 96, 3)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        IdentityFolderDataset.from_folder(tmp_path / "missing")
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        IdentityFolderDataset.from_folder(tmp_path / "empty")
    ds_root = tmp_path / "few"
    _make_dataset(ds_root, {"a": 1})
    with pytest.raises(DataError, match="no images"):
        IdentityFolderDataset.from_folder(ds_root, min_images=2)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10], ids=["empty", "garbage"])
def test_corrupt_image_raises(tmp_path, content):
    root = tmp_path / "faces"
    ds = _make_dataset(root, {"a": 2})
    ds.paths[1].write_bytes(content)
    with pytest.raises(DataError, match="cannot decode"):
        ds.load(1)
    ds.paths[0].unlink()
    with pytest.raises(DataError, match="not found"):
        ds.load(0)


def test_as_image_batch_checks():
    crops = [_img(i) for i in range(3)]
    assert as_image_batch(crops, (112, 112)).shape == (3, 112, 112, 3)
    assert as_image_batch(crops[0], (112, 112)).shape == (1, 112, 112, 3)
    assert as_image_batch(np.stack(crops).astype(np.float32), (112, 112)).dtype == np.uint8
    for bad in ([], [_img(0), _img(1, 100, 100)], np.zeros((0, 112, 112, 3), np.uint8), _img(0, 100, 112),
                np.full((1, 112, 112, 3), 300.0), np.full((1, 112, 112, 3), np.nan), np.zeros((1, 112, 112), np.uint8),
                np.zeros((1, 112, 112, 3), bool)):
        with pytest.raises(InvalidInputError):
            as_image_batch(bad, (112, 112))


def test_read_image_missing(tmp_path):
    with pytest.raises(DataError):
        read_image(tmp_path / "none.jpg")


# ---------------------------------------------------------------- identity splits

def test_identity_split_disjoint_and_seeded():
    names = [f"id{i:03d}" for i in range(100)]
    held_out = {"id000", "id001", "id002", "id003"}
    split = identity_split(names, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3, exclude=held_out)
    assert {k: len(v) for k, v in split.items()} == {"train": 67, "val": 10, "test": 19}
    groups = [set(v) for v in split.values()]
    for a, b in combinations(groups, 2):
        assert not a & b
    assert not set().union(*groups) & held_out
    assert set().union(*groups) == set(names) - held_out  # fractions summing to 1 use every identity
    assert split == identity_split(list(reversed(names)), {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3,
                                   exclude=held_out)  # input order does not matter
    assert split != identity_split(names, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=4, exclude=held_out)


@pytest.mark.parametrize("fractions", [{}, {"a": 0.8, "b": 0.4}, {"a": -0.1, "b": 0.5}, {"a": 0.0}])
def test_identity_split_bad_fractions(fractions):
    with pytest.raises(InvalidInputError):
        identity_split(["a", "b", "c"], fractions)
