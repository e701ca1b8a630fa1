"""VIGFace stage 2 model side: schedulers, UNet, classifier-free guidance, training, resumption, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError
from vigface_sdk.landmarks import LandmarkBank, flip_landmarks, landmark_heatmaps
from vigface_sdk.pipeline import VIGFacePipeline
from vigface_sdk.schedulers import DDIMScheduler, DDPMScheduler, load_scheduler
from vigface_sdk.train_diffusion import (DiffusionData, DiffusionTrainConfig, build_pipeline, diffusion_loss,
                                         train_diffusion)
from vigface_sdk.unet import PrototypeUNet, UNetConfig
from vigface_sdk.virtual import VirtualPrototypeSampler

torch.set_num_threads(1)
TINY = dict(block_out_channels=(8, 16), attention_levels=(False, True), attention_head_dim=8, norm_groups=4,
            layers_per_block=1, cond_dim=8)


def tiny_unet(size: int = 16, seed: int = 0, **kw) -> PrototypeUNet:
    """A tiny UNet with random (not zero-initialised) output layers, so every path affects the output."""
    torch.manual_seed(seed)
    unet = PrototypeUNet(UNetConfig(sample_size=size, **{**TINY, **kw}))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def tiny_data(n: int = 8, size: int = 16, ids: int = 4, dim: int = 8, seed: int = 0) -> DiffusionData:
    rng = np.random.default_rng(seed)  # smooth faces-sized blobs: one coarse pattern per identity, plus noise
    base = rng.integers(0, 255, (ids, 4, 4, 3)).repeat(size // 4, 1).repeat(size // 4, 2)
    images = np.clip(base[np.arange(n) % ids] + rng.integers(-10, 10, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return DiffusionData(images, np.arange(n) % ids, rng.standard_normal((ids, dim)), [f"p{i}" for i in range(ids)])


# --- schedulers --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["v_prediction", "epsilon", "sample"])
def test_add_noise_and_targets_are_consistent(kind):
    s = DDPMScheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(6, 3, 4, 4, generator=g) * 2 - 1, torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    xt = s.add_noise(x0, eps, t)
    a = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    v = s.get_velocity(x0, eps, t)
    assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * v, x0, atol=1e-5)  # x0 from (x_t, v)
    assert torch.allclose((1 - a).sqrt() * xt + a.sqrt() * v, eps, atol=1e-5)  # eps from (x_t, v)
    keep = t < 999 if kind == "epsilon" else slice(None)  # eps -> x0 divides by sqrt(a_t) ~ 0 at the end
    x0_hat = torch.stack([s.predict_original(s.training_target(x0, eps, t)[i:i + 1], t[i], xt[i:i + 1])[0] for i in range(6)])
    assert torch.allclose(x0_hat[keep], x0[keep], atol=1e-3)


def test_schedule_is_monotone_and_ends_near_pure_noise():
    for schedule in ("squaredcos_cap_v2", "linear", "scaled_linear"):
        a = DDPMScheduler(beta_schedule=schedule).alphas_cumprod
        assert (a[1:] < a[:-1]).all() and a[0] > 0.99 and a[-1] < 0.01


@pytest.mark.parametrize("n", [1, 7, 25, 50, 1000])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_set_timesteps_count_and_order(n, spacing):
    s = DDIMScheduler(timestep_spacing=spacing)
    s.set_timesteps(n)
    ts = s.timesteps.tolist()
    assert len(ts) == n == len(set(ts)) and ts == sorted(ts, reverse=True)
    assert 0 <= ts[-1] and ts[0] <= 999
    assert ts[0] == 999 if spacing == "trailing" else ts[-1] == 0
    with pytest.raises(InvalidInputError):
        s.set_timesteps(0)


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_oracle_sampling_recovers_the_clean_image(cls):
    """Fed the exact v of a fixed (x0, eps), DDIM (eta 0) stays on q(x_t | x0, eps) and ends at x0;
    DDPM's last step also returns x0."""
    s = cls()
    s.set_timesteps(20)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(2, 3, 4, 4, generator=g) * 1.6 - 0.8, torch.randn(2, 3, 4, 4, generator=g)
    x = s.add_noise(x0, eps, s.timesteps[:1].expand(2))
    for i, t in enumerate(s.timesteps):
        v = s.get_velocity(x0, eps, t.expand(2))
        if cls is DDPMScheduler:
            x = s.add_noise(x0, eps, t.expand(2))
        x = s.step(v, int(t), x, generator=torch.Generator().manual_seed(i)).prev_sample
        if cls is DDIMScheduler and i + 1 < len(s.timesteps):
            assert torch.allclose(x, s.add_noise(x0, eps, s.timesteps[i + 1].expand(2)), atol=1e-4)
    assert torch.allclose(x, x0, atol=1e-4)


