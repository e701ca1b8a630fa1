"""VIGFace stage 2: the identity-conditioned autoencoder, the latent denoiser, diffusers schedulers,
the pipeline's persistence and determinism, training resumption, and the shipped default pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError
from vigface_sdk import FaceAutoencoder, PrototypeDenoiser, VIGFacePipeline, VirtualPrototypeSampler, load_pipeline, sample_seed
from vigface_sdk.training.autoencoder import AutoencoderTrainConfig, identity_prototypes, train_autoencoder
from vigface_sdk.training.diffusion import (TRAIN_SCHEDULER, DiffusionTrainConfig, build_pipeline, nearest_stranger_median,
                                            train_latent_diffusion)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY_AE = dict(image_size=16, latent_channels=2, block_out_channels=(8, 16), cond_dim=8, cond_embed_dim=16, norm_groups=4)
TINY_DEN = dict(sample_size=8, latent_channels=2, cond_dim=8, block_out_channels=(16, 32), layers_per_block=1,
                attention_head_dim=8, norm_num_groups=8)


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers make an untrained model ignore its inputs; wake every weight up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture(scope="module")
def pipe() -> VIGFacePipeline:
    torch.manual_seed(0)
    ae = _perturbed(FaceAutoencoder(**TINY_AE, condition={"recognizer": "r", "fingerprint": "fp"}))
    den = _perturbed(PrototypeDenoiser(**TINY_DEN), 1)
    sched = DPMSolverMultistepScheduler.from_config(DDPMScheduler(**TRAIN_SCHEDULER).config)
    sampler = VirtualPrototypeSampler.fit(np.random.default_rng(0).standard_normal((30, 8)))
    return VIGFacePipeline(ae, den, sched, sampler)


def test_autoencoder_shapes_round_trip_and_refusals(tmp_path):
    ae = _perturbed(FaceAutoencoder(**TINY_AE))
    x, p = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 8)
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, 2, 8, 8) == (3, *ae.latent_shape)
    with torch.no_grad():
        out = ae.decode(mean, p)
    assert out.shape == (3, 3, 16, 16)
    ae.save_pretrained(tmp_path / "ae")
    back = FaceAutoencoder.from_pretrained(tmp_path / "ae")
    with torch.no_grad():
        assert torch.equal(back.decode(mean, p), out)
    ae.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert (tmp_path / "half" / "autoencoder.safetensors").stat().st_size < 0.6 * (tmp_path / "ae" / "autoencoder.safetensors").stat().st_size
    with torch.no_grad():
        assert (FaceAutoencoder.from_pretrained(tmp_path / "half").decode(mean, p) - out).abs().max() < 0.05
    with pytest.raises(IncompatibleError):
        ae.decode(mean, torch.randn(3, 9))
    with pytest.raises(InvalidInputError):
        ae.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ArtifactError, match="PrototypeDenoiser"):
        PrototypeDenoiser.from_pretrained(tmp_path / "ae")
    w = tmp_path / "ae" / "autoencoder.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="checksum"):
        FaceAutoencoder.from_pretrained(tmp_path / "ae")


def test_the_prototype_decides_the_decoded_face():
    ae = _perturbed(FaceAutoencoder(**TINY_AE))
    z = torch.randn(2, *ae.latent_shape)
    p = torch.randn(1, 8).expand(2, -1)
    with torch.no_grad():
        a, b = ae.decode(z, p), ae.decode(z, torch.randn(2, 8))
    assert (a - b).abs().mean() > 1e-3


def test_denoiser_conditioning_and_null_condition():
    den = _perturbed(PrototypeDenoiser(**TINY_DEN))
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 500])
    p1, p2 = torch.randn(2, 8), torch.randn(2, 8)
    drop = torch.tensor([True, True])
    with torch.no_grad():
        assert (den(x, t, p1) - den(x, t, p2)).abs().mean() > 1e-4
        assert torch.equal(den(x, t, p1, drop), den(x, t, p2, drop))  # dropped: the prototype no longer matters
    with pytest.raises(IncompatibleError):
        den(x, t, torch.randn(2, 5))


@pytest.mark.parametrize("cls", [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, DDPMScheduler])
def test_scheduler_swap_with_from_config_and_round_trip(pipe, cls, tmp_path):
    original = pipe.scheduler
    try:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
        images = pipe(pipe.virtual_prototypes(2), 2, num_inference_steps=4, seed=3)
        assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8 and images.std() > 0
        pipe.save_pretrained(tmp_path / "p")
        back = VIGFacePipeline.from_pretrained(tmp_path / "p")
        assert type(back.scheduler) is cls and back.fingerprint() == pipe.fingerprint()
        assert np.array_equal(back(pipe.virtual_prototypes(2), 2, num_inference_steps=4, seed=3), images)
    finally:
        pipe.scheduler = original


def test_any_image_regenerates_alone_and_guidance_changes_it(pipe):
    protos = pipe.virtual_prototypes(3)
    batch = pipe(protos, 2, num_inference_steps=5, seed=7)
    alone = pipe(protos[2:3], 1, num_inference_steps=5, generator=[torch.Generator().manual_seed(sample_seed(7, 2, 1))])[0]
    assert np.abs(batch[5].astype(int) - alone).max() <= 1  # image (identity 2, sample 1)
    assert not np.array_equal(batch[0], batch[1])  # samples of one identity differ
    other = pipe(protos, 2, num_inference_steps=5, seed=7, guidance_scale=4.0)
    assert not np.array_equal(other, batch)


def test_bad_prototypes_and_arguments(pipe):
    with pytest.raises(IncompatibleError, match="8-d"):
        pipe(np.ones((2, 5), np.float32))
    for bad in (np.zeros((1, 8)), np.full((1, 8), np.nan), np.zeros((0, 8)), [["a"] * 8]):
        with pytest.raises(InvalidInputError):
            pipe(bad, num_inference_steps=2)
    with pytest.raises(InvalidInputError):
        pipe(pipe.virtual_prototypes(1), guidance_scale=float("inf"))
    with pytest.raises(InvalidInputError):
        pipe(pipe.virtual_prototypes(1), seed=0, generator=torch.Generator())
    with pytest.raises(IncompatibleError, match="recognizer"):
        pipe.check_prototypes(pipe.virtual_prototypes(1), fingerprint="another")


def test_edited_or_foreign_pipeline_files_are_refused(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    cfg = tmp_path / "p" / "scheduler" / "scheduler_config.json"
    text = cfg.read_text()
    cfg.write_text(text.replace('"num_train_timesteps": 1000', '"num_train_timesteps": 10'))
    with pytest.raises(ArtifactError, match="checksum"):
        VIGFacePipeline.from_pretrained(tmp_path / "p")
    cfg.write_text(text)
    index = tmp_path / "p" / "model_index.json"
    index.write_text("[]")
    with pytest.raises(ArtifactError):
        VIGFacePipeline.from_pretrained(tmp_path / "p")
    with pytest.raises(ArtifactError, match="not a VIGFace pipeline"):
        VIGFacePipeline.from_pretrained(tmp_path)
    other = FaceAutoencoder(**{**TINY_AE, "cond_dim": 6})
    with pytest.raises(IncompatibleError):
        VIGFacePipeline(other, pipe.denoiser, pipe.scheduler)


def test_virtual_sampler_excludes_real_identities_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.standard_normal((200, 8)) + 1.5  # a cluster, as real prototypes are
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    tau = nearest_stranger_median(real)
    free = VirtualPrototypeSampler.fit(real)
    kept = VirtualPrototypeSampler.fit(real, exclude=real, max_similarity=tau)
    a = kept.sample(np.arange(50), seed=1)
    assert (a @ real.T).max() <= tau + 1e-6
    assert (free.sample(np.arange(50), seed=1) @ real.T).max(1).mean() > (a @ real.T).max(1).mean()
    assert np.array_equal(kept.sample([7, 3], seed=1), a[[7, 3]])
    kept.save_pretrained(tmp_path / "s")
    back = VirtualPrototypeSampler.from_pretrained(tmp_path / "s")
    assert back.max_similarity == tau and np.allclose(back.sample(np.arange(50), seed=1), a, atol=1e-3)
    with pytest.raises(InvalidInputError, match="raise max_similarity"):
        VirtualPrototypeSampler.fit(real, exclude=real, max_similarity=-0.99).sample([0])


def _faces(n: int = 12, ids: int = 4, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (ids, 4, 4, 3))
    labels = np.arange(n) % ids
    images = np.clip(base[labels].repeat(size // 4, 1).repeat(size // 4, 2) + rng.integers(-20, 20, (n, size, size, 3)), 0, 255)
    return images.astype(np.uint8), labels


def test_autoencoder_training_resumes_bit_for_bit(fr128, tmp_path):
    images, labels = _faces()
    emb = fr128.embed(np.stack([np.kron(im, np.ones((7, 7, 1), np.uint8)) for im in images])[..., ::-1])  # 112px BGR
    rec = fr128.to_torch()
    model = {k: v for k, v in TINY_AE.items() if k not in ("image_size", "cond_dim")}

    def run(steps, ckpt, **kw):
        cfg = AutoencoderTrainConfig(max_steps=steps, batch_size=4, identity_batch=2, checkpoint_every=2, log_every=1,
                                     model=model, **kw)
        return train_autoencoder(images, emb, labels, rec, cfg, checkpoint_dir=ckpt, progress=False)

    straight, log = run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    resumed, log2 = run(4, tmp_path / "b")
    assert log2["step"] == 4 and [h["l1"] for h in log["history"]] == [h["l1"] for h in log2["history"]]
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert {"l1", "kl", "identity", "swap"} <= set(log["history"][-1])
    with pytest.raises(IncompatibleError, match="another run"):
        run(6, tmp_path / "b", kl_weight=0.5)
    w = tmp_path / "b" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-16])
    with pytest.raises(ArtifactError):
        run(6, tmp_path / "b")


def test_diffusion_training_resumes_bit_for_bit_and_builds_a_pipeline(tmp_path):
    images, labels = _faces(n=24, ids=12)
    emb = np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32)[labels]
    ae = _perturbed(FaceAutoencoder(**TINY_AE))
    model = {k: TINY_DEN[k] for k in ("block_out_channels", "layers_per_block", "attention_head_dim", "norm_num_groups")}

    def run(steps, ckpt):
        cfg = DiffusionTrainConfig(max_steps=steps, batch_size=4, checkpoint_every=2, log_every=1, model=model)
        return train_latent_diffusion(ae, images, emb, labels, cfg, checkpoint_dir=ckpt, progress=False)

    m1, e1, sched, log1 = run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    m2, e2, _, log2 = run(4, tmp_path / "b")
    for x, y in ((m1, m2), (e1, e2)):
        assert all(torch.equal(a, b) for a, b in zip(x.state_dict().values(), y.state_dict().values()))
    assert [h["mse"] for h in log1["history"]] == [h["mse"] for h in log2["history"]]
    assert not all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), e1.state_dict().values()))  # EMA lags
    protos = identity_prototypes(emb, labels)
    pipe = build_pipeline(ae, e1, dict(sched.config), protos, metadata={"training": {"steps": 4}})
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler) and pipe.virtual_sampler.max_similarity is not None
    pipe.save_pretrained(tmp_path / "p")
    assert VIGFacePipeline.from_pretrained(tmp_path / "p")(pipe.virtual_prototypes(2), 1, num_inference_steps=2, seed=0).shape == (2, 16, 16, 3)


def test_torchrun_two_process_gloo_training(fr128, lfw_root, tmp_path):
    """``torchrun --nproc_per_node 2 -m vigface_sdk train-diffusion`` on real LFW faces (gloo)."""
    from facecore.data import IdentityFolderDataset
    from facecore.training.face_pack import FaceTrainingSet

    ds = IdentityFolderDataset.from_folder(lfw_root, min_images=20)
    FaceTrainingSet.build(ds.subset(ds.identities[:24]), fr128, 16).save(tmp_path / "pack.npz")
    FaceAutoencoder(**{**TINY_AE, "cond_dim": 128}, condition={"recognizer": "fr128", "fingerprint": fr128.fingerprint}
                    ).save_pretrained(tmp_path / "ae")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}  # torchrun's log dirs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vigface_sdk",
           "train-diffusion", str(tmp_path / "pack.npz"), "-a", str(tmp_path / "ae"), "--out", str(tmp_path / "pipe"),
           "--channels", "16,32", "--steps", "3", "--batch-size", "2", "--device", "cpu", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "pipe.checkpoint" / "state.json").read_text())["step"] == 3
    pipe = VIGFacePipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.cond_dim == 128 and pipe(pipe.virtual_prototypes(1), 1, num_inference_steps=2, seed=0).shape == (1, 16, 16, 3)


# --- the shipped default -------------------------------------------------------------------------
def test_shipped_pipeline_loads_and_makes_faces():
    pipe = load_pipeline()
    assert pipe.image_size == 64 and pipe.cond_dim == 128 and pipe.virtual_sampler.exclude is not None
    images = pipe(pipe.virtual_prototypes(2, seed=5), 2, seed=5)
    assert images.shape == (4, 64, 64, 3) and images.std() > 10
    assert pipe.metadata["training"]["diffusion_command"].startswith("python benchmarks/vigface_train.py")


def test_cli_synthesize_with_the_shipped_pipeline(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vigface_sdk", "synthesize", "--identities", "2", "--per-identity", "3", "--out",
           str(tmp_path / "syn"), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "syn"
    assert sorted(p.name for p in out.iterdir()) == sorted([".shards", "id_000000", "id_000001", "manifest.jsonl", "property",
                                                            "run.json", "train.idx", "train.rec"])
    assert len(list((out / "id_000001").glob("*.jpg"))) == 3 and len((out / "manifest.jsonl").read_text().splitlines()) == 6


def test_identity_variation_from_the_real_spread_is_per_image_deterministic(pipe):
    rng = np.random.default_rng(3)
    protos = rng.standard_normal((30, 8))
    varied = VirtualPrototypeSampler.fit(protos, residuals=3 * rng.standard_normal((60, 8)))
    pv = VIGFacePipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler, varied)
    p = pv.virtual_prototypes(2)
    plain = pv(p, 2, num_inference_steps=3, seed=1, identity_variation=0)
    assert np.array_equal(plain, pipe(p, 2, num_inference_steps=3, seed=1))  # 0: the prototype itself
    batch = pv(p, 2, num_inference_steps=3, seed=1)  # default: the real spread
    assert not np.array_equal(batch, plain)
    alone = pv(p[1:], 1, num_inference_steps=3, generator=[torch.Generator().manual_seed(sample_seed(1, 1, 1))])[0]
    assert np.abs(batch[3].astype(int) - alone).max() <= 1
    with pytest.raises(InvalidInputError, match="spread"):
        pipe(p, 1, num_inference_steps=2, identity_variation=1.0)
    with pytest.raises(InvalidInputError):
        pv(p, 1, num_inference_steps=2, identity_variation=-1)
