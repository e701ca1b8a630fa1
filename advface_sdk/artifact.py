"""Protector artifacts: ``config.json`` + ``generator.safetensors`` + ``generator.onnx`` + checksums (+ signature).

``load_artifact("fr128")`` opens a default shipped with the package; any other string is a folder.
Loading never unpickles and treats the safetensors weights as the single source of truth: it
verifies every checksum and the signature, range-checks the config, checks every tensor's name,
shape and values, requires ``generator.onnx`` to be exactly the graph the weights and config
produce, and checks the protection itself (noise of the configured length, orthogonal to the
embedding) on a fixed probe set.

Signature policy: the shipped defaults must carry a valid signature by the project key pinned
below. Any other artifact signed by a key passed in ``trust`` (or the project key) is *verified*;
unsigned or untrusted artifacts load with an :class:`UnsignedArtifactWarning`, or are refused
when ``require_signature=True`` (or ``FACEPRIV_REQUIRE_SIGNATURE=1``). A signature that does not
match the files is always refused.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from facecore import __version__
from facecore.artifacts import require_keys
from facecore.errors import ArtifactError, IncompatibleError, InvalidInputError, UnsignedArtifactWarning
from facecore.pretrained import Contents, read_pretrained, write_pretrained
from facecore.signing import SignatureStatus, artifact_signature_error, check_signature, public_key_raw

from ._onnx_export import generator_to_onnx

WEIGHTS, CONFIG, ONNX = "generator.safetensors", "config.json", "generator.onnx"
FORMAT = "advface-protector/1"
#: the project's release key (ed25519, raw public key in base64); its private half never enters the repository
PROJECT_SIGNER = "face-privacy-sdk release key"
PROJECT_PUBLIC_KEY = "O9wXTjcktnjnfPKsOUDYd9mPKOW/xa7+8gikjej+2qY="
#: config ranges: a budget below MIN_BUDGET gives no protection worth the name; 2 is the diameter of the unit sphere
MIN_BUDGET, MAX_BUDGET, MAX_WIDTH = 0.05, 2.0, 65536


def trusted_keys(trust: tuple | list = ()) -> dict[str, bytes]:
    """``{name: raw public key}``: the pinned project key plus ``trust`` (PEM paths or base64 raw keys)."""
    keys = {PROJECT_SIGNER: public_key_raw(PROJECT_PUBLIC_KEY)}
    for key in trust:
        keys[f"trusted key {Path(str(key)).name}" if Path(str(key)).is_file() else "trusted key"] = public_key_raw(key)
    return keys


def default_artifacts() -> dict[str, Path]:
    """Shipped defaults: ``{name: folder}`` (one per shared recognizer trained by this project)."""
    root = Path(str(resources.files("advface_sdk") / "defaults"))
    return {p.name: p for p in sorted(root.iterdir()) if (p / WEIGHTS).is_file()} if root.is_dir() else {}


def default_shadow(name: str) -> Path:
    """Folder of the shipped shadow decoder for a default recognizer (``"fr128"``)."""
    path = Path(str(resources.files("advface_sdk") / "defaults" / "shadows" / name))
    if not (path / "decoder.safetensors").is_file():
        raise ArtifactError(f"no shipped shadow decoder for {name!r}")
    return path


def _probes(dim: int) -> np.ndarray:
    """Fixed probe embeddings: seeded Gaussian rows at several scales plus signed basis vectors."""
    rng = np.random.default_rng(20240613)
    x = rng.standard_normal((48, dim)).astype(np.float32) * np.float32([0.01, 1.0, 30.0])[np.arange(48) % 3, None]
    eye = np.eye(dim, dtype=np.float32)[: min(dim, 16)]
    return np.concatenate([x, eye, -3 * eye])


@dataclass
class ProtectorArtifact:
    directory: Path
    config: dict
    state: dict[str, np.ndarray]
    onnx_bytes: bytes = b""
    signature: SignatureStatus = field(default_factory=lambda: SignatureStatus("unsigned"))

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def budget(self) -> float:
        return float(self.config["budget"])

    @property
    def onnx_path(self) -> Path:
        return self.directory / ONNX

    @property
    def protector_id(self) -> str:
        """16 hex digits identifying the protection (weights, dim, budget): what deployment keys are bound to."""
        h = hashlib.sha256(f"{self.dim}:{self.budget!r}".encode())
        for name in sorted(self.state):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.state[name], np.float32).tobytes())
        return h.hexdigest()[:16]

    @property
    def recognizer_fingerprint(self) -> str | None:
        return self.config.get("recognizer", {}).get("fingerprint")

    def check_recognizer(self, fingerprint: str | None) -> None:
        """Refuse embeddings of another recognizer than the one this artifact was trained for."""
        if fingerprint is not None and fingerprint != self.recognizer_fingerprint:
            raise IncompatibleError(
                f"artifact {self.directory.name} was trained for recognizer {self.recognizer_fingerprint} "
                f"({self.config.get('recognizer', {}).get('name')}), not {fingerprint}: train one for your recognizer "
                "(advface-cli train-shadow / train-generator)"
            )

    def reference(self, z: np.ndarray) -> np.ndarray:
        """The protection computed from the weights in float64 numpy: the reference every backend must match."""
        z = np.asarray(z, np.float64)
        norm = np.sqrt((z * z).sum(axis=1, keepdims=True))
        unit = z / np.maximum(norm, 1e-12)
        h = unit
        layers = sorted({int(k.split(".")[1]) for k in self.state}, key=int)
        for i, layer in enumerate(layers):
            h = h @ self.state[f"net.{layer}.weight"].astype(np.float64).T + self.state[f"net.{layer}.bias"]
            if i < len(layers) - 1:
                h = h / (1 + np.exp(-h))
        r = h - (h * unit).sum(axis=1, keepdims=True) * unit
        delta = r * (self.budget / np.sqrt((r * r).sum(axis=1, keepdims=True) + 1e-12))
        return (unit + delta) * norm

    def check_backend(self, name: str, run, tolerance: float = 1e-4) -> None:
        """Run a backend's ``run(float32 (N, dim)) -> (N, dim)`` on the fixed probes and compare with :meth:`reference`."""
        x = _probes(self.dim)
        try:
            out = np.asarray(run(x), np.float64)
        except Exception as exc:
            raise ArtifactError(f"backend {name} failed on the probe set of {self.directory.name}: {exc}") from exc
        ref = self.reference(x)
        scale = np.linalg.norm(x, axis=1, keepdims=True)
        if out.shape != ref.shape or not np.isfinite(out).all() or np.abs(out - ref).max(initial=0) > tolerance * scale.max():
            err = np.abs(out - ref).max() / scale.max() if out.shape == ref.shape else float("nan")
            raise ArtifactError(f"backend {name} does not compute the protection of {self.directory.name}'s weights "
                                f"(relative error {err:.3g} > {tolerance:g} on the probe set); refusing it")

    def build_generator(self):
        import torch

        from .models.generator import NoiseGenerator

        gen = NoiseGenerator(self.dim, self.config["hidden"], self.config["budget"])
        gen.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.state.items()})
        return gen.eval()


