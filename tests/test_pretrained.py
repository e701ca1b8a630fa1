"""The one artifact base (facecore.pretrained): every component that saves itself round-trips through it,
every shipped artifact and pipeline still loads, and the base's guarantees hold for all of them."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from advface_sdk.artifact import default_artifacts, default_shadow, load_artifact, save_artifact
from advface_sdk.models.decoders import FaceDecoder
from advface_sdk.models.generator import NoiseGenerator
from facecore.artifacts import CHECKSUMS, sha256_bytes
from facecore.errors import ArtifactError, IncompatibleError, UnsignedArtifactWarning
from facecore.pretrained import Contents, Pretrained, PretrainedModule, read_pretrained, write_pretrained
from facecore.training.checkpoints import load_checkpoint, save_checkpoint
from vigface_sdk import FaceAutoencoder, PrototypeDenoiser, VIGFacePipeline, VirtualPrototypeSampler, load_pipeline
from vigface_sdk.models.backbones import iresnet_backbone, load_backbone, save_backbone
from vigface_sdk.models.prototypes import PrototypeStore
from vigface_sdk.pipelines.pipeline import SCHEDULERS, load_scheduler, save_scheduler

torch.set_num_threads(1)
TINY_AE = dict(image_size=16, latent_channels=2, block_out_channels=(8, 16), cond_dim=8, cond_embed_dim=16, norm_groups=4)
TINY_DEN = dict(sample_size=8, latent_channels=2, cond_dim=8, block_out_channels=(16, 32), layers_per_block=1,
                attention_head_dim=8, norm_num_groups=8)


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a member and its checksum line, as a careful attacker would (no signature involved)."""
    (folder / name).write_bytes(data)
    lines = [ln for ln in (folder / CHECKSUMS).read_text().splitlines() if not ln.endswith(f"  {name}")]
    (folder / CHECKSUMS).write_text("\n".join([*lines, f"{sha256_bytes(data)}  {name}"]) + "\n")


# ------------------------------------------------------------------------------- one round trip per component

def test_face_decoder_round_trip_keeps_extras(tmp_path):
    torch.manual_seed(0)
    dec = FaceDecoder(16, 64, "deconv", 8).eval()
    dec.save_pretrained(tmp_path / "d", {"recognizer": {"name": "r"}})
    back = FaceDecoder.from_pretrained(tmp_path / "d")
    assert back.config == dec.config and back.extra_config == {"recognizer": {"name": "r"}} and _state_equal(dec, back)
    assert "_class_name" not in (tmp_path / "d" / "config.json").read_text()  # the shipped, untagged format


def test_autoencoder_and_denoiser_round_trip(tmp_path):
    torch.manual_seed(0)
    for model in (FaceAutoencoder(**TINY_AE), PrototypeDenoiser(**TINY_DEN)):
        model.save_pretrained(tmp_path / type(model).__name__)
        back = type(model).from_pretrained(tmp_path / type(model).__name__)
        assert back.config == model.config and _state_equal(model, back) and not back.training


def test_prototype_store_round_trip_and_backbone_check(tmp_path):
    rng = np.random.default_rng(0)
    store = PrototypeStore(rng.standard_normal((3, 8)), rng.standard_normal((2, 8)), ["a", "b", "c"],
                           {"backbone_fingerprint": "fp", "margin": 0.5})
    store.save_pretrained(tmp_path / "p")
    back = PrototypeStore.from_pretrained(tmp_path / "p", backbone_fingerprint="fp")
    assert np.array_equal(back.real, store.real) and np.array_equal(back.virtual, store.virtual)
    assert back.identities == store.identities and back.metadata.items() >= store.metadata.items()
    with pytest.raises(IncompatibleError, match="backbone"):
        PrototypeStore.from_pretrained(tmp_path / "p", backbone_fingerprint="other")


def test_virtual_sampler_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.standard_normal((40, 8))
    sampler = VirtualPrototypeSampler.fit(real, exclude=real, max_similarity=0.9, residuals=rng.standard_normal((20, 8)))
    sampler.save_pretrained(tmp_path / "s")
    back = VirtualPrototypeSampler.from_pretrained(tmp_path / "s")
    assert np.array_equal(back.sample(np.arange(5), seed=3), sampler.sample(np.arange(5), seed=3))
    assert np.array_equal(back.intra_tril, sampler.intra_tril) and back.metadata == sampler.metadata


def test_backbone_round_trip(tmp_path):
    torch.manual_seed(0)
    backbone = iresnet_backbone(layers=[1, 1, 1, 1], dim=16, width=8, input_size=32)
    save_backbone(backbone, tmp_path / "b")
    module, fingerprint = load_backbone(tmp_path / "b")
    assert fingerprint == backbone.fingerprint and _state_equal(module, backbone)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c", model, opt, {"epoch": 1, "config": {"seed": 0}})
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    assert load_checkpoint(tmp_path / "c", model2, opt2, {"seed": 0})["epoch"] == 1
    assert _state_equal(model, model2) and torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(IncompatibleError, match="another run"):
        load_checkpoint(tmp_path / "c", model2, opt2, {"seed": 1})


def test_scheduler_round_trip(tmp_path):
    sched = DPMSolverMultistepScheduler.from_config(DDPMScheduler(num_train_timesteps=50).config)
    save_scheduler(sched, tmp_path / "s")
    back = load_scheduler(tmp_path / "s")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert type(back) is DPMSolverMultistepScheduler and public(back.config) == public(sched.config)


