"""Generic ONNX recognizer with explicit preprocessing (ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BackendUnavailableError, ModelLoadError
from .base import FileRecognizer, Preprocessing


def check_external_data(path: Path) -> None:
    """Refuse an ONNX file whose external-data paths lead outside its folder (absolute, ``..``, symlinks)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
    root = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (path.parent / location).resolve()
        if not location or Path(location).is_absolute() or ".." in Path(location).parts or root not in target.parents:
            raise ModelLoadError(f"{path}: tensor {tensor.name} points to external data {location!r} outside the "
                                 "model's folder; refusing it")


#: ONNX input element types a recognizer may take (the preprocessed crops are cast to it)
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def _session(path: Path, providers: Sequence[str] | None, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc


class OnnxRecognizer(FileRecognizer):
    """Any ONNX face recognizer: ``(N, 3, H, W)`` float input → ``(N, D)`` output.

    Fixed-batch-1 models are run one crop at a time, dynamic-batch models in batches
    of ``batch_size``.
    """

    def __init__(
        self,
        model_path: str | Path,
        preprocessing: Preprocessing | dict | None = None,
        name: str | None = None,
        batch_size: int = 64,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ):
        path = Path(model_path)
        if isinstance(preprocessing, dict):
            preprocessing = Preprocessing(**preprocessing)
        super().__init__(path, preprocessing or Preprocessing(), name or path.stem, batch_size=batch_size)
        check_external_data(self.model_path)
        self.session = _session(self.model_path, providers, threads)
        active = self.session.get_providers()
        if providers and (not active or active[0] not in [p if isinstance(p, str) else p[0] for p in providers]):
            raise BackendUnavailableError(f"onnxruntime could not run {self.model_path} on {list(providers)} (active: "
                                          f"{active}; available here: {_available_providers()}); refusing to fall back")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.model_path}: a recognizer takes one input (the face crops), this model takes "
                                 f"{[i.name for i in inputs]}")
        inp = inputs[0]
        self._input_name = inp.name
        self._input_dtype = INPUT_TYPES.get(inp.type)
        if self._input_dtype is None:
            raise ModelLoadError(f"{self.model_path}: the input is {inp.type}, not a float image tensor")
        shape = inp.shape
        if len(shape) != 4 or shape[1] != 3:
            raise ModelLoadError(f"{self.model_path}: expected an NCHW 3-channel input, got shape {shape}")
        w, h = self._pre.input_size
        if isinstance(shape[2], int) and isinstance(shape[3], int) and (shape[3], shape[2]) != (w, h):
            raise ModelLoadError(
                f"{self.model_path}: the model takes {shape[3]}x{shape[2]} input but preprocessing says {w}x{h}"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        out_shape = self.session.get_outputs()[0].shape
        if len(out_shape) != 2 and not (len(out_shape) == 4 and out_shape[2:] == [1, 1]):
            raise ModelLoadError(f"{self.model_path}: the output has shape {out_shape}, not (N, D) embeddings: "
                                 "is it a face recognizer?")
        # the output's first axis must be the input's batch; otherwise (e.g. a detector's anchors) measure and check it
        batch_axis = out_shape[0] == shape[0] if self.fixed_batch else not isinstance(out_shape[0], int)
        self.set_dim(out_shape[-1] if batch_axis else None)

    def infer(self, crops: np.ndarray) -> np.ndarray:
        x = self._pre.apply(crops).astype(self._input_dtype, copy=False)
        try:
            out = self.session.run(None, {self._input_name: x})[0]
        except Exception as exc:  # onnxruntime's own exception types: shapes the graph cannot take, ...
            raise ModelLoadError(f"{self.model_path}: onnxruntime failed on a batch of {x.shape}: {exc}") from exc
        if out.ndim < 2 or out.shape[0] != x.shape[0]:
            raise ModelLoadError(f"{self.model_path}: the model returned {out.shape} for {x.shape[0]} crops, not one "
                                 "embedding per crop: is it a face recognizer?")
        return out.reshape(x.shape[0], -1)
