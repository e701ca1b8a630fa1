"""VIGFace stage 1: margin heads, virtual prototypes, backbones, resumable/DDP training, store, report, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from facecore.errors import ArtifactError, DataError, IncompatibleError, InvalidInputError, ModelLoadError
from vigface_sdk.models.backbones import (IResNet, arcface_backbone, embed_dataset, iresnet_backbone, load_backbone,
                                   recognizer_backbone, save_backbone)
from vigface_sdk.cli import main as cli
from vigface_sdk.models.heads import VirtualMarginHead, margin_logits
from vigface_sdk.models.prototypes import PrototypeStore
from vigface_sdk.evaluation.space_report import separability_report, write_report
from vigface_sdk.training.space import EmbeddingSet, SpaceTrainConfig, check_images, load_training_dataset, train_space

torch.set_num_threads(1)
TINY = {"layers": (1, 1, 1, 1), "width": 4, "dim": 16, "input_size": 32}


def make_identity_folder(root: Path, identities: int = 4, images: int = 3, size: int = 40, seed: int = 0) -> Path:
    """Synthetic faces: one random pattern per identity, noisy copies per image (PNG, BGR)."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        base = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.float32)
        base = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
        (root / f"id{i:03d}").mkdir(parents=True, exist_ok=True)
        for j in range(images):
            img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"id{i:03d}" / f"{j:02d}.png"), img)
    return root


def synthetic_embeddings(n: int = 12, per: int = 6, dim: int = 16, seed: int = 0) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n, dim))
    labels = np.repeat(np.arange(n), per)
    emb = centers[labels] + 0.3 * rng.standard_normal((len(labels), dim))
    return EmbeddingSet(emb.astype(np.float32), labels, [f"p{i}" for i in range(n)], "synthetic-fp")


# ---------------------------------------------------------------- heads


def test_margin_logits_by_hand():
    cos = torch.tensor([[0.5, 0.2], [0.1, -0.3]])
    labels = torch.tensor([0, 1])
    arc = margin_logits(cos, labels, "arcface", margin=0.5, scale=10.0)
    assert arc[0, 0].item() == pytest.approx(10 * math.cos(math.acos(0.5) + 0.5), abs=1e-5)
    assert arc[0, 1].item() == pytest.approx(2.0) and arc[1, 0].item() == pytest.approx(1.0)
    assert arc[1, 1].item() == pytest.approx(10 * math.cos(math.acos(-0.3) + 0.5), abs=1e-5)
    cosface = margin_logits(cos, labels, "cosface", margin=0.35, scale=10.0)
    assert torch.allclose(cosface, torch.tensor([[1.5, 2.0], [1.0, -6.5]]))
    # θ + m beyond π: insightface's monotone fallback cos θ − m·sin m instead of cos(θ + m)
    far = margin_logits(torch.tensor([[-0.99]]), torch.tensor([0]), "arcface", 0.5, 1.0)
    assert far.item() == pytest.approx(-0.99 - math.sin(0.5) * 0.5, abs=1e-6)
    with pytest.raises(InvalidInputError):
        margin_logits(cos, labels, "sphereface")


def test_fake_loss_updates_only_virtual_rows():
    torch.manual_seed(0)
    head = VirtualMarginHead(8, num_real=5, num_virtual=7)
    assert head.num_fakes(10) == 14
    head(torch.randn(10, 8), torch.randint(5, (10,)))  # sets σ from real samples
    assert (head.sigma > 0).all()
    before = head.weight.detach().clone()
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    head.fake_loss(20).backward()
    assert torch.count_nonzero(head.weight.grad[:5]) == 0
    assert head.weight.grad[5:].abs().sum() > 0
    opt.step()
    assert torch.equal(head.weight[:5], before[:5]) and not torch.equal(head.weight[5:], before[5:])
    # the real samples' loss reaches the virtual rows too (pushes them away from real faces)
    head.zero_grad()
    head.eval()(torch.randn(10, 8), torch.randint(5, (10,)))["loss"].backward()
    assert head.weight.grad[5:].abs().sum() > 0


