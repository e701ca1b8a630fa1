"""Per-user salts (1:1 verification): salted templates and probes, wrong salts, bad salts, the CLI and the benchmark method."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from advface_sdk import DeploymentKey, Protector, new_salt, prepare_probe, protect
from advface_sdk.cli import main as cli
from advface_sdk.keys import SALT_BYTES, as_salt
from facecore.errors import DeploymentKeyError, InvalidInputError, NonFiniteError
from facecore.metrics import cosine_scores


@pytest.fixture(scope="module")
def keyed(keyfile):
    return Protector("fr128", backend="onnxruntime", key=keyfile)


@pytest.fixture(scope="module")
def z():
    return np.random.default_rng(5).standard_normal((40, 128)).astype(np.float32) * 3.0


def test_salts(keyfile):
    s = new_salt()
    assert isinstance(s, bytes) and len(s) == SALT_BYTES and s != new_salt()
    assert as_salt(s.hex()) == as_salt(s.hex().upper()) == as_salt(bytearray(s)) == s
    key = DeploymentKey.load(keyfile)
    m = key.salted_rotation(s, 128)
    assert np.allclose(m @ m.T, np.eye(128), atol=1e-12) and not m.flags.writeable
    assert np.array_equal(m, key.salted_rotation(s.hex(), 128))
    assert not np.allclose(m, key.salted_rotation(new_salt(), 128))
    other = DeploymentKey.generate(key.protector_id)  # same salt, another key: another rotation
    assert np.abs(m - other.salted_rotation(s, 128)).max() > 0.1
    q = m @ key.rotation(128).T  # Q_u alone is far from the identity: the salt is more than a relabelling
    assert np.abs(np.trace(q)) < 40


def test_genuine_impostor_and_wrong_salt(plain, keyed, z):
    """Same salt: exactly AdvFace's scores; the wrong salt scores like an impostor."""
    rng = np.random.default_rng(0)
    salts = [rng.bytes(16) for _ in z]  # seeded: the impostor bound below is then a fixed check, not a dice roll
    genuine = z + 0.6 * rng.standard_normal(z.shape).astype(np.float32) * np.abs(z).mean()
    stored = keyed.protect(z, salts)
    assert stored.shape == z.shape and stored.dtype == z.dtype
    assert np.allclose(np.linalg.norm(stored, axis=1), np.linalg.norm(plain.protect(z), axis=1), rtol=1e-5)
    ref_genuine, ref_impostor = cosine_scores(plain.protect(z), genuine), cosine_scores(plain.protect(z), np.roll(genuine, 1, 0))
    same = cosine_scores(stored, keyed.prepare_probe(genuine, salts))
    assert np.abs(same - ref_genuine).max() < 1e-5 and ref_genuine.min() > 0.3
    impostor = cosine_scores(stored, keyed.prepare_probe(np.roll(genuine, 1, 0), salts))
    assert np.abs(impostor - ref_impostor).max() < 1e-5
    wrong = cosine_scores(stored, keyed.prepare_probe(genuine, [rng.bytes(16) for _ in z]))
    unsalted = cosine_scores(stored, keyed.prepare_probe(genuine))
    bound = 5 / np.sqrt(z.shape[1])  # 5 sd of the cosine between a fixed and a uniformly random direction
    for scores in (wrong, unsalted):  # the genuine face under the wrong (or no) salt: impostor-level scores
        assert np.abs(scores).max() < min(bound, ref_genuine.min() * 0.75) and abs(scores.mean()) < 0.1
    assert np.abs(cosine_scores(stored, keyed.protect(z))).mean() < 0.15  # salting moves templates away from the keyed ones