def test_ddim_eta0_is_deterministic_and_eta_uses_the_generator():
    out = {}
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for eta in (0.0, 1.0):
        s = DDIMScheduler(eta=eta)
        s.set_timesteps(10)
        t = int(s.timesteps[3])
        out[eta] = [s.step(v, t, x, generator=torch.Generator().manual_seed(k)).prev_sample for k in (0, 0, 1)]
    assert torch.equal(out[0.0][0], out[0.0][2])  # eta 0: the generator is irrelevant
    assert torch.equal(out[1.0][0], out[1.0][1]) and not torch.allclose(out[1.0][0], out[1.0][2])


def test_scheduler_round_trip_and_swap(tmp_path):
    ddpm = DDPMScheduler(beta_schedule="linear", num_train_timesteps=500)
    ddpm.save_pretrained(tmp_path / "s")
    loaded = load_scheduler(tmp_path / "s")
    assert isinstance(loaded, DDPMScheduler) and loaded.config == ddpm.config
    ddim = DDIMScheduler.from_config(ddpm.config)
    assert torch.equal(ddim.alphas_cumprod, ddpm.alphas_cumprod)
    (tmp_path / "s" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        load_scheduler(tmp_path / "s")
    with pytest.raises(InvalidInputError):
        DDIMScheduler(prediction_type="noise")


# --- UNet --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 112])
def test_unet_shapes(size):
    unet = tiny_unet(size)
    x = torch.randn(2, 3, size, size)
    assert unet(x, torch.tensor([3, 900]), torch.randn(2, 8)).shape == (2, 3, size, size)


def test_default_unet_is_small():
    n = sum(p.numel() for p in PrototypeUNet(UNetConfig()).parameters())
    assert 2e6 < n < 8e6


def test_conditioning_changes_the_output_and_dropout_means_unconditional():
    unet = tiny_unet()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor(400)
    p = torch.randn(3, 8)
    with torch.no_grad():
        a, b = unet(x, t, p), unet(x, t, torch.randn(3, 8))
        assert (a - b).abs().mean() > 1e-3
        assert torch.allclose(unet(x, t, p), unet(x, t, 5 * p), atol=1e-5)  # prototypes are normalised
        mixed = unet(x, t, p, drop_condition=torch.tensor([True, False, True]))
        uncond = unet(x, t, None)
    assert torch.allclose(mixed[[0, 2]], uncond[[0, 2]], atol=1e-5) and torch.allclose(mixed[1], a[1], atol=1e-5)
    with pytest.raises(IncompatibleError):
        unet(x, t, torch.randn(3, 9))


def test_landmark_channels_are_required_and_used():
    unet = tiny_unet(landmark_channels=5)
    x, p = torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    pts = torch.tensor([[[0.35, 0.45], [0.65, 0.45], [0.5, 0.6], [0.38, 0.8], [0.62, 0.8]]]).repeat(2, 1, 1)
    heat = landmark_heatmaps(pts, 16)
    assert heat.shape == (2, 5, 16, 16) and heat.amax(dim=(2, 3)).min() > 0.5
    with pytest.raises(InvalidInputError):
        unet(x, torch.tensor(10), p)
    shifted = landmark_heatmaps(pts + 0.1, 16)
    with torch.no_grad():
        assert (unet(x, torch.tensor(10), p, heat) - unet(x, torch.tensor(10), p, shifted)).abs().mean() > 1e-4
    flipped = flip_landmarks(pts)
    assert torch.allclose(flipped[0, 0], torch.tensor([1 - 0.65, 0.45]))


def test_unet_round_trip_and_corrupt_weights(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "u")
    back = PrototypeUNet.from_pretrained(tmp_path / "u")
    assert back.config == unet.config
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), back.state_dict().values()))
    unet.save_pretrained(tmp_path / "h", dtype=torch.float16)
    half = PrototypeUNet.from_pretrained(tmp_path / "h")
    assert (tmp_path / "h" / "diffusion_pytorch_model.safetensors").stat().st_size < \
        0.6 * (tmp_path / "u" / "diffusion_pytorch_model.safetensors").stat().st_size
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(half(x, torch.tensor(5), torch.ones(1, 8)), unet(x, torch.tensor(5), torch.ones(1, 8)), atol=1e-2)
    w = tmp_path / "u" / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        PrototypeUNet.from_pretrained(tmp_path / "u")


