"""``advface`` (trained noise generator) and ``advface-pgd`` (per-sample PGD reference) as benchmark methods.

Both store ``(ẑ + δ)·‖z‖`` with ``δ ⟂ ẑ``, ``‖δ‖ = budget`` and compare it with *clean* probes by cosine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from facecore.errors import IncompatibleError, InvalidInputError

from .base import ProtectionMethod
from .registry import register_method


@register_method
class AdvFace(ProtectionMethod):
    """The shipped AdvFace protector (``artifact``: default name such as ``"fr128"`` or a folder)."""

    name = "advface"

    def __init__(self, artifact: str = "fr128", backend: str = "onnxruntime", seed: int = 0, dim: int | None = None) -> None:
        super().__init__(seed, dim)
        from ...protector import Protector

        self.artifact = str(artifact)
        self.backend = backend
        self.protector = Protector(self.artifact, backend=backend)
        if self.dim is not None and self.dim != self.protector.dim:
            raise IncompatibleError(f"advface: artifact {self.artifact} protects {self.protector.dim}-d embeddings, not {self.dim}-d")

    @property
    def budget(self) -> float:
        return float(self.protector.artifact.config["budget"])

    def _params(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend}

    def fit(self, train_embeddings: np.ndarray, train_labels: np.ndarray | None = None) -> "AdvFace":
        super().fit(train_embeddings, train_labels)
        if self.dim != self.protector.dim:
            raise IncompatibleError(f"advface: artifact {self.artifact} protects {self.protector.dim}-d embeddings, "
                                    f"the training embeddings are {self.dim}-d")
        return self

    def output_dim(self, dim: int) -> int:
        return dim

    def bytes_per_template(self, dim: int) -> int:
        return 4 * dim

    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self.protector.protect(z.astype(np.float32))


@register_method
class AdvFaceKeyed(AdvFace):
    """AdvFace with a deployment key: templates ``R·advface(z)``, probes ``R·z`` (``R``: the key's secret rotation).

    The key is derived from ``seed`` (reproducible runs; a deployment uses ``advface-cli keygen``): the
    benchmark's defender uses seed 0, and an attacker without the key gets another seed's key.
    """

    name = "advface-key"

    def __init__(self, artifact: str = "fr128", backend: str = "onnxruntime", seed: int = 0, dim: int | None = None) -> None:
        super().__init__(artifact, backend, seed, dim)
        import hashlib

        from ...keys import DeploymentKey
        from ...protector import Protector

        secret = hashlib.sha256(f"advface-key benchmark seed {self.seed}".encode()).digest()
        self.key = DeploymentKey(secret, self.protector.artifact.protector_id)
        self.protector = Protector(self.protector.artifact, backend=backend, key=self.key)

    def _probe(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self.protector.prepare_probe(z.astype(np.float32))

    def undo_key(self, templates: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        """(b) What a thief holding the key gets back from stored templates: the AdvFace templates (rows ``Rᵀ·t``)."""
        return templates.astype(np.float64) @ self.key.rotation(templates.shape[1])

    def partitions(self, user_ids: np.ndarray) -> np.ndarray:
        """The store partition each user's template sits in, visible to a thief (one for a plain key)."""
        return np.zeros(len(user_ids), np.int64)


@register_method
class AdvFaceBucketed(AdvFaceKeyed):
    """AdvFace + a bucketed deployment key (the 1:N keyed mode): user ``u``'s template is ``R_b·advface(z)`` with
    ``b`` = HMAC(key, ``"user-<u>"``) mod ``buckets``; a probe takes the claimed user's bucket (a 1:N search prepares
    every bucket and merges the per-bucket lists, with the same scores). The thief sees each template's bucket."""

    name = "advface-bucketed"
    keyed = True  # the probe's transform depends on the user (his bucket)

    def __init__(self, artifact: str = "fr128", backend: str = "onnxruntime", seed: int = 0, dim: int | None = None,
                 buckets: int = 64) -> None:
        super().__init__(artifact, backend, seed, dim)
        from ...keys import DeploymentKey
        from ...protector import Protector

        self.buckets = int(buckets)
        self.key = DeploymentKey(self.key.secret, self.key.protector_id, self.buckets)
        self.protector = Protector(self.protector.artifact, backend=backend, key=self.key)

    def _params(self) -> dict:
        return {**super()._params(), "buckets": self.buckets}

    @staticmethod
    def _ids(user_ids: np.ndarray) -> list[str]:
        return [f"user-{int(u)}" for u in user_ids]

    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self.protector.protect(z.astype(np.float32), users=self._ids(user_ids))

    def _probe(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self.protector.prepare_probe(z.astype(np.float32), users=self._ids(user_ids))

    def partitions(self, user_ids: np.ndarray) -> np.ndarray:
        return self.key.bucket(self._ids(user_ids))

    def undo_key(self, templates: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        out, b = templates.astype(np.float64), self.partitions(user_ids)
        for k in np.unique(b):
            out[b == k] = out[b == k] @ self.key.bucket_rotation(int(k), templates.shape[1]).astype(np.float64)
        return out


@register_method
class AdvFaceSalted(AdvFaceKeyed):
    """AdvFace + key + per-user salts (1:1 only): templates ``Q_u·R·advface(z)``, probes ``Q_u·R·z``.

    ``Q_u`` comes from the deployment key and user ``u``'s salt (:meth:`~advface_sdk.keys.DeploymentKey.salted_rotation`);
    salts are derived from ``(seed, user_id)`` for reproducible runs (a deployment uses ``new_salt()``), and a
    probe takes the salt of the identity it claims.
    """

    name = "advface-salted"
    keyed = True

    def salt(self, user_id: int) -> bytes:
        """User ``user_id``'s salt (what the user holds; the thief of the store and key does not)."""
        from ...keys import SALT_BYTES

        return self._rng(int(user_id)).bytes(SALT_BYTES)

    def _salts(self, user_ids: np.ndarray) -> list[bytes]:
        cache = {u: self.salt(u) for u in np.unique(user_ids).tolist()}
        return [cache[u] for u in user_ids.tolist()]

    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self.protector.protect(z.astype(np.float32), self._salts(user_ids))

    def _probe(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self.protector.prepare_probe(z.astype(np.float32), self._salts(user_ids))


@register_method
class AdvFacePGD(ProtectionMethod):
    """Per-sample projected gradient descent against a shadow decoder (:func:`advface_sdk.pgd.pgd_protect`).

    ``shadow``: decoder folder; ``recognizer``: name or path of the recognizer whose differentiable copy
    scores identity; ``artifact``: take the budget and loss weights from this generator artifact's
    training config (else ``budget`` and the default weights). Slow: meant for a subset of templates.
    """

    name = "advface-pgd"

    def __init__(self, shadow: str, recognizer: str = "fr128", artifact: str | None = None, budget: float | None = None,
                 steps: int = 30, batch_size: int = 64, seed: int = 0, dim: int | None = None) -> None:
        super().__init__(seed, dim)
        from ...artifact import load_artifact
        from ...models.decoders import FaceDecoder
        from ...training.generator import GeneratorTrainConfig

        if not (isinstance(steps, (int, np.integer)) and steps >= 1):
            raise InvalidInputError(f"advface-pgd: steps must be a positive integer, got {steps!r}")
        weights = {}
        if artifact is not None:
            cfg = load_artifact(artifact).config
            fields = {f.name for f in dataclasses.fields(GeneratorTrainConfig)}
            weights = {k: v for k, v in cfg.get("training", {}).get("config", {}).items() if k in fields}
            budget = cfg["budget"] if budget is None else budget
        if budget is None:
            raise InvalidInputError("advface-pgd: give a noise budget or a generator artifact to take it from")
        self.config = GeneratorTrainConfig(**{**weights, "budget": float(budget), "seed": self.seed})
        self.shadow_path, self.recognizer_name, self.artifact = str(shadow), str(recognizer), artifact
        self.steps, self.batch_size = int(steps), int(batch_size)
        self.shadow = FaceDecoder.from_pretrained(Path(shadow))
        self._torch_recognizer = None

    @property
    def budget(self) -> float:
        return self.config.budget

    def _params(self) -> dict:
        return {"shadow": self.shadow_path, "recognizer": self.recognizer_name, "artifact": self.artifact,
                "budget": self.budget, "steps": self.steps, "batch_size": self.batch_size}

    def output_dim(self, dim: int) -> int:
        return dim

    def bytes_per_template(self, dim: int) -> int:
        return 4 * dim

    def _recognizer(self):
        if self._torch_recognizer is None:
            from facecore.recognizers import create_recognizer

            self._torch_recognizer = create_recognizer(self.recognizer_name).to_torch()
        return self._torch_recognizer

    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        import torch

        from ...pgd import pgd_protect

        if z.shape[1] != self.shadow.dim:
            raise IncompatibleError(f"advface-pgd: the shadow decoder takes {self.shadow.dim}-d embeddings, got {z.shape[1]}-d")
        torch.manual_seed(self.seed)
        out = []
        for i in tqdm(range(0, len(z), self.batch_size), desc="advface-pgd", leave=False, disable=len(z) <= self.batch_size):
            zb = torch.from_numpy(z[i:i + self.batch_size].astype(np.float32))
            lab = torch.from_numpy(user_ids[i:i + self.batch_size])
            out.append(pgd_protect(zb, lab, None, self.shadow, self._recognizer(), self.config, self.steps).numpy())
        return np.concatenate(out).astype(np.float32)
