"""Decoders, generator training, PGD, resumable checkpoints and a 2-process torchrun (gloo) run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advface_sdk.models.decoders import FaceDecoder, PriorShadow
from advface_sdk.models.generator import NoiseGenerator
from advface_sdk.pgd import pgd_protect
from advface_sdk.training.generator import GeneratorTrainConfig, adversarial_losses, total_loss, train_generator
from advface_sdk.training.reconstruction import DecoderTrainConfig, train_decoder
from facecore.errors import DataError, IncompatibleError, InvalidInputError
from facecore.training.face_pack import FaceTrainingSet


def synthetic_set(n=48, dim=16, size=64, ids=12, seed=0) -> FaceTrainingSet:
    """Images that are a smooth function of the embedding, so a decoder can learn the mapping."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    labels = np.arange(n) % ids
    emb = (centres[labels] + 0.1 * rng.standard_normal((n, dim))).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.stack([np.stack([np.sin(3 * xx * e[0] + e[1]), np.cos(3 * yy * e[2] + e[3]), xx * yy * e[4]], -1)
                       for e in emb])
    images = ((images - images.min()) / np.ptp(images) * 255).astype(np.uint8)
    return FaceTrainingSet(images, emb, labels, [f"id{i}" for i in range(ids)], [f"id{l}/{i}.jpg" for i, l in enumerate(labels)], "synthetic")


@pytest.mark.parametrize("arch", ["upconv", "deconv"])
@pytest.mark.parametrize("size", [64, 112])
def test_decoder_shapes_and_roundtrip(tmp_path, arch, size):
    torch.manual_seed(0)
    dec = FaceDecoder(20, size, arch, width=8).eval()
    z = torch.randn(3, 20)
    out = dec(z)
    assert out.shape == (3, 3, size, size) and out.min() >= 0 and out.max() <= 1
    dec.save_pretrained(tmp_path / "d", {"note": "x"})
    again = FaceDecoder.from_pretrained(tmp_path / "d")
    assert torch.allclose(again(z), out, atol=1e-6) and again.extra_config["note"] == "x"
    with pytest.raises(InvalidInputError):
        FaceDecoder(20, 96)


def test_training_pack_roundtrip_and_errors(tmp_path):
    s = synthetic_set()
    s.save(tmp_path / "p.npz")
    back = FaceTrainingSet.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.embeddings, s.embeddings)
    assert np.abs(back.images.astype(int) - s.images).mean() < 4  # JPEG q95
    assert (back.partners() != np.arange(len(s)))[s.labels >= 0].all()  # every identity has 4 images here
    with pytest.raises(DataError):
        FaceTrainingSet.load(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError):
        FaceTrainingSet.load(tmp_path / "bad.npz")


def test_decoder_learns_and_resumes_identically(tmp_path):
    torch.set_num_threads(1)
    data = synthetic_set()
    cfg = DecoderTrainConfig(epochs=4, batch_size=16, lr=3e-3, width=8, seed=1)
    full, state = train_decoder(data, None, cfg, progress=False)
    hist = [h["pixel"] for h in state["history"]]
    assert hist[-1] < hist[0]
    first, _ = train_decoder(data, None, DecoderTrainConfig(**{**cfg.__dict__, "max_minutes": 1e-9}), checkpoint_dir=tmp_path / "c", progress=False)
    resumed, st2 = train_decoder(data, None, cfg, checkpoint_dir=tmp_path / "c", progress=False)
    assert st2["epoch"] == 4
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    with pytest.raises(IncompatibleError):
        train_decoder(data, None, DecoderTrainConfig(**{**cfg.__dict__, "width": 16}), checkpoint_dir=tmp_path / "c", progress=False)


