"""The benchmark's strongest attackers: a decoder trained until early stopping on held-out identities,
and the face-prior attacker that renders stolen templates through the VIGFace face autoencoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advface_sdk.evaluation.face_prior import FacePriorAttacker, load_face_prior
from advface_sdk.training.reconstruction import (ConvergenceConfig, DecoderTrainConfig, save_training_curve,
                                                 split_identities, train_decoder_converged)
from facecore.errors import InvalidInputError
from test_advface_training import synthetic_set


def test_split_identities_holds_out_whole_people_with_two_images():
    labels = np.array([0, 0, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7])
    tr, va = split_identities(labels, 0.3, seed=3)
    assert set(labels[tr.numpy()]).isdisjoint(labels[va.numpy()])
    assert sorted(tr.tolist() + va.tolist()) == list(range(len(labels)))
    assert all((labels == l).sum() >= 2 for l in labels[va.numpy()])
    assert 0.3 * len(labels) <= len(va) < len(labels)
    with pytest.raises(InvalidInputError):
        split_identities(np.arange(5), 0.2)  # nobody has a second image


def test_converged_training_stops_by_patience_and_keeps_the_best_epoch(tmp_path):
    torch.set_num_threads(1)
    data = synthetic_set(n=64, ids=16)
    cfg = DecoderTrainConfig(batch_size=16, lr=3e-3, width=8, seed=1)
    stop = ConvergenceConfig(max_epochs=40, patience=2, warmup_epochs=1, val_fraction=0.25)
    model, info = train_decoder_converged(data, None, cfg, stop, progress=False)
    hist = info["history"]
    assert [h["epoch"] for h in hist] == list(range(info["epochs_run"] + 1))
    watched = [h for h in hist if h["epoch"] > stop.warmup_epochs]
    best = min(watched, key=lambda h: h["val_loss"])
    assert info["best_epoch"] == best["epoch"] and best["val_loss"] < hist[0]["val_loss"]
    assert info["stopped"] in ("patience", "max_epochs")
    if info["stopped"] == "patience":
        assert info["epochs_run"] - info["best_epoch"] == stop.patience
    # the returned weights are the best epoch's: recompute its validation loss
    _, va = split_identities(data.labels, stop.val_fraction, cfg.seed)
    images, emb, _ = data.tensors(torch.device("cpu"))
    with torch.no_grad():
        assert F.l1_loss(model(emb[va]), images[va]).item() == pytest.approx(best["val_loss"], rel=1e-4)
    # inputs that carry nothing about the faces: validation stops improving, patience ends the run early
    noise = torch.randn(len(data), 16, generator=torch.Generator().manual_seed(9))
    _, flat = train_decoder_converged(data, None, cfg, ConvergenceConfig(max_epochs=40, patience=2, val_fraction=0.25,
                                                                         min_delta=0.05), inputs=noise, progress=False)
    assert flat["stopped"] == "patience" and flat["epochs_run"] < 40
    as_attacker = {"best_epoch": flat["best_epoch"], "curve": flat["history"]}  # train_attacker's summary form
    save_training_curve({"informative": info, "noise": as_attacker}, tmp_path / "c.json", tmp_path / "c.png", "t")
    assert json.loads((tmp_path / "c.json").read_text())["informative"]["best_epoch"] == info["best_epoch"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InvalidInputError):
        ConvergenceConfig(max_epochs=3, warmup_epochs=3)


def _prior_faces(n: int):
    """The shipped prior, ``n`` random unit prototypes and the attacker's "faces": the prior's own renderings of them."""
    torch.manual_seed(0)
    ae = load_face_prior()
    rng = np.random.default_rng(0)
    protos = rng.standard_normal((n, ae.cond_dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    with torch.no_grad():
        lat = torch.randn(n, *ae.latent_shape, generator=torch.Generator().manual_seed(1))
        images = ((ae.decode(lat, torch.from_numpy(protos).float()).clamp(-1, 1) + 1) * 127.5).byte().permute(0, 2, 3, 1).numpy()
    return ae, rng, protos, images


def test_face_prior_attacker_learns_the_template_map_and_renders_faces():
    n = 600
    ae, rng, protos, images = _prior_faces(n)
    labels = np.arange(n) // 2
    q, _ = np.linalg.qr(rng.standard_normal((ae.cond_dim, ae.cond_dim)))
    templates = protos @ q + 0.01 * rng.standard_normal(protos.shape)  # a keyless linear scheme
    fp = FacePriorAttacker.fit(templates, protos, images, labels, ae, seed=0)
    new = rng.standard_normal((20, ae.cond_dim))
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    pred = fp.prototypes(new @ q)
    assert np.mean(np.sum(pred * new, axis=1)) > 0.9  # the map is learned from the attacker's own faces
    unrelated = FacePriorAttacker.fit(rng.standard_normal(protos.shape), protos, images, labels, ae, seed=0)
    assert unrelated.info["val_cosine_ridge"] < 0.3 and unrelated.info["val_cosine_mlp"] < 0.3  # a secret per face
    faces = fp.reconstruct(new @ q)
    assert faces.shape == (20, ae.image_size, ae.image_size, 3) and faces.dtype == np.uint8
    assert np.abs(faces[0].astype(int) - faces[1]).mean() > 1  # identity comes from the template
    with pytest.raises(InvalidInputError):
        FacePriorAttacker.fit(templates[:10], protos[:9], images[:10], labels[:10], ae)


@pytest.mark.data
def test_matcher_search_climbs_the_deployments_own_match_score(fr128, lfw_root):
    """A thief who can compute the match score refines the map's render until the recognizer accepts it better."""
    from facecore.data import IdentityFolderDataset

    n = 200
    ae, _, protos, images = _prior_faces(n)
    fp = FacePriorAttacker.fit(protos, protos, images, np.arange(n) // 2, ae, seed=0)  # raw fr128 templates
    ds = IdentityFolderDataset.from_folder(lfw_root)
    stolen = fr128.embed(np.stack([ds.load(i) for i in range(0, 1000, 250)]))
    rec = fr128.to_torch()

    def score(faces: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
            return F.cosine_similarity(rec(x), torch.from_numpy(stolen), dim=1).numpy()

    searched = fp.search(stolen, rec, steps=15, batch=3, seed=0)
    assert searched.shape == (4, ae.image_size, ae.image_size, 3) and searched.dtype == np.uint8
    before, after = score(fp.reconstruct(stolen)), score(searched)
    assert (after > before + 0.03).all() and after.mean() > before.mean() + 0.05, (before, after)
    assert np.array_equal(searched, fp.search(stolen, rec, steps=15, batch=3, seed=0))  # seeded
    blocked = fp.search(stolen, rec, steps=15, batch=3, seed=0, probe=lambda e: e * 0 + 1)  # the probe is in the objective
    assert score(blocked).mean() < after.mean()
    for bad in (stolen[:0], np.full_like(stolen, np.nan), stolen[:, :64]):
        with pytest.raises(InvalidInputError):
            fp.search(bad, rec, steps=2)
    with pytest.raises(InvalidInputError):
        fp.search(stolen, rec, steps=0)
