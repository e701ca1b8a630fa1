"""Write the protection graph ``z ↦ (ẑ + δ(ẑ))·‖z‖`` as ONNX directly from the generator's weights.

Built with ``onnx.helper`` (no tracing), so the graph is exactly the math of
:class:`~advface_sdk.models.generator.NoiseGenerator`; ``precision="fp16"`` computes in half
precision behind float32 inputs and outputs (what TensorRT's strongly-typed builds need).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facecore.errors import InvalidInputError

INPUT, OUTPUT = "embeddings", "protected"
#: second input of a bucketed keyed graph: each row's bucket (``DeploymentKey.bucket(id)``, computed by the caller)
BUCKETS = "buckets"


def generator_to_onnx(state: dict[str, np.ndarray], config: dict, precision: str = "fp32",
                      rotation: np.ndarray | None = None, fresh_noise: float = 0.0) -> onnx.ModelProto:
    """The protection graph; ``rotation`` (a deployment key's ``R``) makes it the keyed graph ``R·(ẑ + δ)·‖z‖``.
    A stack of ``K`` rotations ``(K, d, d)`` (a bucketed key's ``R_b``) makes it ``R_b·(ẑ + δ)·‖z‖`` with a second
    input, :data:`BUCKETS` (int64, one bucket per row). ``fresh_noise`` (keyed graphs): Gaussian noise of that
    relative size added to ``ẑ + δ`` before the rotation, norm kept, as :meth:`Protector.protect` adds it; drawn
    by ``RandomNormalLike`` without a seed, so the runtime draws it afresh on every run."""
    from .protector import check_fresh_noise

    if precision not in ("fp32", "fp16"):
        raise InvalidInputError(f"precision must be fp32 or fp16, got {precision!r}")
    fresh_noise = check_fresh_noise(fresh_noise)
    if fresh_noise and rotation is None:
        raise InvalidInputError("fresh_noise belongs in a keyed graph (pass the key's rotation)")
    if rotation is not None:
        _check_rotation(rotation, config["dim"])
    ft = np.float16 if precision == "fp16" else np.float32
    et = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, ft), name))
        return name

    x = INPUT
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", [INPUT], ["z16"], to=et))
        x = "z16"
    # ẑ = z / max(‖z‖, eps)
    nodes += [helper.make_node("Mul", [x, x], ["zz"]),
              helper.make_node("ReduceSum", ["zz", "axes1"], ["zn2"], keepdims=1),
              helper.make_node("Sqrt", ["zn2"], ["znorm"]),
              helper.make_node("Max", ["znorm", const("eps", 1e-12 if precision == "fp32" else 1e-7)], ["zden"]),
              helper.make_node("Div", [x, "zden"], ["unit"])]
    inits.append(numpy_helper.from_array(np.asarray([1], np.int64), "axes1"))
    h = "unit"
    layers = sorted({k.split(".")[1] for k in state if k.startswith("net.")}, key=int)
    for i, layer in enumerate(layers):
        w = const(f"w{layer}", state[f"net.{layer}.weight"].T)
        b = const(f"b{layer}", state[f"net.{layer}.bias"])
        nodes += [helper.make_node("MatMul", [h, w], [f"mm{layer}"]), helper.make_node("Add", [f"mm{layer}", b], [f"lin{layer}"])]
        h = f"lin{layer}"
        if i < len(layers) - 1:  # SiLU
            nodes += [helper.make_node("Sigmoid", [h], [f"sig{layer}"]), helper.make_node("Mul", [h, f"sig{layer}"], [f"act{layer}"])]
            h = f"act{layer}"
    # r⊥ = r − (r·ẑ)ẑ ;  δ = r⊥ · budget/‖r⊥‖
    nodes += [helper.make_node("Mul", [h, "unit"], ["ru"]),
              helper.make_node("ReduceSum", ["ru", "axes1"], ["rdot"], keepdims=1),
              helper.make_node("Mul", ["rdot", "unit"], ["rpar"]),
              helper.make_node("Sub", [h, "rpar"], ["rperp"])]
    h = "rperp"
    nodes += [helper.make_node("Mul", [h, h], ["rr"]),
              helper.make_node("ReduceSum", ["rr", "axes1"], ["rn2"], keepdims=1),
              helper.make_node("Add", ["rn2", const("eps2", 1e-12 if precision == "fp32" else 1e-7)], ["rn2e"]),
              helper.make_node("Sqrt", ["rn2e"], ["rnorm"]),
              helper.make_node("Div", [const("budget", config["budget"]), "rnorm"], ["rscale"]),
              helper.make_node("Mul", [h, "rscale"], ["delta"]),
              helper.make_node("Add", ["unit", "delta"], ["pu"])]
    if fresh_noise:  # pu + b·‖pu‖·n/‖n‖, rescaled to ‖pu‖ (n drawn in float32, cast for an fp16 graph)
        noise = ["noise32"] if precision == "fp32" else ["noise32", "noise"]
        nodes.append(helper.make_node("RandomNormalLike", ["pu"], ["noise32"], dtype=TensorProto.FLOAT))
        if precision == "fp16":
            nodes.append(helper.make_node("Cast", ["noise32"], ["noise"], to=et))
        nodes += [helper.make_node("Mul", [noise[-1], noise[-1]], ["nn"]),
                  helper.make_node("ReduceSum", ["nn", "axes1"], ["nn2"], keepdims=1),
                  helper.make_node("Sqrt", ["nn2"], ["nnorm"]),
                  helper.make_node("Mul", ["pu", "pu"], ["pp"]),
                  helper.make_node("ReduceSum", ["pp", "axes1"], ["pp2"], keepdims=1),
                  helper.make_node("Sqrt", ["pp2"], ["pnorm"]),
                  helper.make_node("Mul", ["pnorm", const("fresh_noise", fresh_noise)], ["nlen"]),
                  helper.make_node("Div", ["nlen", "nnorm"], ["nscale"]),
                  helper.make_node("Mul", [noise[-1], "nscale"], ["nvec"]),
                  helper.make_node("Add", ["pu", "nvec"], ["pun"]),
                  helper.make_node("Mul", ["pun", "pun"], ["qq"]),
                  helper.make_node("ReduceSum", ["qq", "axes1"], ["qq2"], keepdims=1),
                  helper.make_node("Sqrt", ["qq2"], ["qnorm"]),
                  helper.make_node("Div", ["pnorm", "qnorm"], ["qscale"]),
                  helper.make_node("Mul", ["pun", "qscale"], ["pu_noisy"])]
    pu = "pu_noisy" if fresh_noise else "pu"
    bucketed = rotation is not None and np.ndim(rotation) == 3
    if bucketed:  # row i times R_{b_i}ᵀ: gather each row's matrix, one batched (1 × d)(d × d) product per row
        inits.append(numpy_helper.from_array(np.asarray([1], np.int64), "axis_row"))
        nodes += [helper.make_node("Gather", [const("rotations_t", np.asarray(rotation).transpose(0, 2, 1)), BUCKETS],
                                   ["rot_rows"], axis=0),
                  helper.make_node("Unsqueeze", [pu, "axis_row"], ["pu_row"]),
                  helper.make_node("MatMul", ["pu_row", "rot_rows"], ["pr_row"]),
                  helper.make_node("Squeeze", ["pr_row", "axis_row"], ["pr"])]
    elif rotation is not None:
        nodes.append(helper.make_node("MatMul", [pu, const("rotation_t", np.asarray(rotation).T)], ["pr"]))
    nodes.append(helper.make_node("Mul", ["pr" if rotation is not None else "pu", "znorm"],
                                  ["out" if precision == "fp16" else OUTPUT]))
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["out"], [OUTPUT], to=TensorProto.FLOAT))
    dim = config["dim"]
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", dim])]
    if bucketed:
        inputs.append(helper.make_tensor_value_info(BUCKETS, TensorProto.INT64, ["batch"]))
    graph = helper.make_graph(
        nodes, "advface_protect", inputs,
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="advface_sdk")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _check_rotation(rotation: np.ndarray, dim: int | None = None) -> None:
    """A finite ``(d, d)`` matrix or ``(K, d, d)`` stack (``d == dim`` when given); :class:`InvalidInputError` otherwise."""
    shape = np.shape(rotation)
    if len(shape) not in (2, 3) or shape[-1] != shape[-2] or (dim is not None and shape[-1] != dim) \
            or not np.isfinite(rotation).all():
        raise InvalidInputError(f"rotation must be a finite ({dim or 'd'}, {dim or 'd'}) matrix or a (K, "
                                f"{dim or 'd'}, {dim or 'd'}) stack of them, got shape {shape}")


def probe_to_onnx(rotation: np.ndarray) -> onnx.ModelProto:
    """The probe graph of a keyed protector: ``z ↦ R·z`` (float32, dynamic batch). A stack of ``K`` rotations
    ``(K, d, d)`` (a bucketed key) prepares each probe for every bucket: ``(batch, K, d)``, row ``b`` = ``R_b·z``."""
    rotation = np.asarray(rotation, np.float32)
    _check_rotation(rotation)
    dim = int(rotation.shape[-1])
    if rotation.ndim == 3:  # (d, K·d): columns b·d:(b+1)·d are R_bᵀ; one product, then (batch, K, d)
        k = int(rotation.shape[0])
        side_by_side = rotation.transpose(2, 0, 1).reshape(dim, k * dim)
        nodes = [helper.make_node("MatMul", [INPUT, "rotations_t"], ["flat"]),
                 helper.make_node("Reshape", ["flat", "shape"], [OUTPUT])]
        inits = [numpy_helper.from_array(np.ascontiguousarray(side_by_side), "rotations_t"),
                 numpy_helper.from_array(np.asarray([-1, k, dim], np.int64), "shape")]
        out_shape = ["batch", k, dim]
    else:
        nodes = [helper.make_node("MatMul", [INPUT, "rotation_t"], [OUTPUT])]
        inits = [numpy_helper.from_array(rotation.T.copy(), "rotation_t")]
        out_shape = ["batch", dim]
    graph = helper.make_graph(
        nodes, "advface_prepare_probe",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, out_shape)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="advface_sdk")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
