"""Baseline template-protection methods of the benchmark (advface_sdk.evaluation.methods)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from advface_sdk.evaluation import KeyedMethod, create_method, list_methods
from facecore.errors import InvalidInputError, NonFiniteError

BASELINES = ["none", "gaussian", "polyprotect", "biohashing", "mlphash", "slerpface"]
KEYED = ["polyprotect", "biohashing", "mlphash", "slerpface"]
D = 64


@pytest.fixture(scope="module")
def clustered():
    """30 identities on the unit sphere, a gallery and a probe sample each (cos to centre ≈ 0.85)."""
    rng = np.random.default_rng(7)
    n_id = 30
    centres = rng.standard_normal((n_id, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = lambda: rng.standard_normal((n_id, D)) * (0.6 / math.sqrt(D))  # noqa: E731
    gallery = (centres + noise()).astype(np.float32)
    probe = (centres + noise()).astype(np.float32)
    return gallery, probe, np.arange(n_id) * 3 + 11  # arbitrary user ids


def test_registry_lists_and_rebuilds():
    assert set(BASELINES) <= set(list_methods())
    with pytest.raises(InvalidInputError, match="unknown protection method"):
        create_method("rot13")
    with pytest.raises(InvalidInputError, match="bad parameters"):
        create_method("polyprotect", window=3)
    with pytest.raises(InvalidInputError):
        create_method("polyprotect", overlap=5)  # overlap must be < m
    with pytest.raises(InvalidInputError):
        create_method("gaussian", budget=-1.0)


@pytest.mark.parametrize("name", BASELINES)
def test_to_dict_round_trip_is_deterministic(name, clustered):
    gallery, _, uid = clustered
    a = create_method(name, seed=5)
    b = create_method(**a.to_dict())
    assert b.to_dict() == a.to_dict() and a.to_dict()["name"] == name
    np.testing.assert_array_equal(a.protect_gallery(gallery, uid), b.protect_gallery(gallery, uid))
    np.testing.assert_array_equal(a.transform_probe(gallery, uid), b.transform_probe(gallery, uid))


@pytest.mark.parametrize("name", ["gaussian", *KEYED])
def test_secret_depends_on_user_and_seed(name, clustered):
    gallery, _, _ = clustered
    z = np.repeat(gallery[:1], 3, axis=0)
    out = create_method(name, seed=0).protect_gallery(z, np.array([4, 5, 4]))
    assert not np.array_equal(out[0], out[1])  # different users -> different transforms
    np.testing.assert_array_equal(out[0], out[2])  # same user, same embedding -> same template
    other_seed = create_method(name, seed=1).protect_gallery(z, np.array([4, 5, 4]))
    assert not np.array_equal(out[0], other_seed[0])


def test_none_stores_raw_embeddings(clustered):
    gallery, probe, uid = clustered
    m = create_method("none")
    np.testing.assert_array_equal(m.protect_gallery(gallery, uid), gallery)
    np.testing.assert_array_equal(m.transform_probe(probe, uid), probe)


@pytest.mark.parametrize("name,dtype,length,nbytes", [
    ("none", np.float32, D, 4 * D),
    ("gaussian", np.float32, D, 4 * D),
    ("polyprotect", np.float32, D - 4, 4 * (D - 4)),  # m=5, overlap=4: one value per 1-step window
    ("biohashing", np.bool_, D, D // 8),
    ("mlphash", np.bool_, 512, 64),
    ("slerpface", np.float32, 48, 4 * 48),  # 12 of 16 groups of 4 dims kept
])
def test_shapes_dtypes_and_storage(name, dtype, length, nbytes, clustered):
    gallery, probe, uid = clustered
    m = create_method(name)
    stored, probes = m.protect_gallery(gallery, uid), m.transform_probe(probe, uid)
    assert stored.dtype == dtype and stored.shape == (len(gallery), length)
    assert probes.shape == stored.shape
    assert m.output_dim(D) == length and m.bytes_per_template(D) == nbytes
    scores = m.match(probes, stored)
    assert scores.shape == (len(gallery),) and np.isfinite(scores).all()


@pytest.mark.parametrize("name", BASELINES)
def test_genuine_scores_beat_impostor_scores(name, clustered):
    """Every genuine comparison outscores every impostor claiming the same user (key known to both)."""
    gallery, probe, uid = clustered
    m = create_method(name, seed=3)
    stored = m.protect_gallery(gallery, uid)
    genuine = m.match(m.transform_probe(probe, uid), stored)
    impostor = []
    for shift in (1, 7, 13):  # probe of another identity claims the gallery user's id
        other = np.roll(probe, shift, axis=0)
        impostor.append(m.match(m.transform_probe(other, uid), stored))
    impostor = np.concatenate(impostor)
    assert genuine.min() > impostor.max(), (name, genuine.min(), impostor.max())


@pytest.mark.parametrize("dim", [7, 64, 128, 512])
@pytest.mark.parametrize("overlap", [0, 1, 2, 3, 4])
def test_polyprotect_output_dimension(dim, overlap):
    m = create_method("polyprotect", overlap=overlap)
    expected = math.ceil((dim - overlap) / (5 - overlap))  # zero-padded last window, as in the paper
    assert m.output_dim(dim) == expected
    z = np.random.default_rng(0).standard_normal((2, dim))
    assert m.protect_gallery(z, np.array([0, 1])).shape == (2, expected)


def test_polyprotect_matches_the_paper_mapping():
    m = create_method("polyprotect", overlap=2, seed=9)
    key = m.user_key(42, 12)
    c, e = key["coefficients"], key["exponents"]
    assert sorted(e.tolist()) == [1, 2, 3, 4, 5]
    assert len(set(c.tolist())) == 5 and np.all(c != 0) and np.all(np.abs(c) <= 50)
    z = np.random.default_rng(1).standard_normal((1, 12))
    v = np.concatenate([z[0] / np.linalg.norm(z[0]), np.zeros(2)])  # zero-padded to complete the 4th window
    expected = [np.sum(c * v[s : s + 5] ** e) for s in (0, 3, 6, 9)]
    np.testing.assert_allclose(m.protect_gallery(z, np.array([42]))[0], expected, rtol=1e-5)
    # stolen token: the key, not the method instance, fixes the transform
    np.testing.assert_array_equal(create_method("polyprotect", overlap=2, seed=9).user_key(42, 12)["coefficients"], c)


def test_biohashing_codes_are_bits_of_an_orthonormal_projection(clustered):
    gallery, probe, uid = clustered
    m = create_method("biohashing", n_bits=40)
    q = m.user_key(int(uid[0]), D)["projection"]
    np.testing.assert_allclose(q.T @ q, np.eye(40), atol=1e-5)
    codes = m.protect_gallery(gallery, uid)
    assert codes.dtype == np.bool_ and codes.shape == (len(gallery), 40)
    assert 0.3 < codes.mean() < 0.7  # signs of random projections are balanced
    np.testing.assert_array_equal(codes[0], (gallery[0] @ q) > 0)
    probes = m.transform_probe(probe, uid)
    np.testing.assert_allclose(m.match(probes, codes), 1 - np.mean(probes != codes, axis=1))
    assert m.bytes_per_template(D) == 5
    with pytest.raises(InvalidInputError, match="exceeds"):
        create_method("biohashing", n_bits=D + 1).protect_gallery(gallery, uid)


def test_gaussian_noise_has_the_requested_relative_size(clustered):
    gallery, probe, uid = clustered
    stored = create_method("gaussian", budget=0.3).protect_gallery(gallery, uid)
    ratio = np.linalg.norm(stored - gallery, axis=1) / np.linalg.norm(gallery, axis=1)
    np.testing.assert_allclose(ratio, 0.3, rtol=1e-4)


def test_slerpface_reduces_to_cosine_without_rotation_or_dropout(clustered):
    gallery, probe, uid = clustered
    m = create_method("slerpface", alpha=0.0, drop=0.0)
    raw = create_method("none")
    np.testing.assert_allclose(m.match(m.transform_probe(probe, uid), m.protect_gallery(gallery, uid)),
                               raw.match(probe, gallery), atol=1e-5)
    rotated = create_method("slerpface", alpha=0.8, drop=0.0).protect_gallery(gallery, uid)
    key = create_method("slerpface", alpha=0.8, drop=0.0).user_key(int(uid[0]), D)
    # rotation moves the template toward the user's key on the sphere
    assert rotated[0] @ key["key"][key["kept_dims"]] > 0.8
    with pytest.raises(InvalidInputError, match="divisible"):
        create_method("slerpface", groups=5).protect_gallery(gallery, uid)


@pytest.mark.parametrize("name", BASELINES)
def test_bad_input_is_rejected(name, clustered):
    gallery, probe, uid = clustered
    m = create_method(name)
    bad_inputs = [
        (gallery[0], uid[:1]),  # 1-D embedding
        (gallery[:0], uid[:0]),  # empty
        (np.zeros((2, 0)), uid[:2]),  # zero-dimensional embeddings
        (gallery, uid[:-1]),  # one id short
        (gallery[:2], np.array([-1, 3])),  # negative id
        (gallery[:2], np.array([1.5, 2.0])),  # non-integer ids
        (np.zeros((2, D)), uid[:2]),  # no direction
        (np.array([["a"] * D]), uid[:1]),  # not numbers
    ]
    for z, ids in bad_inputs:
        with pytest.raises(InvalidInputError):
            m.protect_gallery(z, ids)
        with pytest.raises(InvalidInputError):
            m.transform_probe(z, ids)
    nan = gallery[:2].copy()
    nan[1, 3] = np.nan
    with pytest.raises(NonFiniteError):
        m.protect_gallery(nan, uid[:2])
    stored = m.protect_gallery(gallery, uid)
    with pytest.raises(InvalidInputError):
        m.match(m.transform_probe(probe, uid)[:-1], stored)
    fitted = create_method(name).fit(gallery)
    assert fitted.dim == D
    with pytest.raises(InvalidInputError, match="64-dimensional"):
        fitted.transform_probe(gallery[:, :32], uid)
    assert fitted.fit(gallery[:, :32]).dim == 32  # re-fitting adopts the new size


def test_keyed_methods_expose_the_user_key():
    for name in BASELINES:
        assert isinstance(create_method(name), KeyedMethod) == (name in KEYED)
    with pytest.raises(InvalidInputError):
        create_method("mlphash").user_key(-3, D)


# ---------------------------------------------------------------- real LFW embeddings (fr128)
@pytest.fixture(scope="module")
def lfw_pairs(lfw_root, fr128):
    from facecore.data import IdentityFolderDataset, pair_indices, read_pairs
    from facecore.embeddings import extract_embeddings

    ds = IdentityFolderDataset.from_folder(lfw_root)
    emb = extract_embeddings(fr128, ds, progress=False)
    protocol = read_pairs(lfw_root.parent / "pairs.txt")
    left, right = pair_indices(ds, protocol)
    return emb[left], emb[right], ds.labels[left], protocol


@pytest.mark.data
@pytest.mark.parametrize("name", BASELINES)
def test_lfw_accuracy_of_each_baseline(name, lfw_pairs):
    """Normal-case protocol: gallery = first image under its own id; probe = second image, same claimed id."""
    from facecore.metrics import kfold_accuracy

    first, second, claimed, protocol = lfw_pairs
    m = create_method(name)
    scores = m.match(m.transform_probe(second, claimed), m.protect_gallery(first, claimed))
    result = kfold_accuracy(scores, protocol.issame, protocol.folds)
    print(f"LFW fr128 {name}: {100 * result.accuracy:.2f} ± {100 * result.std:.2f} %")
    assert result.accuracy > 0.90
