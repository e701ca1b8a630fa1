"""Write the protection graph ``z ↦ (ẑ + δ(ẑ))·‖z‖`` as ONNX directly from the generator's weights.

Built with ``onnx.helper`` (no tracing), so the graph is exactly the math of
:class:`~advface_sdk.models.generator.NoiseGenerator`; ``precision="fp16"`` computes in half
precision behind float32 inputs and outputs (what TensorRT's strongly-typed builds need).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT, OUTPUT = "embeddings", "protected"


def generator_to_onnx(state: dict[str, np.ndarray], config: dict, precision: str = "fp32",
                      rotation: np.ndarray | None = None) -> onnx.ModelProto:
    """The protection graph; ``rotation`` (a deployment key's ``R``) makes it the keyed graph ``R·(ẑ + δ)·‖z‖``."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision}")
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
    if rotation is not None:
        nodes.append(helper.make_node("MatMul", ["pu", const("rotation_t", np.asarray(rotation).T)], ["pr"]))
    nodes.append(helper.make_node("Mul", ["pr" if rotation is not None else "pu", "znorm"],
                                  ["out" if precision == "fp16" else OUTPUT]))
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["out"], [OUTPUT], to=TensorProto.FLOAT))
    dim = config["dim"]
    graph = helper.make_graph(
        nodes, "advface_protect",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="advface_sdk")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def probe_to_onnx(rotation: np.ndarray) -> onnx.ModelProto:
    """The probe graph of a keyed protector: ``z ↦ R·z`` (float32, dynamic batch)."""
    dim = int(rotation.shape[0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT, "rotation_t"], [OUTPUT])], "advface_prepare_probe",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(np.asarray(rotation, np.float32).T.copy(), "rotation_t")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="advface_sdk")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