def test_generator_training_damages_the_shadow_within_budget():
    torch.set_num_threads(1)
    data = synthetic_set()
    shadow, _ = train_decoder(data, None, DecoderTrainConfig(epochs=25, batch_size=8, lr=5e-3, width=8), progress=False)
    cfg = GeneratorTrainConfig(budget=0.5, hidden=32, epochs=40, batch_size=16, lr=5e-3, utility_weight=0,
                               genuine_weight=0, margin_weight=0)
    gen, state = train_generator(data, shadow, None, cfg, progress=False)
    images, z, _ = data.tensors(torch.device("cpu"))
    torch.manual_seed(5)
    untrained = NoiseGenerator(16, 32, 0.5)
    with torch.no_grad():
        out = gen(z)
        damage = F.l1_loss(shadow(out), images)
        assert damage > F.l1_loss(shadow(untrained(z)), images) + 0.01  # learned noise beats random directions
        assert damage > F.l1_loss(shadow(z), images) + 0.01
    unit = F.normalize(z, dim=1)
    delta = out / z.norm(dim=1, keepdim=True) - unit
    assert torch.allclose(delta.norm(dim=1), torch.full((len(z),), 0.5), atol=1e-4)
    assert (delta * unit).sum(1).abs().max() < 1e-4


def test_pgd_reference_respects_the_constraint_and_beats_random_noise():
    torch.manual_seed(0)
    data = synthetic_set()
    shadow, _ = train_decoder(data, None, DecoderTrainConfig(epochs=2, batch_size=16, width=8), progress=False)
    images, z, labels = data.tensors(torch.device("cpu"))
    cfg = GeneratorTrainConfig(budget=0.5)
    prot = pgd_protect(z[:16], labels[:16], images[:16], shadow, None, cfg, steps=15)
    unit = F.normalize(z[:16], dim=1)
    delta = prot / z[:16].norm(dim=1, keepdim=True) - unit
    assert torch.allclose(delta.norm(dim=1), torch.full((16,), 0.5), atol=1e-4)
    rand = torch.randn_like(unit)
    rand = rand - (rand * unit).sum(1, keepdim=True) * unit
    rand = (unit + 0.5 * F.normalize(rand, dim=1)) * z[:16].norm(dim=1, keepdim=True)
    with torch.no_grad():
        obj = lambda p: float(total_loss(adversarial_losses(p, z[:16], labels[:16], images[:16], shadow, None, cfg), cfg))
        assert obj(prot) < obj(rand)


def test_distortion_term_measures_score_shifts_and_training_lowers_it():
    torch.manual_seed(0)
    data = synthetic_set()
    images, z, labels = data.tensors(torch.device("cpu"))
    gen = NoiseGenerator(16, 32, 0.5)
    shadow = FaceDecoder(16, 64, width=8).eval()
    cfg = GeneratorTrainConfig(budget=0.5, distortion_weight=1.0)
    with torch.no_grad():
        prot = gen(z)
        terms = adversarial_losses(prot, z, labels, images, shadow, None, cfg)
    unit = F.normalize(z, dim=1)
    delta = prot / z.norm(dim=1, keepdim=True) - unit
    shifts = delta @ unit.t()  # how far δ moves each template's score against the other templates
    expected = shifts.masked_fill(torch.eye(len(z), dtype=torch.bool), 0).square().mean()
    assert torch.allclose(terms["distortion"], expected, rtol=1e-4)
    assert "distortion" not in adversarial_losses(prot, z, labels, images, shadow, None, GeneratorTrainConfig(budget=0.5))

    base = dict(budget=0.5, hidden=32, epochs=15, batch_size=16, lr=5e-3, seed=3)
    plain, _ = train_generator(data, shadow, None, GeneratorTrainConfig(**base), progress=False)
    tuned, state = train_generator(data, shadow, None, GeneratorTrainConfig(**base, distortion_weight=50.0),
                                   progress=False, init=plain)
    with torch.no_grad():
        measure = lambda g: float(adversarial_losses(g(z), z, labels, images, shadow, None, cfg)["distortion"])
        assert measure(tuned) < 0.7 * measure(plain)
    assert state["history"][-1]["distortion"] < state["history"][0]["distortion"]
    with pytest.raises(IncompatibleError):
        train_generator(data, shadow, None, GeneratorTrainConfig(**{**base, "hidden": 64}), progress=False, init=plain)


def _small_prior(dim: int = 16):
    from vigface_sdk.models.autoencoder import FaceAutoencoder

    torch.manual_seed(1)
    ae = FaceAutoencoder(image_size=64, block_out_channels=(8, 16, 16, 16), cond_dim=dim, cond_embed_dim=32)
    with torch.no_grad():  # a fresh prior barely listens to its prototype; a trained one does, so strengthen it
        ae.cond[2].weight.mul_(30)
        ae.cond[2].bias.mul_(30)
    return ae


