"""Convert an ONNX recognizer graph to a differentiable torch module (no onnx2torch/torchvision).

Supports the operator set of common face recognizers (MobileFaceNet, IResNet, ...).
A ``Reshape`` to a constant ``[1, -1]`` that pins the batch to 1 is rewritten to keep the
batch dimension, so the converted module trains on batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from ..errors import InvalidInputError, ModelLoadError
from .base import Preprocessing


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _same_pads(x: torch.Tensor, kernel, strides, dilations, upper: bool) -> list[int]:
    pads = []
    for dim, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
        size = x.shape[2 + dim]
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        pads.append((small, big) if upper else (big, small))
    return pads


def _unsupported_pool(node) -> str | None:
    """Why a pooling node has no torch equivalent here (auto padding, uneven pads, not 2-D), or ``None``."""
    if node.op_type not in ("AveragePool", "MaxPool"):
        return None
    at = _attrs(node)
    auto = at.get("auto_pad", b"NOTSET")
    pads = list(at.get("pads", [0, 0, 0, 0]))
    if len(at["kernel_shape"]) != 2:
        return "not 2-D"
    if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "VALID"):
        return f"auto_pad {auto!r}"
    if pads[:2] != pads[2:] or any(2 * p > k for p, k in zip(pads, at["kernel_shape"])):
        return f"pads {pads}"
    return None


class OnnxGraphModule(nn.Module):
    """Runs an ONNX graph with torch ops; float initializers become (frozen) parameters."""

    SUPPORTED = {
        "Conv", "PRelu", "Add", "Sub", "Mul", "Div", "Reshape", "Flatten", "Clip", "Relu", "Sigmoid",
        "Tanh", "LeakyRelu", "Constant", "BatchNormalization", "Gemm", "MatMul", "GlobalAveragePool",
        "AveragePool", "MaxPool", "Identity", "Transpose", "Concat", "Dropout",
    }

    def __init__(self, model: onnx.ModelProto, trainable: bool = False):
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node} - self.SUPPORTED)
        unsupported += sorted({f"{n.op_type} ({why})" for n in graph.node if (why := _unsupported_pool(n))})
        if unsupported:
            raise ModelLoadError(f"cannot convert ONNX graph to torch: unsupported operators {unsupported}")
        self.params = nn.ParameterDict()
        self._names: dict[str, str] = {}
        self._consts: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype.kind == "f":
                key = f"p{len(self._names)}"
                self._names[init.name] = key
                self.params[key] = nn.Parameter(torch.from_numpy(arr.astype(np.float32).copy()), requires_grad=trainable)
            else:
                self._consts[init.name] = arr
        for node in graph.node:
            if node.op_type == "Constant":
                self._consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        initializer_names = {i.name for i in graph.initializer}
        self._input = next(i.name for i in graph.input if i.name not in initializer_names)
        self._outputs = [o.name for o in graph.output]
        self._nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node if n.op_type != "Constant"]

    def _value(self, env: dict, name: str):
        if name in env:
            return env[name]
        if name in self._names:
            return self.params[self._names[name]]
        if name in self._consts:
            return self._consts[name]
        if name == "":
            return None
        raise ModelLoadError(f"ONNX graph refers to unknown tensor {name!r}")

    def _const(self, env, name) -> np.ndarray:
        value = self._value(env, name)
        return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

    def _tensor(self, env, name, like: torch.Tensor) -> torch.Tensor:
        value = self._value(env, name)
        if isinstance(value, torch.Tensor):
            return value
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self._input: x}
        for op, ins, outs, at in self._nodes:
            a = self._value(env, ins[0])
            if op == "Conv":
                w = self._value(env, ins[1])
                b = self._value(env, ins[2]) if len(ins) > 2 else None
                k = w.shape[2:]
                strides = at.get("strides", [1] * len(k))
                dil = at.get("dilations", [1] * len(k))
                auto = at.get("auto_pad", b"NOTSET")
                auto = auto.decode() if isinstance(auto, bytes) else auto
                if auto in ("SAME_UPPER", "SAME_LOWER"):
                    pairs = _same_pads(a, k, strides, dil, auto == "SAME_UPPER")
                else:
                    p = at.get("pads", [0] * 2 * len(k))
                    pairs = list(zip(p[: len(k)], p[len(k):]))
                if all(s == e for s, e in pairs):
                    y = F.conv2d(a, w, b, strides, [s for s, _ in pairs], dil, at.get("group", 1))
                else:
                    flat = [v for s, e in reversed(pairs) for v in (s, e)]
                    y = F.conv2d(F.pad(a, flat), w, b, strides, 0, dil, at.get("group", 1))
            elif op == "PRelu":
                slope = self._tensor(env, ins[1], a)
                y = torch.where(a >= 0, a, a * slope)
            elif op in ("Add", "Sub", "Mul", "Div"):
                b = self._tensor(env, ins[1], a) if isinstance(a, torch.Tensor) else self._value(env, ins[1])
                if not isinstance(a, torch.Tensor):
                    a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
                y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](a, b)
            elif op == "Reshape":
                shape = [int(v) for v in self._const(env, ins[1])]
                if shape and shape[0] == 1 and -1 in shape[1:]:
                    shape[0] = 0  # batch pinned to 1 in the export: keep the real batch
                shape = [a.shape[i] if v == 0 else v for i, v in enumerate(shape)]
                y = a.reshape(shape)
            elif op == "Flatten":
                y = a.flatten(at.get("axis", 1)) if at.get("axis", 1) > 0 else a.reshape(1, -1)
            elif op == "Clip":
                lo = at.get("min") if len(ins) < 2 or not ins[1] else float(self._const(env, ins[1]))
                hi = at.get("max") if len(ins) < 3 or not ins[2] else float(self._const(env, ins[2]))
                y = torch.clamp(a, min=lo, max=hi)
            elif op == "Relu":
                y = F.relu(a)
            elif op == "Sigmoid":
                y = torch.sigmoid(a)
            elif op == "Tanh":
                y = torch.tanh(a)
            elif op == "LeakyRelu":
                y = F.leaky_relu(a, at.get("alpha", 0.01))
            elif op == "BatchNormalization":
                g, b, m, v = (self._value(env, n) for n in ins[1:5])
                y = F.batch_norm(a, m, v, g, b, False, 0.0, at.get("epsilon", 1e-5))
            elif op == "Gemm":
                b = self._value(env, ins[1])
                a2 = a.t() if at.get("transA", 0) else a
                b2 = b.t() if at.get("transB", 0) else b
                y = at.get("alpha", 1.0) * (a2 @ b2)
                if len(ins) > 2 and ins[2]:
                    y = y + at.get("beta", 1.0) * self._tensor(env, ins[2], y)
            elif op == "MatMul":
                y = a @ self._tensor(env, ins[1], a)
            elif op == "GlobalAveragePool":
                y = a.mean(dim=(2, 3), keepdim=True)
            elif op == "AveragePool":
                y = F.avg_pool2d(a, at["kernel_shape"], at.get("strides", 1), at.get("pads", [0, 0])[:2],
                                 ceil_mode=bool(at.get("ceil_mode", 0)),
                                 count_include_pad=bool(at.get("count_include_pad", 0)))
            elif op == "MaxPool":
                y = F.max_pool2d(a, at["kernel_shape"], at.get("strides", 1), at.get("pads", [0, 0])[:2],
                                 at.get("dilations", 1), ceil_mode=bool(at.get("ceil_mode", 0)))
            elif op in ("Identity", "Dropout"):
                y = a
            elif op == "Transpose":
                y = a.permute(*at["perm"])
            elif op == "Concat":
                y = torch.cat([self._tensor(env, n, a) for n in ins], dim=at["axis"])
            env[outs[0]] = y
        out = env[self._outputs[0]]
        return out


class DifferentiableRecognizer(nn.Module):
    """A recognizer as a torch module: RGB float images in [0, 1], ``(N, 3, H, W)`` → embeddings.

    Resizes to the recognizer's input size and applies its explicit preprocessing, so
    decoders that produce RGB images of any size can be scored by any recognizer.
    """

    def __init__(self, graph: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.graph = graph
        self.preprocessing = preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise InvalidInputError(f"expected float RGB images in [0, 1] of shape (N, 3, H, W), got {images.dtype} "
                                    f"{tuple(images.shape)}")
        w, h = self.preprocessing.input_size
        if images.shape[-2:] != (h, w):
            images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
        if self.preprocessing.channel_order == "BGR":
            images = images.flip(1)
        x = (images * 255.0 - self.preprocessing.mean) / self.preprocessing.std
        return self.graph(x)


def load_onnx_as_torch(path: str | Path, trainable: bool = False) -> OnnxGraphModule:
    """Load an ONNX file and convert it to :class:`OnnxGraphModule`."""
    try:
        model = onnx.load(str(path))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"model file not found: {path}") from exc
    except Exception as exc:  # onnx raises DecodeError and others for corrupt files
        raise ModelLoadError(f"cannot read ONNX model {path}: {exc}") from exc
    return OnnxGraphModule(model, trainable=trainable)
