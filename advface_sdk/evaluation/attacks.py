"""The benchmark's attacks on stolen templates.

* **Reconstruction** (non-adaptive and adaptive): an embedding → face decoder of another architecture
  (``deconv``) and seed than the defender's shadow model, trained with pixel *and* identity loss through
  a differentiable copy of the recognizer on the attacker's own identities. The non-adaptive attacker
  learns from clean embeddings; the adaptive one knows the protection scheme and learns from its
  output (keyed schemes: with the attacker's own keys for its own identities), warm-started from the
  non-adaptive attacker. Trained decoders are cached by a hash of everything that determines them.
* **Embedding-space re-identification**: stolen templates are matched directly against clean
  embeddings of other images of known people, through the method's own comparison.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from facecore.errors import InvalidInputError
from facecore.metrics import tar_at_far
from facecore.training.distributed import DistContext
from facecore.training.face_pack import FaceTrainingSet

from ..models.decoders import FaceDecoder
from ..training.reconstruction import DecoderTrainConfig, train_decoder
from .methods import ProtectionMethod


@dataclass(frozen=True)
class AttackerConfig:
    """Training budget of the attacker decoders (epochs are passes over the attacker's faces).

    Each decoder trains ``*_pixel_epochs`` with pixel loss only, then ``*_id_epochs`` with pixel and
    identity loss (the costly part: every step runs the recognizer forward and backward).
    """

    pixel_epochs: int = 10
    id_epochs: int = 3
    adaptive_pixel_epochs: int = 2
    adaptive_id_epochs: int = 1
    width: int = 16
    size: int = 64
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 1  # the shadow model uses seed 0 and the upconv architecture
    arch: str = "deconv"

    def __post_init__(self) -> None:
        for name in ("pixel_epochs", "id_epochs", "adaptive_pixel_epochs", "adaptive_id_epochs"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"attacker {name} must be >= 0, got {getattr(self, name)}")
        if self.pixel_epochs + self.id_epochs == 0:
            raise InvalidInputError("the non-adaptive attacker needs at least one epoch")

    def decoder_config(self, adaptive: bool) -> DecoderTrainConfig:
        pix, ident = (self.adaptive_pixel_epochs, self.adaptive_id_epochs) if adaptive else (self.pixel_epochs, self.id_epochs)
        return DecoderTrainConfig(epochs=max(1, pix + ident), batch_size=self.batch_size, lr=self.lr,
                                  id_weight=1.0 if ident else 0.0, id_start_epoch=pix, arch=self.arch,
                                  width=self.width, seed=self.seed)

    def budget(self, adaptive: bool) -> str:
        """``"P px + I id epochs"`` as stated in the tables."""
        pix, ident = (self.adaptive_pixel_epochs, self.adaptive_id_epochs) if adaptive else (self.pixel_epochs, self.id_epochs)
        return f"{pix} px + {ident} id epochs" + (" (warm start)" if adaptive else "")


def decoder_inputs(templates: np.ndarray) -> np.ndarray:
    """Stored templates as decoder input: bit codes become ±1, everything float32."""
    t = np.asarray(templates)
    return np.where(t, 1.0, -1.0).astype(np.float32) if t.dtype == bool else t.astype(np.float32)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, torch.nn.Module):
            for k, v in p.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def train_attacker(train: FaceTrainingSet, recognizer: torch.nn.Module, config: AttackerConfig, adaptive: bool = False,
                   inputs: np.ndarray | None = None, init: FaceDecoder | None = None, cache_dir: str | Path | None = None,
                   device: str = "cpu", progress: bool = True) -> tuple[FaceDecoder, dict]:
    """Train (or load from ``cache_dir``) one attacker decoder; returns it (on CPU) and its training summary.

    ``inputs``: the decoder inputs per training face (protected templates of the attacker's faces);
    ``None`` trains on clean embeddings. ``init``: decoder to warm-start from.
    """
    dcfg = config.decoder_config(adaptive)
    key = _digest(train.fingerprint, train.relpaths, train.size, asdict(dcfg),
                  inputs if inputs is not None else "clean", init if init is not None else "scratch")
    folder = Path(cache_dir) / f"attacker-{key}" if cache_dir else None
    if folder is not None and (folder / "config.json").is_file():
        dec = FaceDecoder.from_pretrained(folder)
        return dec, {**dec.extra_config.get("attack", {}), "cached": True}
    start = time.perf_counter()
    dec, state = train_decoder(train, recognizer, dcfg, DistContext(device=torch.device(device)),
                               inputs=inputs, init=init, progress=progress)
    dec = dec.cpu().eval()
    info = {"images": len(train), "identities": int(len(np.unique(train.labels))), "budget": config.budget(adaptive),
            "epochs": dcfg.epochs, "arch": dcfg.arch, "width": dcfg.width, "seed": dcfg.seed,
            "train_minutes": round((time.perf_counter() - start) / 60, 2), "final_loss": state["history"][-1] if state["history"] else {}}
    if folder is not None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        dec.save_pretrained(folder, extra={"attack": info})
    return dec, {**info, "cached": False}


def score_matrix(method: ProtectionMethod, stolen: np.ndarray, stolen_users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``S[i, j]``: the method's score of stolen template ``i`` against clean candidate embedding ``j``.

    Keyed methods transform the candidates with the key of template ``i``'s user (keys stolen along
    with the templates: the worst case the scheme's own verification allows); the others compare the
    clean candidates with the templates directly, as their verification does.
    """
    n, m = len(stolen), len(candidates)
    out = np.empty((n, m))
    shared = None if method.keyed else method.transform_probe(candidates, np.zeros(m, np.int64))
    for i in range(n):
        probes = shared if shared is not None else method.transform_probe(candidates, np.full(m, stolen_users[i]))
        out[i] = method.match(probes, np.repeat(stolen[i:i + 1], m, axis=0))
    return out


def reidentification(scores: np.ndarray, stolen_labels: np.ndarray, candidate_labels: np.ndarray) -> dict:
    """Rank-1 identification rate and TAR at FAR 1e-3 of stolen templates against known people."""
    same = stolen_labels[:, None] == candidate_labels[None, :]
    if not same.any(axis=1).all():
        raise InvalidInputError("every stolen template needs a candidate of the same person")
    top = candidate_labels[np.argmax(scores, axis=1)]
    tar = tar_at_far(scores.ravel(), same.ravel(), (1e-3,))
    return {"rank1": float(np.mean(top == stolen_labels)), "tar@far=0.001": tar["tar@far=0.001"],
            "templates": int(len(scores)), "candidates": int(scores.shape[1]), "n_impostors": tar["n_impostors"]}