def test_salts_none_is_unchanged_and_rows_match_single_calls(keyed, keyfile, z):
    assert np.array_equal(keyed.protect(z, None), keyed.protect(z))
    assert np.array_equal(keyed.prepare_probe(z, salts=None), keyed.prepare_probe(z))
    salts = [new_salt() for _ in range(3)]
    per_row = [salts[i % 3] for i in range(len(z))]
    for fn in (keyed.protect, keyed.prepare_probe):
        batch = fn(z, per_row)
        rows = np.stack([fn(z[i], per_row[i]) for i in range(len(z))])
        np.testing.assert_allclose(batch, rows, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fn(z, [s.hex() for s in per_row]), batch, rtol=0, atol=0)
        one = fn(z, salts[0])
        assert np.array_equal(one, fn(z, [salts[0]] * len(z)))
    small = Protector("fr128", backend="onnxruntime", key=keyfile, batch_size=7)  # salts follow rows across batches
    np.testing.assert_allclose(small.protect(z, per_row), keyed.protect(z, per_row), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(protect(z, key=keyfile, salts=per_row), keyed.protect(z, per_row), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prepare_probe(z, key=keyfile, salts=per_row), keyed.prepare_probe(z, per_row),
                               rtol=1e-5, atol=1e-5)
    import torch

    t = torch.from_numpy(z)
    np.testing.assert_allclose(keyed.protect(t, per_row).numpy(), keyed.protect(z, per_row), rtol=1e-5, atol=1e-5)
    torch_backend = Protector("fr128", backend="torch", key=keyfile)
    np.testing.assert_allclose(torch_backend.protect(t, per_row).numpy(), keyed.protect(z, per_row), rtol=1e-4, atol=1e-5)
    assert torch.equal(keyed.prepare_probe(t, per_row), torch.from_numpy(keyed.prepare_probe(z, per_row)))


@pytest.mark.parametrize("salts,error,words", [
    (b"short", InvalidInputError, "16 bytes"),
    ("zz" * 16, InvalidInputError, "hex digits"),
    ("ab" * 15, InvalidInputError, "got 15 bytes"),
    (12345, InvalidInputError, "one salt or a sequence"),
    ([b"\0" * 16] * 3, InvalidInputError, "3 salts for 40 embeddings"),
    ([b"\0" * 16] * 39 + [None], InvalidInputError, "NoneType"),
])
def test_bad_salts_are_refused(keyed, z, salts, error, words):
    for fn in (keyed.protect, keyed.prepare_probe):
        with pytest.raises(error, match=words):
            fn(z, salts)


def test_salts_need_a_key_and_finite_input(plain, keyed, z):
    for fn in (plain.protect, plain.prepare_probe):
        with pytest.raises(DeploymentKeyError, match="key="):
            fn(z, new_salt())
    bad = z.copy()
    bad[3, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"rows \[3\]"):
        keyed.protect(bad, new_salt())


def test_cli_salt_round_trip(tmp_path, keyfile, keyed, z):
    runner = CliRunner()
    r = runner.invoke(cli, ["salt"])
    assert r.exit_code == 0
    salt = r.output.strip()
    assert len(as_salt(salt)) == SALT_BYTES
    np.save(tmp_path / "emb.npy", z)
    for cmd, out, fn in (("protect", "t.npz", keyed.protect), ("prepare-probe", "p.npz", keyed.prepare_probe)):
        r = runner.invoke(cli, [cmd, str(tmp_path / "emb.npy"), str(tmp_path / out), "-K", str(keyfile), "--salt", salt])
        assert r.exit_code == 0 and "salt" in r.output, r.output
        kind = "templates" if cmd == "protect" else "probes"
        np.testing.assert_allclose(keyed.load_keyed(tmp_path / out, kind), fn(z, salt), rtol=1e-5, atol=1e-5)
    r = runner.invoke(cli, ["prepare-probe", str(tmp_path / "emb.npy"), str(tmp_path / "s.npz"), "-K", str(keyfile),
                            "--salt", "-"], input=salt + "\n")
    assert r.exit_code == 0 and np.array_equal(keyed.load_keyed(tmp_path / "s.npz", "probes"),
                                               keyed.load_keyed(tmp_path / "p.npz", "probes"))
    for args in (["--salt", salt], ["-K", str(keyfile), "--salt", "abc"]):
        r = runner.invoke(cli, ["protect", str(tmp_path / "emb.npy"), str(tmp_path / "x.npz"), *args])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and r.output.startswith("error:"), r.output
        assert not (tmp_path / "x.npz").exists()


def test_benchmark_method_uses_the_claimed_users_salt(z):
    from advface_sdk.evaluation import create_method

    m = create_method("advface-salted", artifact="fr128").fit(z)
    users = np.arange(len(z)) % 5
    stored = m.protect_gallery(z, users)
    assert m.keyed and np.array_equal(stored, m.protect_gallery(z, users))
    genuine = m.match(m.transform_probe(z, users), stored)
    plain = create_method("advface", artifact="fr128").fit(z)
    np.testing.assert_allclose(genuine, plain.match(plain.transform_probe(z, users), plain.protect_gallery(z, users)), atol=1e-5)
    wrong_claim = m.match(m.transform_probe(z, (users + 1) % 5), stored)
    assert np.abs(wrong_claim).max() < genuine.min() / 2
    assert m.salt(3) == m.salt(3) != m.salt(4) != create_method("advface-salted", seed=1).salt(4)