# --- pipeline and guidance ---------------------------------------------------------------------
def tiny_pipeline(bank: LandmarkBank | None = None, metadata: dict | None = None, **kw) -> VIGFacePipeline:
    rng = np.random.default_rng(0)
    return VIGFacePipeline(tiny_unet(**kw), DDIMScheduler(), VirtualPrototypeSampler.fit(rng.standard_normal((30, 8))),
                           bank, metadata)


def test_guidance_scale_one_is_the_conditional_model():
    pipe = tiny_pipeline()
    protos = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    out = pipe(protos, 2, guidance_scale=1.0, num_inference_steps=4, seed=3)
    # the same sampling loop by hand, conditional branch only
    sched = DDIMScheduler()
    sched.set_timesteps(4)
    from vigface_sdk.pipeline import sample_seed

    gens = [torch.Generator().manual_seed(sample_seed(3, k, m)) for k in range(2) for m in range(2)]
    x = torch.stack([torch.randn((3, 16, 16), generator=g) for g in gens])
    cond = torch.from_numpy(protos).repeat_interleave(2, 0)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(pipe.unet(x, t, cond), int(t), x).prev_sample
    manual = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(out, manual)
    # the guided path (both branches) at a scale next to 1 agrees; a large scale does not
    near = pipe(protos, 2, guidance_scale=1.0 + 1e-6, num_inference_steps=4, seed=3)
    assert np.abs(near.astype(int) - out).max() <= 1
    far = pipe(protos, 2, guidance_scale=4.0, num_inference_steps=4, seed=3)
    assert np.abs(far.astype(int) - out).mean() > 1


def test_pipeline_round_trip_and_errors(tmp_path):
    bank = LandmarkBank(np.random.default_rng(0).uniform(0.3, 0.7, (20, 5, 2)))
    pipe = tiny_pipeline(bank, {"condition": {"backbone_fingerprint": "abc", "dim": 8}}, landmark_channels=5)
    protos = pipe.virtual_prototypes(3, seed=5)
    a = pipe(protos, 2, guidance_scale=2.0, num_inference_steps=3, seed=1)
    assert a.shape == (6, 16, 16, 3) and a.dtype == np.uint8
    pipe.save_pretrained(tmp_path / "p")
    back = VIGFacePipeline.from_pretrained(tmp_path / "p")
    assert np.array_equal(back(protos, 2, guidance_scale=2.0, num_inference_steps=3, seed=1), a)
    assert np.array_equal(back.virtual_prototypes(3, seed=5), protos)
    assert back.fingerprint() == pipe.fingerprint()
    with pytest.raises(IncompatibleError):
        back(np.ones((2, 9)), 1)
    with pytest.raises(IncompatibleError):
        back.check_prototypes(protos, backbone_fingerprint="other")
    with pytest.raises(InvalidInputError):
        back(np.full((1, 8), np.nan), 1)
    (tmp_path / "p" / "unet" / "config.json").write_text("{}")
    with pytest.raises(ArtifactError):
        VIGFacePipeline.from_pretrained(tmp_path / "p")
    with pytest.raises(ArtifactError):
        VIGFacePipeline.from_pretrained(tmp_path / "missing")


