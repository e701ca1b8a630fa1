"""The PCA-denoising attacker front-end: a thief projects stolen templates onto the principal subspace of clean
embeddings of his own faces, without any SDK output."""

from __future__ import annotations

import numpy as np
import pytest

from advface_sdk.evaluation.denoise import SubspaceDenoiser
from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError


def _anisotropic(n: int, rng) -> np.ndarray:
    scale = np.array([4.0, 3.0, 2.0, 1.5] + [0.05] * 12)  # four strong directions in 16, then rotated
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    return (rng.standard_normal((n, 16)) * scale + 5 * q[0]) @ q.T


def test_variance_rule_keeps_the_strong_directions_and_removes_noise_in_weak_ones():
    rng = np.random.default_rng(0)
    x = _anisotropic(2000, rng)
    den = SubspaceDenoiser.fit(x, variance=0.9)
    assert den.k <= 4 and den.variance_kept >= 0.9 and den.info == {"k": den.k, "variance_kept": round(den.variance_kept, 4)}
    assert SubspaceDenoiser.fit(x, k=7).k == 7
    clean = l2_normalize(_anisotropic(200, rng))
    weak = np.linalg.svd(l2_normalize(x) - l2_normalize(x).mean(0), full_matrices=False)[2][-3:]  # weakest directions
    noisy = clean + rng.standard_normal((200, 3)) @ weak
    before = np.sum(l2_normalize(noisy) * clean, 1).mean()
    after = np.sum(den(noisy) * clean, 1).mean()
    ceiling = np.sum(den(clean) * clean, 1).mean()
    assert after > before + 0.05 and after > ceiling - 0.05 and den(noisy).dtype == np.float32
    assert np.allclose(np.linalg.norm(den(noisy), axis=1), 1, atol=1e-5)


def test_bad_input_is_refused():
    rng = np.random.default_rng(1)
    x = _anisotropic(100, rng)
    den = SubspaceDenoiser.fit(x, k=3)
    for bad in (x[:1], np.full_like(x, np.nan), x[:, 0]):
        with pytest.raises(InvalidInputError):
            SubspaceDenoiser.fit(bad)
    for kwargs in ({"k": 0}, {"k": 17}, {"variance": 1.5}):
        with pytest.raises(InvalidInputError):
            SubspaceDenoiser.fit(x, **kwargs)
    with pytest.raises(InvalidInputError, match=r"\(N, 16\)"):
        den(x[:, :8])


@pytest.mark.data
def test_projection_undoes_most_of_the_shipped_fr128_noise(lfw_root, fr128, plain):
    """Measured weakness, kept as a regression figure: AdvFace's fr128 noise lies where clean embeddings barely
    vary, so a projection fitted on clean faces alone takes most of it out."""
    from facecore.data import IdentityFolderDataset
    from facecore.embeddings import extract_embeddings

    ds = IdentityFolderDataset.from_folder(lfw_root)
    z = l2_normalize(extract_embeddings(fr128, ds, progress=False).astype(np.float64))  # cached on disk
    thief = ds.labels % 2 == 0  # his own faces: half of the identities
    den = SubspaceDenoiser.fit(z[thief], variance=0.9)
    victims = z[~thief][:2000]
    stored = l2_normalize(np.asarray(plain.protect(victims.astype(np.float32)), np.float64))
    protected = np.sum(stored * victims, 1).mean()
    denoised = np.sum(den(stored) * victims, 1).mean()
    ceiling = np.sum(den(victims) * victims, 1).mean()  # what the projection keeps of a raw template
    noise = stored - np.sum(stored * victims, 1, keepdims=True) * victims  # the part of the template ⟂ the clean one
    outside = 1 - np.square(noise @ den.basis).sum() / np.square(noise).sum()
    print(f"cos to clean: stored {protected:.3f}, denoised {denoised:.3f}, denoised raw {ceiling:.3f}; noise energy in "
          f"the {128 - den.k} weakest principal directions ({100 * (1 - den.variance_kept):.1f} % of the clean variance): "
          f"{100 * outside:.1f} %")
    assert protected < 0.82 and denoised > protected + 0.03 and denoised > ceiling - 0.05 and outside > 0.7