def test_generator_trained_against_a_face_prior_moves_what_the_prior_renders():
    torch.set_num_threads(1)
    data = synthetic_set()
    images, z, _ = data.tensors(torch.device("cpu"))
    prior = PriorShadow(_small_prior(), torch.from_numpy(data.images))
    assert prior.latent.shape == (4, 8, 8) and (prior.dim, prior.size) == (16, 64)
    shadow = FaceDecoder(16, 64, width=8).eval()
    cfg = GeneratorTrainConfig(budget=0.5, hidden=32, epochs=15, batch_size=16, lr=5e-3, pixel_weight=0.0, utility_weight=0,
                               genuine_weight=0, margin_weight=0, prior_pixel_weight=1.0)
    gen, state = train_generator(data, shadow, None, cfg, progress=False, prior=prior)
    assert "prior_pixel" in state["history"][0] and "prior_identity" not in state["history"][0]
    torch.manual_seed(5)
    untrained = NoiseGenerator(16, 32, 0.5)
    with torch.no_grad():
        damage = F.l1_loss(prior(gen(z)), images)
        assert damage > F.l1_loss(prior(untrained(z)), images) + 0.004  # learned noise beats random directions
        assert damage > F.l1_loss(prior(z), images) + 0.004
    delta = gen(z).detach() / z.norm(dim=1, keepdim=True) - F.normalize(z, dim=1)
    assert torch.allclose(delta.norm(dim=1), torch.full((len(z),), 0.5), atol=1e-4)  # same budget as without a prior


def test_pgd_from_a_generator_start_lowers_the_objective_with_a_prior_shadow():
    torch.manual_seed(0)
    data = synthetic_set()
    images, z, labels = data.tensors(torch.device("cpu"))
    prior = PriorShadow(_small_prior(), torch.from_numpy(data.images))
    shadow = FaceDecoder(16, 64, width=8).eval()
    cfg = GeneratorTrainConfig(budget=0.5, prior_pixel_weight=1.0)
    start = NoiseGenerator(16, 32, 0.5)(z[:16]).detach()
    prot = pgd_protect(z[:16], labels[:16], images[:16], shadow, None, cfg, steps=10, prior=prior, start=start)
    delta = prot / z[:16].norm(dim=1, keepdim=True) - F.normalize(z[:16], dim=1)
    assert torch.allclose(delta.norm(dim=1), torch.full((16,), 0.5), atol=1e-4)
    with torch.no_grad():
        obj = lambda p: float(total_loss(adversarial_losses(p, z[:16], labels[:16], images[:16], shadow, None, cfg,
                                                            prior=prior), cfg))
        assert obj(prot) < obj(start)
    assert not torch.allclose(prot, start, atol=1e-3)  # PGD moved away from its start


def test_an_ensemble_of_face_priors_averages_their_terms():
    torch.manual_seed(0)
    data = synthetic_set()
    images, z, labels = data.tensors(torch.device("cpu"))
    faces = torch.from_numpy(data.images)
    first = PriorShadow(_small_prior(), faces)
    torch.manual_seed(3)
    from vigface_sdk.models.autoencoder import FaceAutoencoder
    second = PriorShadow(FaceAutoencoder(image_size=64, block_out_channels=(8, 8, 16, 16), cond_dim=16, cond_embed_dim=16), faces)
    shadow, rec = FaceDecoder(16, 64, width=8).eval(), None
    cfg = GeneratorTrainConfig(budget=0.5, prior_pixel_weight=1.0)
    prot = NoiseGenerator(16, 32, 0.5)(z[:16]).detach()
    with torch.no_grad():
        terms = [adversarial_losses(prot, z[:16], labels[:16], images[:16], shadow, rec, cfg, prior=p)
                 for p in (first, second, [first, second])]
    assert abs(terms[0]["prior_pixel"] - terms[1]["prior_pixel"]) > 1e-4  # two different priors, two different renders
    assert torch.allclose(terms[2]["prior_pixel"], (terms[0]["prior_pixel"] + terms[1]["prior_pixel"]) / 2, atol=1e-5)
    for key in ("pixel", "utility", "margin"):  # the pixel decoder's terms do not change with the ensemble
        assert torch.allclose(terms[2][key], terms[0][key], atol=1e-5)
    gen, state = train_generator(data, shadow, rec, GeneratorTrainConfig(**{**cfg.__dict__, "epochs": 1, "batch_size": 16}),
                                 progress=False, prior=[first, second])
    assert "prior_pixel" in state["history"][0]
    with pytest.raises(IncompatibleError):  # one prior of another dimension spoils the ensemble
        train_generator(data, shadow, rec, cfg, progress=False, prior=[first, PriorShadow(_small_prior(8), faces)])


