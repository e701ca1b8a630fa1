"""Backbones of the identity space: an IResNet trained from scratch, a converted ONNX recognizer,
or an arcface_torch checkpoint, each a torch module taking RGB images in [0, 1] ``(N, 3, H, W)``.

``save_backbone`` writes safetensors weights + a JSON spec (checksummed); ``load_backbone`` rebuilds
the module and returns it with its fingerprint, the id the prototype store is tied to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError, ModelLoadError
from facecore.pretrained import Contents, load_tensors, read_pretrained, write_pretrained
from facecore.recognizers import Preprocessing, Recognizer, create_recognizer
from facecore.recognizers.registry import BUILTIN
from facecore.recognizers.torch_graph import DifferentiableRecognizer

WEIGHTS = "backbone.safetensors"
IRESNET_LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
# arcface_torch feeds RGB images normalised as (x / 255 - 0.5) / 0.5
ARCFACE_PREPROCESSING = Preprocessing("RGB", 127.5, 127.5)


class IBasicBlock(nn.Module):
    """arcface_torch's pre-activation residual block (BN, conv, BN, PReLU, conv, BN)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """IResNet as in arcface_torch (same parameter names, so its checkpoints load as they are).

    Takes normalised input ``(N, 3, input_size, input_size)``; ``width`` is the first stage's
    channel count (64 in arcface_torch), doubled at each of the four stages.
    """

    def __init__(self, layers=(2, 2, 2, 2), dim: int = 512, width: int = 64, input_size: int = 112, dropout: float = 0.0):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1 or input_size % 16 or width < 1 or dim < 1:
            raise InvalidInputError(f"IResNet needs 4 stage depths >= 1, input_size divisible by 16 and positive width/dim; "
                                    f"got layers={layers}, input_size={input_size}, width={width}, dim={dim}")
        self.layers, self.dim, self.width, self.input_size = tuple(int(v) for v in layers), int(dim), int(width), int(input_size)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        inplanes = width
        for stage, blocks in enumerate(self.layers):
            planes = width * 2 ** stage
            mods = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*mods))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(inplanes * (input_size // 16) ** 2, dim)
        self.features = nn.BatchNorm1d(dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def spec(self) -> dict:
        return {"layers": list(self.layers), "dim": self.dim, "width": self.width, "input_size": self.input_size}


class FaceBackbone(DifferentiableRecognizer):
    """RGB float images in [0, 1] ``(N, 3, H, W)`` → raw embeddings ``(N, dim)``, with a JSON spec to rebuild it.

    A frozen backbone (``trainable=False``) stays in eval mode with no gradients.
    """

    def __init__(self, graph: nn.Module, preprocessing: Preprocessing, spec: dict, dim: int, trainable: bool):
        super().__init__(graph, preprocessing)
        self.spec = {**spec, "dim": int(dim), "preprocessing": preprocessing.to_dict()}
        self.dim = int(dim)
        self.trainable = True
        if not trainable:
            self.freeze()

    def freeze(self) -> "FaceBackbone":
        """No gradients, eval mode for good (BatchNorm statistics stay as they are)."""
        self.trainable = False
        return self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FaceBackbone":
        return super().train(mode and self.trainable)

    @property
    def fingerprint(self) -> str:
        """The recognizer's own fingerprint while its weights are untouched, else a hash of spec and weights."""
        if self.spec.get("weights") == "source":
            return self.spec["recognizer_fingerprint"]
        digest = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode())
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def iresnet_backbone(arch: str = "r18", dim: int = 512, width: int = 64, input_size: int = 112,
                     layers=None) -> FaceBackbone:
    """A fresh IResNet (``r18``/``r34``/``r50``/``r100``, or explicit ``layers``) to train from scratch."""
    if layers is None:
        if arch not in IRESNET_LAYERS:
            raise InvalidInputError(f"unknown IResNet arch {arch!r}; choose one of {sorted(IRESNET_LAYERS)} or give layers")
        layers = IRESNET_LAYERS[arch]
    net = IResNet(layers, dim, width, input_size)
    pre = Preprocessing(ARCFACE_PREPROCESSING.channel_order, ARCFACE_PREPROCESSING.mean, ARCFACE_PREPROCESSING.std,
                        (input_size, input_size))
    return FaceBackbone(net, pre, {"type": "iresnet", **net.spec(), "pretrained": False}, dim, trainable=True)


def _recognizer_source(recognizer: Recognizer) -> dict:
    path = getattr(recognizer, "model_path", None)
    if recognizer.name in BUILTIN:
        return {"builtin": recognizer.name}
    if path is None:
        raise ModelLoadError(f"recognizer {recognizer.name!r} has no ONNX model file to rebuild it from")
    return {"model_path": str(Path(path).resolve())}


def recognizer_backbone(recognizer: Recognizer, trainable: bool = False) -> FaceBackbone:
    """An ONNX recognizer converted to torch (``recognizer.to_torch``), frozen or to fine-tune."""
    try:
        module = recognizer.to_torch(trainable=trainable)
    except NotImplementedError as exc:
        raise ModelLoadError(f"recognizer {recognizer.name!r} cannot be converted to torch: {exc}") from exc
    spec = {"type": "onnx", **_recognizer_source(recognizer), "recognizer_fingerprint": recognizer.fingerprint,
            "weights": "tuned" if trainable else "source", "pretrained": True}
    return FaceBackbone(module.graph, recognizer.preprocessing, spec, recognizer.dim, trainable)


