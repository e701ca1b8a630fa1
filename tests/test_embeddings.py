"""The embedding cache, and LFW View-2 accuracy of the two shared recognizers on real data.

CI starts with an empty cache, so the LFW tests embed only the images the pairs use:
all 6,000 pairs with fr128 (7,701 images) and one fold (600 pairs, 807 images) with fr512.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from facecore.data import IdentityFolderDataset, pair_indices, read_pairs
from facecore.embeddings import atomic_save_npz, extract_embeddings, l2_normalize
from facecore.metrics import cosine_scores, kfold_accuracy
from facecore.recognizers.onnx_recognizer import OnnxRecognizer


class CountingRecognizer(OnnxRecognizer):
    """The real ONNX recognizer, counting how many crops it was asked to embed."""

    calls = 0

    def embed(self, aligned_images):
        out = super().embed(aligned_images)
        self.calls += len(out)
        return out


@pytest.fixture
def counting(fr128, tmp_path, monkeypatch) -> CountingRecognizer:
    monkeypatch.setenv("FACEPRIV_CACHE", str(tmp_path / "cache"))
    return CountingRecognizer(fr128.model_path, fr128.preprocessing, name="fr128")


@pytest.fixture
def small_dataset(lfw_root, tmp_path) -> IdentityFolderDataset:
    """Six real LFW crops of three identities, copied (not linked: the tests touch them)."""
    root = tmp_path / "faces"
    for name in ("Aaron_Peirsol", "Abdullah_Gul", "Alvaro_Uribe"):
        (root / name).mkdir(parents=True)
        for src in sorted((lfw_root / name).iterdir())[:2]:
            shutil.copy(src, root / name / src.name)
    return IdentityFolderDataset.from_folder(root)


def _crops(ds: IdentityFolderDataset) -> np.ndarray:
    return np.stack([ds.load(i) for i in range(len(ds))])


def test_cache_skips_the_recognizer(counting, small_dataset):
    first = extract_embeddings(counting, small_dataset, progress=False)
    assert counting.calls == 6 and first.shape == (6, 128) and first.dtype == np.float32
    np.testing.assert_array_equal(first, counting.embed(_crops(small_dataset)))
    counting.calls = 0
    cache_files = list(Path(os.environ["FACEPRIV_CACHE"]).glob("embeddings/*.npz"))
    assert len(cache_files) == 1
    mtime = cache_files[0].stat().st_mtime_ns

    second = extract_embeddings(counting, small_dataset, progress=False)
    assert counting.calls == 0
    np.testing.assert_array_equal(second, first)
    assert cache_files[0].stat().st_mtime_ns == mtime  # nothing new: the cache file is not rewritten

    # a fresh recognizer object with the same model, preprocessing and name shares the cache
    again = CountingRecognizer(counting.model_path, counting.preprocessing, name="fr128")
    np.testing.assert_array_equal(extract_embeddings(again, small_dataset, progress=False), first)
    assert again.calls == 0


def test_touched_images_are_recognised_by_their_bytes_and_changed_ones_re_embedded(counting, small_dataset):
    first = extract_embeddings(counting, small_dataset, progress=False)
    counting.calls = 0
    touched = small_dataset.paths[2]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a copy without -p, a checkout
    second = extract_embeddings(counting, small_dataset, progress=False)
    assert counting.calls == 0  # the same bytes: not embedded again
    np.testing.assert_array_equal(second, first)
    (cache,) = Path(os.environ["FACEPRIV_CACHE"]).glob("embeddings/*.npz")
    with np.load(cache) as z:  # the new time is recorded, so the next run needs no digest
        row = z["relpaths"].tolist().index(small_dataset.relpaths[2])
        assert z["stamps"][row][1] == touched.stat().st_mtime_ns

    sizes = [p.stat().st_size for p in small_dataset.paths]
    big, small = int(np.argmax(sizes)), int(np.argmin(sizes))
    padded = small_dataset.paths[small].read_bytes()  # another face, padded after its end-of-image to the same size
    small_dataset.paths[big].write_bytes(padded + bytes(sizes[big] - len(padded)))
    counting.calls = 0
    changed = extract_embeddings(counting, small_dataset, progress=False)
    assert counting.calls == 1  # same size, new time, other bytes: embedded again
    np.testing.assert_array_equal(changed[big], first[small])
    first = changed

    counting.calls = 0
    shutil.copy(small_dataset.paths[5], small_dataset.paths[4])  # replace the content of image 4
    third = extract_embeddings(counting, small_dataset, progress=False)
    assert counting.calls == 1
    np.testing.assert_array_equal(third[4], first[5])
    np.testing.assert_array_equal(np.delete(third, 4, 0), np.delete(first, 4, 0))


def test_dataset_views_share_the_cache(counting, small_dataset):
    part = small_dataset.subset(["Abdullah_Gul"])
    emb_part = extract_embeddings(counting, part, progress=False)
    assert counting.calls == 2
    counting.calls = 0
    full = extract_embeddings(counting, small_dataset, progress=False)
    assert counting.calls == 4  # the two cached rows are reused
    np.testing.assert_array_equal(full[small_dataset.labels == 1], emb_part)
    counting.calls = 0
    np.testing.assert_array_equal(extract_embeddings(counting, part, progress=False), emb_part)
    assert counting.calls == 0  # rows outside the view were kept when the full set was added


def test_flip_and_no_cache(counting, small_dataset):
    flipped = extract_embeddings(counting, small_dataset, flip=True, progress=False)
    np.testing.assert_array_equal(flipped, counting.embed(_crops(small_dataset)[:, :, ::-1]))
    plain = extract_embeddings(counting, small_dataset, progress=False)  # a different cache entry
    assert np.abs(plain - flipped).max() > 1e-3
    counting.calls = 0
    extract_embeddings(counting, small_dataset, use_cache=False, progress=False)
    assert counting.calls == 6


def test_corrupt_cache_is_recomputed(counting, small_dataset):
    first = extract_embeddings(counting, small_dataset, progress=False)
    cache = next(Path(os.environ["FACEPRIV_CACHE"]).glob("embeddings/*.npz"))
    cache.write_bytes(b"not a zip file")
    counting.calls = 0
    np.testing.assert_array_equal(extract_embeddings(counting, small_dataset, progress=False), first)
    assert counting.calls == 6
    counting.calls = 0
    extract_embeddings(counting, small_dataset, progress=False)
    assert counting.calls == 0  # rewritten


def test_missing_image_raises(counting, small_dataset):
    from facecore.errors import DataError

    small_dataset.paths[0].unlink()
    with pytest.raises(DataError, match="not found"):
        extract_embeddings(counting, small_dataset, progress=False)


def test_atomic_save_npz_and_l2(tmp_path):
    atomic_save_npz(tmp_path / "sub" / "a.npz", x=np.arange(3))
    assert list((tmp_path / "sub").iterdir()) == [tmp_path / "sub" / "a.npz"]  # no temporary left behind
    with np.load(tmp_path / "sub" / "a.npz") as z:
        np.testing.assert_array_equal(z["x"], np.arange(3))
    np.testing.assert_allclose(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0.0, 0.0]])


# ---------------------------------------------------------------- LFW View-2 on real data

def _pair_images(ds: IdentityFolderDataset, protocol) -> IdentityFolderDataset:
    """The view of ``ds`` holding only the images the pairs use (same root, so the same cache)."""
    wanted = set(protocol.left) | set(protocol.right)
    keep = [i for i, r in enumerate(ds.relpaths) if r in wanted]
    return IdentityFolderDataset(ds.root, [ds.paths[i] for i in keep], ds.labels[keep], ds.identities, ds.size)


@pytest.fixture(scope="module")
def lfw(shared, lfw_root):
    protocol = read_pairs(shared / "data" / "lfw" / "pairs.txt")
    return protocol, IdentityFolderDataset.from_folder(lfw_root)


@pytest.fixture(scope="module")
def lfw_scores(lfw, fr128, fr512):
    """Cosine scores of fr128 on all 6,000 pairs, fr512 and flip-fused fr128 on fold 0 (600 pairs)."""
    protocol, full = lfw
    fold0 = protocol.select([0])
    out = {}
    for key, rec, prot, flip in (("fr128", fr128, protocol, False), ("fr512", fr512, fold0, False),
                                 ("fr128-fold0", fr128, fold0, False), ("fr128-flip-fold0", fr128, fold0, True)):
        view = _pair_images(full, prot)
        emb = extract_embeddings(rec, view, progress=False)
        if flip:
            emb = emb + extract_embeddings(rec, view, flip=True, progress=False)
        left, right = pair_indices(view, prot)
        out[key] = (cosine_scores(emb[left], emb[right]), prot)
    return out


def _subfolds(prot) -> np.ndarray:
    """Split one LFW fold (300 genuine, then 300 impostor pairs) into 10 folds of 30 + 30."""
    half = len(prot.issame) // 2
    assert prot.issame[:half].all() and not prot.issame[half:].any()
    return np.r_[np.arange(half) % 10, np.arange(half) % 10]


def test_lfw_fr128_all_pairs(lfw_scores, record_property):
    scores, prot = lfw_scores["fr128"]
    res = kfold_accuracy(scores, prot.issame, prot.folds)
    record_property("lfw_fr128_accuracy", res.accuracy)
    assert len(scores) == 6000
    assert res.accuracy >= 0.99, f"fr128 LFW 10-fold accuracy {res.accuracy:.4f} < 0.99"
    assert res.std < 0.01 and 0.1 < res.thresholds.mean() < 0.5


def test_lfw_fr512_one_fold(lfw_scores, record_property):
    scores, prot = lfw_scores["fr512"]
    assert len(scores) == 600 and set(prot.folds.tolist()) == {0}
    res = kfold_accuracy(scores, prot.issame, _subfolds(prot))
    record_property("lfw_fr512_fold0_accuracy", res.accuracy)
    assert res.accuracy >= 0.985, f"fr512 LFW fold-0 accuracy {res.accuracy:.4f} < 0.985"


def test_lfw_flip_fusion(lfw_scores, record_property):
    plain, prot = lfw_scores["fr128-fold0"]
    fused, _ = lfw_scores["fr128-flip-fold0"]
    acc_plain = kfold_accuracy(plain, prot.issame, _subfolds(prot)).accuracy
    acc_flip = kfold_accuracy(fused, prot.issame, _subfolds(prot)).accuracy
    record_property("lfw_fr128_fold0_accuracy", acc_plain)
    record_property("lfw_fr128_flip_fold0_accuracy", acc_flip)
    assert acc_flip >= 0.985
    assert abs(acc_flip - acc_plain) <= 0.01  # fusing the mirror image does not change the picture much
    assert not np.array_equal(plain, fused)