def test_a_prior_behind_a_subspace_renders_what_the_denoising_attacker_feeds_it():
    from advface_sdk.evaluation.denoise import SubspaceDenoiser

    torch.manual_seed(0)
    data = synthetic_set()
    _, z, _ = data.tensors(torch.device("cpu"))
    faces = torch.from_numpy(data.images)
    ae = _small_prior()
    den = SubspaceDenoiser.fit(data.embeddings, k=4)
    plain, behind = PriorShadow(ae, faces), PriorShadow(ae, faces, subspace=(den.mean, den.basis))
    with torch.no_grad():
        assert torch.allclose(behind(z[:8]), plain(torch.from_numpy(den(z[:8].numpy()))), atol=1e-5)
        weak = torch.from_numpy(np.linalg.svd(data.embeddings - data.embeddings.mean(0), full_matrices=False)[2][-1]).float()
        moved = F.normalize(z[:8], dim=1) + 0.5 * weak  # noise where the clean faces do not vary
        assert (behind(moved) - behind(F.normalize(z[:8], dim=1))).abs().max() < (plain(moved) - plain(z[:8])).abs().max()
    with pytest.raises(InvalidInputError):
        PriorShadow(ae, faces, subspace=(den.mean[:3], den.basis))


def test_face_prior_shadow_refuses_mismatches():
    data = synthetic_set()
    shadow = FaceDecoder(16, 64, width=8).eval()
    faces = torch.from_numpy(data.images)
    with pytest.raises(InvalidInputError):
        PriorShadow(_small_prior(), faces.float())
    with pytest.raises(InvalidInputError):
        PriorShadow(_small_prior(), faces[:0])
    cfg = GeneratorTrainConfig(epochs=1, prior_pixel_weight=1.0)
    with pytest.raises(IncompatibleError):
        train_generator(data, shadow, None, cfg, progress=False, prior=PriorShadow(_small_prior(8), faces))
    with pytest.raises(InvalidInputError):  # a weight without a prior
        train_generator(data, shadow, None, cfg, progress=False)
    with pytest.raises(InvalidInputError):  # a prior without a weight
        train_generator(data, shadow, None, GeneratorTrainConfig(epochs=1), progress=False, prior=PriorShadow(_small_prior(), faces))
    with pytest.raises(InvalidInputError):  # the identity term needs the recognizer
        train_generator(data, shadow, None, GeneratorTrainConfig(epochs=1, prior_id_weight=1.0), progress=False,
                        prior=PriorShadow(_small_prior(), faces))


def test_generator_refuses_a_shadow_of_another_dimension():
    with pytest.raises(IncompatibleError):
        train_generator(synthetic_set(dim=16), FaceDecoder(8, 64, width=8), None, GeneratorTrainConfig(epochs=1), progress=False)
    with pytest.raises(InvalidInputError):
        NoiseGenerator(16, budget=3.0)


def test_torchrun_two_cpu_processes_train_a_shadow(tmp_path):
    data = synthetic_set(n=64)
    data.save(tmp_path / "pack.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}  # torchrun's log dirs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "advface_sdk", "train-shadow", str(tmp_path / "pack.npz"), "--out", str(tmp_path / "shadow"),
           "--id-weight", "0", "--epochs", "2", "--batch-size", "8", "--width", "8", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dec = FaceDecoder.from_pretrained(tmp_path / "shadow")
    assert dec.extra_config["training"]["epoch"] == 2
    assert proc.stdout.count("saved shadow decoder") == 1  # only rank 0 writes