def test_virtual_sampler_is_deterministic_per_index(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.standard_normal((50, 8)) + 3 * np.eye(8)[0]
    s = VirtualPrototypeSampler.fit(real)
    a, b = s.sample([0, 1, 2], seed=7), s.sample([2, 5], seed=7)
    assert np.allclose(a[2], b[0]) and not np.allclose(a[0], a[1])
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert (a @ (real.mean(0) / np.linalg.norm(real.mean(0)))).mean() > 0.3  # follows the real distribution
    s.save_pretrained(tmp_path / "v")
    assert np.allclose(VirtualPrototypeSampler.from_pretrained(tmp_path / "v").sample([2], seed=7), a[2:])


# --- training ----------------------------------------------------------------------------------
def test_training_reduces_the_loss_on_a_fixed_batch():
    data = tiny_data(4)
    cfg = UNetConfig(sample_size=16, **TINY)
    sched = DDPMScheduler()
    g = torch.Generator().manual_seed(0)
    x0 = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    x0, protos = x0.repeat(4, 1, 1, 1), torch.from_numpy(data.prototypes[data.labels]).repeat(4, 1)
    t, noise = torch.randint(1000, (16,), generator=g), torch.randn(16, 3, 16, 16, generator=g)

    def loss_of(unet):
        with torch.no_grad():
            return float(diffusion_loss(unet, sched, x0, protos, t, noise)["mse"])

    torch.manual_seed(DiffusionTrainConfig().seed)
    before = loss_of(PrototypeUNet(cfg))
    res = train_diffusion(data, cfg, DiffusionTrainConfig(max_steps=40, batch_size=8, lr=5e-3, warmup_steps=5,
                                                          ema_decay=0.9), sched, progress=False)
    assert loss_of(res.unet) < 0.8 * before
    assert loss_of(res.ema) < before


def test_identity_loss_through_a_real_recognizer(fr128):
    """The identity loss runs through facecore's differentiable fr128 and checks dimensions."""
    cfg = UNetConfig(sample_size=16, **{**TINY, "cond_dim": 128})
    idm = fr128.to_torch()
    res = train_diffusion(tiny_data(4, dim=128), cfg, DiffusionTrainConfig(max_steps=2, batch_size=2, identity_weight=1.0,
                                                                           identity_max_timestep=1000, log_every=1),
                          identity_model=idm, progress=False)
    assert all(0 < h["identity"] <= 2 for h in res.state["history"])
    with pytest.raises(IncompatibleError):
        train_diffusion(tiny_data(4), UNetConfig(sample_size=16, **TINY),
                        DiffusionTrainConfig(max_steps=1, batch_size=2, identity_weight=1.0), identity_model=idm, progress=False)
    with pytest.raises(IncompatibleError):
        train_diffusion(tiny_data(4, dim=9), UNetConfig(sample_size=16, **TINY), DiffusionTrainConfig(max_steps=1), progress=False)


def test_resume_continues_bit_for_bit_and_rejects_other_settings(tmp_path):
    data = tiny_data()
    cfg = UNetConfig(sample_size=16, **TINY)

    def run(steps, ckpt):
        return train_diffusion(data, cfg, DiffusionTrainConfig(max_steps=steps, batch_size=4, checkpoint_every=2, log_every=1),
                               checkpoint_dir=ckpt, progress=False)

    straight = run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    resumed = run(4, tmp_path / "b")
    assert resumed.state["step"] == 4
    for m1, m2 in ((straight.unet, resumed.unet), (straight.ema, resumed.ema)):
        assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert [h["mse"] for h in straight.state["history"]] == [h["mse"] for h in resumed.state["history"]]
    other = UNetConfig(sample_size=16, **{**TINY, "block_out_channels": (8, 24), "attention_head_dim": 8})
    with pytest.raises(IncompatibleError):
        train_diffusion(data, other, DiffusionTrainConfig(max_steps=5), checkpoint_dir=tmp_path / "b", progress=False)
    with pytest.raises(IncompatibleError):
        train_diffusion(tiny_data(ids=3), cfg, DiffusionTrainConfig(max_steps=5), checkpoint_dir=tmp_path / "b", progress=False)
    w = tmp_path / "b" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-16])
    with pytest.raises(ArtifactError):
        run(6, tmp_path / "b")