class ShiftedDPM(DPMSolverMultistepScheduler):
    """A third-party scheduler: not in diffusers, so it loads only once registered."""


def test_registered_scheduler_round_trip(tmp_path):
    save_scheduler(ShiftedDPM(num_train_timesteps=50), tmp_path / "s")
    with pytest.raises(ArtifactError, match="'ShiftedDPM' is neither a diffusers scheduler"):
        load_scheduler(tmp_path / "s")
    SCHEDULERS.register(ShiftedDPM, name="ShiftedDPM")
    try:
        assert type(load_scheduler(tmp_path / "s")) is ShiftedDPM
    finally:
        SCHEDULERS.unregister("ShiftedDPM")


def test_protector_artifact_round_trip(tmp_path):
    torch.manual_seed(0)
    gen = NoiseGenerator(16, 32, 0.5)
    save_artifact(gen, tmp_path / "a", {"name": "r", "fingerprint": "f" * 16})
    with pytest.warns(UnsignedArtifactWarning):
        art = load_artifact(tmp_path / "a")
    assert art.dim == 16 and art.recognizer_fingerprint == "f" * 16
    assert all(np.array_equal(art.state[k], v.numpy()) for k, v in gen.state_dict().items())


def test_pipeline_round_trip(tmp_path):
    torch.manual_seed(0)
    sched = DPMSolverMultistepScheduler.from_config(DDPMScheduler(num_train_timesteps=50).config)
    sampler = VirtualPrototypeSampler.fit(np.random.default_rng(0).standard_normal((30, 8)))
    pipe = VIGFacePipeline(FaceAutoencoder(**TINY_AE), PrototypeDenoiser(**TINY_DEN), sched, sampler, {"note": "x"})
    pipe.save_pretrained(tmp_path / "p")
    back = VIGFacePipeline.from_pretrained(tmp_path / "p")
    assert back.fingerprint() == pipe.fingerprint() and back.metadata == {"note": "x"}
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        ["autoencoder", "denoiser", "scheduler", "virtual_sampler", CHECKSUMS, "model_index.json"])


# ------------------------------------------------------------------------------- shipped artifacts load unchanged

def test_every_shipped_artifact_and_pipeline_loads():
    for name in default_artifacts():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnsignedArtifactWarning)
            assert load_artifact(name).signature.verified
    shadow = FaceDecoder.from_pretrained(default_shadow("fr128"))
    assert shadow.dim == 128 and "recognizer" in shadow.extra_config
    pipe = load_pipeline()
    assert pipe.cond_dim == pipe.virtual_sampler.dim == 128


# ------------------------------------------------------------------------------- the base's guarantees

class Pair(Pretrained):
    weights_name = "pair.safetensors"

    def __init__(self, a: np.ndarray, label: str):
        self.a, self.label = a, label

    def to_contents(self) -> Contents:
        return Contents({"label": self.label}, {"a": self.a})

    @classmethod
    def from_contents(cls, contents: Contents, directory: Path) -> "Pair":
        return cls(contents.tensors["a"], contents.config["label"])


class Other(Pair):
    pass


def test_base_tags_verifies_and_refuses(tmp_path):
    Pair(np.arange(4, dtype=np.float32), "x").save_pretrained(tmp_path / "p")
    assert Pair.from_pretrained(tmp_path / "p").label == "x"
    with pytest.raises(ArtifactError, match="holds a Pair, not a Other"):
        Other.from_pretrained(tmp_path / "p")
    with pytest.raises(ArtifactError, match="not found"):
        Pair.from_pretrained(tmp_path / "missing")
    data = (tmp_path / "p" / "pair.safetensors").read_bytes()
    (tmp_path / "p" / "pair.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Pair.from_pretrained(tmp_path / "p")
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(4)}, buf)  # a pickle in place of the weights, checksum fixed: never unpickled
    _rewrite(tmp_path / "p", "pair.safetensors", buf.getvalue())
    with pytest.raises(ArtifactError, match="not valid safetensors"):
        Pair.from_pretrained(tmp_path / "p")


def test_base_maps_rebuild_errors(tmp_path):
    class Tiny(PretrainedModule):
        def __init__(self, width: int = 2):
            super().__init__()
            self.config = {"width": width}
            self.lin = torch.nn.Linear(width, 1)

    Tiny(2).save_pretrained(tmp_path / "t")
    assert Tiny.from_pretrained(tmp_path / "t").config == {"width": 2}
    _rewrite(tmp_path / "t", "config.json", b'{"width": 3, "_class_name": "Tiny"}')
    with pytest.raises(ArtifactError, match="config and weights do not build a Tiny"):
        Tiny.from_pretrained(tmp_path / "t")


def test_read_pretrained_runs_the_check_before_parsing(tmp_path):
    write_pretrained(tmp_path / "a", Contents({"k": 1}, {"x": np.ones(2, np.float32)}), weights_name="w.safetensors")
    assert read_pretrained(tmp_path / "a", weights_name="w.safetensors").config == {"k": 1}
    _rewrite(tmp_path / "a", "config.json", b"{not json")

    def refuse(folder: Path) -> None:
        raise ArtifactError(f"{folder} refused by the check")

    with pytest.raises(ArtifactError, match="refused by the check"):
        read_pretrained(tmp_path / "a", weights_name="w.safetensors", check=refuse)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_pretrained(tmp_path / "a", weights_name="w.safetensors")