def load_arcface_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of an arcface_torch backbone from ``.safetensors`` or ``.pt/.pth`` (loaded weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_tensors(path.read_bytes(), "torch", path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, foreign formats
        raise ModelLoadError(f"cannot read checkpoint {path} (safetensors or a weights-only torch file expected): {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _iresnet_spec_from_state(state: dict[str, torch.Tensor], path) -> dict:
    try:
        width = state["conv1.weight"].shape[0]
        layers = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
        dim, fc_in = state["fc.weight"].shape
        channels = state["bn2.weight"].shape[0]
    except KeyError as exc:
        raise ModelLoadError(f"{path} is not an arcface_torch IResNet checkpoint (missing {exc})") from None
    side = int(round((fc_in / channels) ** 0.5))
    return {"layers": layers, "dim": int(dim), "width": int(width), "input_size": side * 16}


def arcface_backbone(path: str | Path, trainable: bool = False) -> FaceBackbone:
    """An arcface_torch IResNet checkpoint (architecture read from its weights), frozen or to fine-tune."""
    state = load_arcface_state_dict(path)
    spec = _iresnet_spec_from_state(state, path)
    backbone = iresnet_backbone(**spec)
    try:
        backbone.graph.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not fit an IResNet {spec}: {exc}") from exc
    backbone.spec["pretrained"] = True
    return backbone if trainable else backbone.freeze()


def _build(spec: dict) -> FaceBackbone:
    if spec.get("type") == "iresnet":
        backbone = iresnet_backbone(layers=spec["layers"], dim=spec["dim"], width=spec["width"], input_size=spec["input_size"])
    elif spec.get("type") == "onnx":
        if "builtin" in spec:
            rec = create_recognizer(spec["builtin"])
        else:
            pre = spec["preprocessing"]
            rec = create_recognizer(spec["model_path"], channel_order=pre["channel_order"], mean=pre["mean"],
                                    std=pre["std"], input_size=tuple(pre["input_size"]))
        if rec.fingerprint != spec["recognizer_fingerprint"]:
            raise IncompatibleError(f"the recognizer {spec.get('builtin') or spec['model_path']} changed since this backbone "
                                    f"was saved (fingerprint {rec.fingerprint}, expected {spec['recognizer_fingerprint']})")
        backbone = recognizer_backbone(rec, trainable=True)
    else:
        raise ArtifactError(f"unknown backbone type {spec.get('type')!r}")
    backbone.spec = dict(spec)
    return backbone


def save_backbone(backbone: FaceBackbone, directory: str | Path) -> Path:
    """Write the backbone's weights (safetensors) and spec (JSON) with checksums, atomically."""
    config = {"spec": backbone.spec, "fingerprint": backbone.fingerprint, "format": "vigface-backbone/1"}
    return write_pretrained(directory, Contents(config, backbone.state_dict()), weights_name=WEIGHTS, library="torch")


class LoadedBackbone(NamedTuple):
    module: FaceBackbone
    fingerprint: str


def load_backbone(directory: str | Path) -> LoadedBackbone:
    """``(module, fingerprint)`` of a backbone saved by :func:`save_backbone`; the module is frozen, in eval mode."""
    contents = read_pretrained(directory, weights_name=WEIGHTS, library="torch")
    config = contents.config
    if config.get("format") != "vigface-backbone/1":
        raise ArtifactError(f"{directory} is not a VIGFace backbone (format {config.get('format')!r})")
    backbone = _build(config["spec"])
    try:
        backbone.load_state_dict(contents.tensors)
    except RuntimeError as exc:
        raise ArtifactError(f"{directory}: weights do not fit the saved spec: {exc}") from exc
    backbone.freeze()
    if backbone.fingerprint != config["fingerprint"]:
        raise ArtifactError(f"{directory}: backbone fingerprint {backbone.fingerprint} differs from the saved "
                            f"{config['fingerprint']}")
    return LoadedBackbone(backbone, backbone.fingerprint)


def images_to_tensor(crops_bgr: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 BGR ``(N, H, W, 3)`` → float RGB ``(N, 3, H, W)`` in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(crops_bgr[..., ::-1])).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def embed_dataset(backbone: nn.Module, dataset, indices=None, batch_size: int = 64, flip: bool = False,
                  device: torch.device | str = "cpu", progress: bool = True) -> np.ndarray:
    """Raw float32 embeddings of ``dataset`` images (all, or ``indices``) with a torch backbone."""
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    was_training = backbone.training
    backbone.eval()
    out = []
    for start in tqdm(range(0, len(indices), batch_size), desc="embed", unit="batch", disable=not progress, leave=False):
        crops = np.stack([dataset.load(i) for i in indices[start:start + batch_size]])
        x = images_to_tensor(crops, device)
        out.append(backbone(x.flip(3) if flip else x).float().cpu().numpy())
    backbone.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, getattr(backbone, "dim", 0)), np.float32)