def save_artifact(generator, directory: str | Path, recognizer: dict, training: dict | None = None) -> Path:
    """Write a protector artifact; ``recognizer`` holds at least ``name`` and ``fingerprint``."""
    import torch

    state = {k: v.detach().cpu().float().numpy() for k, v in generator.state_dict().items()}
    config = {**generator.config, "format": FORMAT, "recognizer": recognizer, "training": training or {},
              "versions": {"sdk": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                           "python": platform.python_version()}}
    check_config(config, Path(directory))
    check_state(state, config, Path(directory))
    model = generator_to_onnx(state, config)
    return write_pretrained(directory, Contents(config, state, {ONNX: model.SerializeToString()}), CONFIG, WEIGHTS)


def check_config(config: dict, where: Path) -> None:
    """Types and ranges of a protector config; raises :class:`ArtifactError`."""
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{where}: unknown artifact format {config.get('format')!r}, expected {FORMAT}")
    require_keys(config, {"dim": int, "hidden": int, "budget": (int, float)}, str(where / CONFIG))
    if not 1 <= config["dim"] <= MAX_WIDTH or not 1 <= config["hidden"] <= MAX_WIDTH:
        raise ArtifactError(f"{where}: dim and hidden must lie in 1..{MAX_WIDTH}, got {config['dim']} and {config['hidden']}")
    budget = config["budget"]
    if not (math.isfinite(budget) and MIN_BUDGET <= budget < MAX_BUDGET):
        raise ArtifactError(f"{where}: noise budget {budget!r} is outside [{MIN_BUDGET}, {MAX_BUDGET}): "
                            "it would protect nothing or destroy the embeddings; the config is damaged or edited")
    rec = config.get("recognizer", {})
    if not isinstance(rec, dict) or not isinstance(rec.get("fingerprint", ""), str):
        raise ArtifactError(f"{where}: 'recognizer' must be an object with a string fingerprint")