def test_build_pipeline_from_a_run(tmp_path):
    data = tiny_data()
    data.landmarks = np.random.default_rng(0).uniform(0.3, 0.7, (8, 5, 2)).astype(np.float32)
    data.condition = {"source": "mean-embedding", "backbone_fingerprint": "f00"}
    cfg = UNetConfig(sample_size=16, landmark_channels=5, **TINY)
    res = train_diffusion(data, cfg, DiffusionTrainConfig(max_steps=2, batch_size=4), progress=False)
    pipe = build_pipeline(res, data)
    assert pipe.metadata["training_identities"] == data.identities and len(pipe.landmark_bank) == 8
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["scheduler"] == "DDIMScheduler" and index["condition"]["backbone_fingerprint"] == "f00"
    imgs = VIGFacePipeline.from_pretrained(tmp_path / "p")(pipe.virtual_prototypes(2), 2, num_inference_steps=2, seed=0)
    assert imgs.shape == (4, 16, 16, 3)


def test_torchrun_two_process_gloo_training(tmp_path):
    """``torchrun --nproc_per_node 2 -m vigface_sdk train-diffusion`` on a packed training set (gloo)."""
    from facecore.training.face_pack import FaceTrainingSet

    rng = np.random.default_rng(0)
    n = 12
    pack = FaceTrainingSet(rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8), rng.standard_normal((n, 8)).astype(np.float32),
                           np.arange(n) % 3, ["a", "b", "c"], [f"x/{i}.jpg" for i in range(n)], "fp")
    pack.save(tmp_path / "pack.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vigface_sdk",
           "train-diffusion", str(tmp_path / "pack.npz"), "--out", str(tmp_path / "pipe"), "--channels", "8,16",
           "--steps", "3", "--batch-size", "2", "--device", "cpu", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "pipe.checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    pipe = VIGFacePipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.metadata["condition"]["backbone_fingerprint"] == "fp" and pipe.unet.cond_dim == 8


def test_benchmark_training_script_tiny_cpu_run(lfw_root, tmp_path):
    """benchmarks/vigface_train.py in its tiny CPU configuration writes a loadable pipeline and a log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vigface_train.py"
    proc = subprocess.run([sys.executable, str(script), "--data-root", str(lfw_root), "--out", str(tmp_path / "pipe"),
                           "--tiny", "--max-steps", "2", "--batch-size", "4", "--identity-weight", "0", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((tmp_path / "pipe" / "train_log.json").read_text())
    assert log["steps"] == 2 and log["identities"] == 20 and log["condition"]["source"] == "mean-embedding"
    pipe = VIGFacePipeline.from_pretrained(tmp_path / "pipe")
    held = set(json.loads((tmp_path / "pipe" / "model_index.json").read_text())["training_identities"])
    from facecore.data import read_pairs

    assert not held & read_pairs(lfw_root.parent / "pairs.txt").identities_in_folds(range(5, 10))
    assert pipe(pipe.virtual_prototypes(1), 1, num_inference_steps=2, seed=0).shape == (1, 64, 64, 3)