def test_training_pushes_virtual_prototypes_away_from_real():
    data = synthetic_embeddings(n=12, per=6, dim=8)
    cfg = SpaceTrainConfig(num_virtual=12, epochs=60, batch_size=24, lr=0.1, scale=16.0, log_every=10)
    untrained = train_space(data, SpaceTrainConfig(**{**cfg.__dict__, "max_steps": 1, "lr": 0.0}), progress=False)
    trained = train_space(data, cfg, progress=False)
    before = separability_report(untrained.store())["criterion"]
    after = separability_report(trained.store())["criterion"]
    assert after["virtual_vs_real_max_p99"] < before["virtual_vs_real_max_p99"] - 0.1
    assert after["passed"]
    assert trained.state["history"][-1]["accuracy"] > 0.9


# ---------------------------------------------------------------- backbones


def test_iresnet_shapes_and_arcface_names():
    net = IResNet((2, 2, 2, 2), dim=512)
    assert net.fc.weight.shape == (512, 512 * 7 * 7)
    names = set(net.state_dict())
    assert {"conv1.weight", "layer1.0.bn1.weight", "layer1.0.downsample.0.weight", "features.running_mean"} <= names
    tiny = iresnet_backbone(**TINY)
    out = tiny.eval()(torch.rand(3, 3, 48, 40))  # any size is resized to the input size
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    with pytest.raises(InvalidInputError):
        iresnet_backbone("r7")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_arcface_checkpoint_loading(tmp_path, suffix):
    src = iresnet_backbone(**TINY).eval()
    state = {f"module.{k}": v for k, v in src.graph.state_dict().items()}  # DDP-saved names
    path = tmp_path / f"backbone{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    loaded = arcface_backbone(path)
    assert loaded.spec["layers"] == [1, 1, 1, 1] and loaded.dim == 16 and not loaded.trainable
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), src(x), atol=1e-6)


def test_arcface_checkpoint_refuses_bad_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        arcface_backbone(tmp_path / "junk.pth")
    torch.save({"conv1.weight": torch.zeros(1), "note": object()}, tmp_path / "pickled.pth")
    with pytest.raises(ModelLoadError):  # arbitrary pickles are refused (weights_only)
        arcface_backbone(tmp_path / "pickled.pth")
    with pytest.raises(ModelLoadError):
        arcface_backbone(tmp_path / "missing.safetensors")


def test_backbone_artifact_round_trip(tmp_path):
    net = iresnet_backbone(**TINY)
    save_backbone(net, tmp_path / "bb")
    module, fingerprint = load_backbone(tmp_path / "bb")
    x = torch.rand(2, 3, 32, 32)
    assert fingerprint == net.fingerprint == module.fingerprint
    assert torch.allclose(module(x), net.eval()(x)) and not any(p.requires_grad for p in module.parameters())
    weights = tmp_path / "bb" / "backbone.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError):
        load_backbone(tmp_path / "bb")


# ---------------------------------------------------------------- training: resume, DDP


def _final_state(space, ckpt: Path) -> dict:
    return {"head": {k: v.clone() for k, v in space.head.state_dict().items()},
            "optimizer": torch.load(ckpt / "optimizer.pt", weights_only=True), "history": space.state["history"]}