def check_state(state: dict[str, np.ndarray], config: dict, where: Path) -> None:
    """Exactly the generator's tensors, with the config's shapes, float32 and finite."""
    d, h = config["dim"], config["hidden"]
    expected = {"net.0.weight": (h, d), "net.0.bias": (h,), "net.2.weight": (h, h), "net.2.bias": (h,),
                "net.4.weight": (d, h), "net.4.bias": (d,)}
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ArtifactError(f"{where}: weights do not match the generator (missing {missing}, unexpected {extra})")
    for name, shape in expected.items():
        t = state[name]
        if t.shape != shape:
            raise ArtifactError(f"{where}: weights do not match the config (dim {d}, hidden {h}): {name} has shape {t.shape}")
        if t.dtype != np.float32:
            raise ArtifactError(f"{where}: {name} must be float32, got {t.dtype}")
        if not np.isfinite(t).all():
            raise ArtifactError(f"{where}: {name} holds NaN or Inf; the weights are damaged")


def _initializers(graph) -> dict[str, np.ndarray]:
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            raise ArtifactError(f"{ONNX} refers to external data ({t.name}); protector graphs are self-contained, refusing it")
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def check_onnx(data: bytes, state: dict[str, np.ndarray], config: dict, where: Path) -> None:
    """``generator.onnx`` must be exactly the graph :func:`generator_to_onnx` builds from the weights and config."""
    expected = generator_to_onnx(state, config)
    if data == expected.SerializeToString():
        return
    try:
        stored = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ArtifactError(f"{where / ONNX} is not a valid ONNX model ({type(exc).__name__}); rebuild the artifact") from exc
    inits = _initializers(stored.graph)
    ref_inits = {t.name: numpy_helper.to_array(t) for t in expected.graph.initializer}

    def skeleton(model):
        g = onnx.GraphProto()
        g.CopyFrom(model.graph)
        del g.initializer[:]
        return g.SerializeToString(deterministic=True), sorted((o.domain, o.version) for o in model.opset_import), len(model.functions)

    same = skeleton(stored) == skeleton(expected) and inits.keys() == ref_inits.keys() and all(
        inits[k].dtype == ref_inits[k].dtype and np.array_equal(inits[k], ref_inits[k]) for k in ref_inits)
    if not same:
        raise ArtifactError(f"{where / ONNX} is not the graph of {WEIGHTS} and {CONFIG} (replaced or edited); "
                            "refusing it: rebuild it with advface-cli export-onnx or re-save the artifact")


def load_artifact(name_or_path: str | Path, trust: tuple | list = (), require_signature: bool | None = None) -> ProtectorArtifact:
    """Open and verify an artifact (a default name such as ``"fr128"`` or a folder); see the module docstring."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidInputError(f"model must be a default artifact name, a folder or a ProtectorArtifact, got "
                                f"{type(name_or_path).__name__}")
    defaults = default_artifacts()
    shipped = str(name_or_path) in defaults
    directory = defaults.get(str(name_or_path)) or Path(name_or_path)
    if not directory.is_dir():
        raise ArtifactError(f"no protector artifact at {name_or_path!r}; defaults: {sorted(defaults) or 'none installed'}")
    if require_signature is None:
        require_signature = os.environ.get("FACEPRIV_REQUIRE_SIGNATURE", "") not in ("", "0")
    status = SignatureStatus("unsigned")

    def check_signed(folder: Path) -> None:  # after the checksums, before anything is parsed
        nonlocal status
        status = check_signature(folder, trusted_keys(trust))
        if not status.verified:
            if shipped or require_signature:
                raise artifact_signature_error(folder, status)
            warnings.warn(f"protector artifact {folder}: {status.describe()}", UnsignedArtifactWarning, stacklevel=4)

    contents = read_pretrained(directory, CONFIG, WEIGHTS, "numpy", (ONNX,), check=check_signed)
    config, state, data = contents.config, contents.tensors, contents.files[ONNX]
    check_config(config, directory)
    check_state(state, config, directory)
    check_onnx(data, state, config, directory)
    art = ProtectorArtifact(directory, config, state, data, status)
    _check_protection(art)
    return art


def _check_protection(art: ProtectorArtifact) -> None:
    """On the probes the reference must add noise of length ``budget`` orthogonal to the embedding."""
    x = _probes(art.dim).astype(np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    delta = art.reference(x) / norm - x / norm
    length = np.linalg.norm(delta, axis=1)
    if not np.isfinite(delta).all() or np.abs(length - art.budget).max() > 1e-3 * max(1.0, art.budget):
        raise ArtifactError(f"{art.directory}: the weights do not produce noise of the configured budget {art.budget} "
                            f"(noise lengths {length.min():.3g}..{length.max():.3g} on the probe set): they protect nothing")