@pytest.mark.parametrize("mode", ["embeddings", "images"])
def test_resume_continues_with_identical_state(tmp_path, mode):
    if mode == "embeddings":
        data, make = synthetic_embeddings(), lambda: None
    else:
        data = load_training_dataset(make_identity_folder(tmp_path / "ds"), size=(32, 32))
        make = lambda: iresnet_backbone(**TINY)  # noqa: E731 (same seed → same start)
    cfg = SpaceTrainConfig(num_virtual=6, max_steps=6, batch_size=4, checkpoint_every=3, log_every=1, seed=3)
    torch.manual_seed(0)
    straight = train_space(data, cfg, make(), checkpoint_dir=tmp_path / "a", progress=False)
    torch.manual_seed(0)
    first = train_space(data, cfg, make(), checkpoint_dir=tmp_path / "b", until_step=3, progress=False)
    assert first.state["step"] == 3
    torch.manual_seed(0)
    resumed = train_space(data, cfg, make(), checkpoint_dir=tmp_path / "b", progress=False)
    a, b = _final_state(straight, tmp_path / "a"), _final_state(resumed, tmp_path / "b")
    assert resumed.state["step"] == 6 and a["history"] == b["history"]
    for key in a["head"]:
        assert torch.equal(a["head"][key], b["head"][key]), key
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(va["momentum_buffer"], vb["momentum_buffer"])
    if mode == "images":
        for (k, va), vb in zip(straight.backbone.state_dict().items(), resumed.backbone.state_dict().values()):
            assert torch.equal(va, vb), k
    with pytest.raises(IncompatibleError):  # another run's checkpoint is refused
        train_space(data, SpaceTrainConfig(num_virtual=7, max_steps=6, batch_size=4), make(),
                    checkpoint_dir=tmp_path / "b", progress=False)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from facecore.training.distributed import cleanup, init_distributed
    from vigface_sdk.models.backbones import iresnet_backbone
    from vigface_sdk.training.space import SpaceTrainConfig, load_training_dataset, train_space

    ctx = init_distributed("cpu")
    data = load_training_dataset(sys.argv[1], size=(32, 32))
    torch.manual_seed(0)
    net = iresnet_backbone(layers=(1, 1, 1, 1), width=4, dim=16, input_size=32)
    cfg = SpaceTrainConfig(num_virtual=4, max_steps=3, batch_size=3, checkpoint_every=2, seed=1)
    space = train_space(data, cfg, net, ctx, checkpoint_dir=sys.argv[2] + "/ckpt", progress=False)
    state = {"head." + k: v for k, v in space.head.state_dict().items()}
    state.update({"backbone." + k: v for k, v in space.backbone.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, f"{sys.argv[2]}/rank{ctx.rank}.safetensors")
    os.write(1, f"rank {ctx.rank} of {ctx.world_size} done at step {space.state['step']}\\n".encode())  # one atomic write
    cleanup(ctx)
""")


def test_ddp_two_cpu_processes(tmp_path):
    root = make_identity_folder(tmp_path / "ds", identities=4, images=4)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}  # torchrun's log dirs
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(root), str(tmp_path)], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2 done at step 3" in proc.stdout and "rank 1 of 2 done at step 3" in proc.stdout
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    assert (w0["head.sigma"] > 0).all()
    assert (tmp_path / "ckpt" / "state.json").is_file()


# ---------------------------------------------------------------- prototype store, report


def test_store_round_trip_and_backbone_refusal(tmp_path):
    space = train_space(synthetic_embeddings(), SpaceTrainConfig(num_virtual=20, max_steps=5, batch_size=8), progress=False)
    space.save(tmp_path / "space")
    store = PrototypeStore.from_pretrained(tmp_path / "space" / "prototypes", backbone_fingerprint="synthetic-fp")
    assert store.real.shape == (12, 16) and store.virtual.shape == (20, 16)
    assert store.identities == space.identities
    meta = store.metadata
    assert (meta["margin_type"], meta["margin"], meta["scale"], meta["dim"]) == ("arcface", 0.5, 64.0, 16)
    assert len(meta["sigma"]) == 16
    np.testing.assert_allclose(np.linalg.norm(store.virtual, axis=1), 1.0, atol=1e-5)
    with pytest.raises(IncompatibleError):
        PrototypeStore.from_pretrained(tmp_path / "space" / "prototypes", backbone_fingerprint="another-backbone")
    report = separability_report(store)
    paths = write_report(report, tmp_path / "report")
    saved = json.loads(paths["json"].read_text())
    assert set(saved["groups"]) == {"real_nearest_negative", "virtual_vs_real", "virtual_vs_virtual", "random_vs_real"}
    assert "_histograms" not in saved and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "Criterion" in paths["md"].read_text()


# ---------------------------------------------------------------- bad input


def test_identity_with_one_image(tmp_path):
    root = make_identity_folder(tmp_path / "ds", identities=3, images=2)
    for f in list((root / "id001").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match="id001"):
        load_training_dataset(root, min_images=2)
    ds = load_training_dataset(root, min_images=2, drop_small=True)
    assert ds.identities == ["id000", "id002"]
    assert len(load_training_dataset(root, min_images=1).identities) == 3


def test_empty_folders_and_unreadable_images(tmp_path):
    with pytest.raises(DataError, match="no identity folders"):
        load_training_dataset(tmp_path)
    root = make_identity_folder(tmp_path / "ds", identities=2, images=2)
    (root / "empty_person").mkdir()
    with pytest.raises(DataError, match="empty_person"):
        load_training_dataset(root)
    (root / "empty_person").rmdir()
    (root / "id000" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = load_training_dataset(root, size=(32, 32))
    with pytest.raises(DataError, match="broken.jpg"):
        check_images(ds, progress=False)
    result = CliRunner().invoke(cli, ["train-space", str(root), "--virtual", "2", "--out", str(tmp_path / "o"),
                                      "--backbone", "iresnet"])
    assert result.exit_code == 2 and "error:" in result.output and "broken.jpg" in result.output
    with pytest.raises(InvalidInputError):
        SpaceTrainConfig(num_virtual=0)


# ---------------------------------------------------------------- CLI and real recognizers


def test_cli_help():
    result = CliRunner().invoke(cli, ["train-space", "--help"])
    assert result.exit_code == 0 and "--virtual" in result.output and "--finetune" in result.output
    assert CliRunner().invoke(cli, ["report-space", "--help"]).exit_code == 0


def test_cli_train_and_report_end_to_end(tmp_path, fr128, monkeypatch):
    monkeypatch.setenv("FACEPRIV_CACHE", str(tmp_path / "cache"))  # keep these throw-away embeddings out of the shared cache
    root = make_identity_folder(tmp_path / "ds", identities=5, images=3, size=112)
    out = tmp_path / "space"
    result = CliRunner().invoke(cli, ["train-space", str(root), "--virtual", "8", "--out", str(out), "-r", "fr128",
                                      "--steps", "4", "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    module, fingerprint = load_backbone(out / "backbone")
    assert fingerprint == fr128.fingerprint  # frozen recognizer: the space lives in fr128's embedding space
    store = PrototypeStore.from_pretrained(out / "prototypes", backbone_fingerprint=fr128.fingerprint)
    assert (store.real.shape, store.virtual.shape) == ((5, 128), (8, 128))
    assert json.loads((out / "training.json").read_text())["step"] == 4
    result = CliRunner().invoke(cli, ["report-space", str(out / "prototypes"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert {p.suffix for p in (tmp_path / "rep").iterdir()} == {".json", ".md", ".png"}
    bad = CliRunner().invoke(cli, ["report-space", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and bad.output.startswith("error:")
    # fine-tune the recognizer starting from the head-only space (linear probe, then fine-tune)
    tuned = tmp_path / "tuned"
    result = CliRunner().invoke(cli, ["train-space", str(root), "--virtual", "8", "--out", str(tuned), "-r", "fr128",
                                      "--finetune", "--init-from", str(out / "prototypes"), "--steps", "1",
                                      "--batch-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    _, tuned_fingerprint = load_backbone(tuned / "backbone")
    assert tuned_fingerprint != fr128.fingerprint
    PrototypeStore.from_pretrained(tuned / "prototypes", backbone_fingerprint=tuned_fingerprint)


def test_finetune_recognizer_on_tiny_lfw_subset(tmp_path, lfw_root, fr128):
    ds = load_training_dataset(lfw_root, min_images=1).subset(["Aaron_Peirsol", "Abdullah_Gul", "Adam_Sandler"])
    backbone = recognizer_backbone(fr128, trainable=True)
    start = {k: v.clone() for k, v in backbone.state_dict().items()}
    cfg = SpaceTrainConfig(num_virtual=3, max_steps=2, batch_size=4, backbone_lr=0.05)
    space = train_space(ds, cfg, backbone, progress=False)
    assert any(not torch.equal(start[k], v) for k, v in backbone.state_dict().items())
    assert space.fingerprint != fr128.fingerprint  # tuned weights: a space of its own
    space.save(tmp_path / "space")
    module, fingerprint = load_backbone(tmp_path / "space" / "backbone")
    assert fingerprint == space.fingerprint
    np.testing.assert_allclose(embed_dataset(module, ds, [0, 1], progress=False),
                               embed_dataset(backbone, ds, [0, 1], progress=False), atol=1e-5)
    PrototypeStore.from_pretrained(tmp_path / "space" / "prototypes", backbone_fingerprint=fingerprint)
