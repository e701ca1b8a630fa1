"""The benchmark's attacks on stolen templates.

* **Reconstruction** (non-adaptive and adaptive): an embedding → face decoder of another architecture
  (``deconv``) and seed than the defender's shadow model, trained with pixel *and* identity loss through
  a differentiable copy of the recognizer on the attacker's own identities. The non-adaptive attacker
  learns from clean embeddings; the adaptive one knows the protection scheme and learns from its
  output (keyed schemes: with the attacker's own keys for its own identities), warm-started from the
  non-adaptive attacker. Trained decoders are cached by a hash of everything that determines them.
* **Embedding-space re-identification**: stolen templates are matched directly against clean
  embeddings of other images of known people, through the method's own comparison.
* **Pair-free linking (c)**: the stolen set is matched to clean photos of the victims without any known
  pair — by similarity profiles and Procrustes (:func:`align_without_pairs`), and by the sets' similarity
  structures (:func:`match_without_pairs`, Gromov–Wasserstein), which no isometric key hides.
* **Known plaintext (d)**: linear maps fitted on pairs the thief enrolled himself
  (:func:`known_plaintext_attack`); a thief who holds the very images enrolled finds their templates by
  their exact cosines, without ids (:func:`find_own_templates`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError
from facecore.metrics import tar_at_far
from facecore.training.distributed import DistContext
from facecore.training.face_pack import FaceTrainingSet

from ..models.decoders import FaceDecoder
from ..training.reconstruction import DecoderTrainConfig, Validator, train_decoder, train_decoder_converged
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
    #: adaptive attacker trained to convergence: after ``adaptive_pixel_epochs`` pixel-only epochs, pixel +
    #: identity epochs until the loss on held-out attacker identities stops improving for ``patience``
    #: epochs (at most ``adaptive_max_epochs`` in all); 0 = the fixed ``adaptive_id_epochs`` instead
    adaptive_max_epochs: int = 20
    patience: int = 2
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("pixel_epochs", "id_epochs", "adaptive_pixel_epochs", "adaptive_id_epochs"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"attacker {name} must be >= 0, got {getattr(self, name)}")
        if self.pixel_epochs + self.id_epochs == 0:
            raise InvalidInputError("the non-adaptive attacker needs at least one epoch")
        if self.adaptive_max_epochs < 0 or (self.adaptive_max_epochs and self.adaptive_max_epochs <= self.adaptive_pixel_epochs):
            raise InvalidInputError("adaptive_max_epochs must be 0 (fixed epochs) or more than adaptive_pixel_epochs")

    @property
    def converged(self) -> bool:
        """Whether the adaptive attacker trains until early stopping (else a fixed number of epochs)."""
        return self.adaptive_max_epochs > 0

    def convergence(self):
        from ..training.reconstruction import ConvergenceConfig

        return ConvergenceConfig(max_epochs=self.adaptive_max_epochs, patience=self.patience,
                                 warmup_epochs=self.adaptive_pixel_epochs, val_fraction=self.val_fraction)

    def decoder_config(self, adaptive: bool) -> DecoderTrainConfig:
        pix, ident = (self.adaptive_pixel_epochs, self.adaptive_id_epochs) if adaptive else (self.pixel_epochs, self.id_epochs)
        return DecoderTrainConfig(epochs=max(1, pix + ident), batch_size=self.batch_size, lr=self.lr,
                                  id_weight=1.0 if ident else 0.0, id_start_epoch=pix, arch=self.arch,
                                  width=self.width, seed=self.seed)

    def budget(self, adaptive: bool) -> str:
        """``"P px + I id epochs"`` as stated in the tables."""
        if adaptive and self.converged:
            return (f"warm start, {self.adaptive_pixel_epochs} px epochs, then px + id epochs until the loss on held-out "
                    f"attacker identities ({self.val_fraction:.0%}) stops improving (patience {self.patience}, at most "
                    f"{self.adaptive_max_epochs} epochs in all)")
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
                   device: str = "cpu", progress: bool = True, validator: Validator | None = None) -> tuple[FaceDecoder, dict]:
    """Train (or load from ``cache_dir``) one attacker decoder; returns it (on CPU) and its training summary.

    ``inputs``: the decoder inputs per training face (protected templates of the attacker's faces);
    ``None`` trains on clean embeddings. ``init``: decoder to warm-start from. An adaptive attacker with
    ``config.converged`` trains until early stopping on held-out attacker identities
    (:func:`~advface_sdk.training.reconstruction.train_decoder_converged`); its summary then carries the
    per-epoch ``curve`` (validation loss and, with ``validator``, validation type II).
    """
    dcfg = config.decoder_config(adaptive)
    converge = adaptive and config.converged
    key = _digest(train.fingerprint, train.relpaths, train.size, asdict(dcfg),
                  inputs if inputs is not None else "clean", init if init is not None else "scratch",
                  asdict(config.convergence()) if converge else "fixed",
                  "validator" if converge and validator is not None and validator.evaluator is not None else "-")
    folder = Path(cache_dir) / f"attacker-{key}" if cache_dir else None
    if folder is not None and (folder / "config.json").is_file():
        dec = FaceDecoder.from_pretrained(folder)
        return dec, {**dec.extra_config.get("attack", {}), "cached": True}
    start = time.perf_counter()
    if converge:
        dec, state = train_decoder_converged(train, recognizer, dcfg, config.convergence(),
                                             inputs=None if inputs is None else torch.as_tensor(inputs),
                                             init=init, validator=validator, device=device, progress=progress)
        last = {k: v for k, v in state["history"][-1].items() if k.startswith(("train_", "val_"))}
    else:
        dec, state = train_decoder(train, recognizer, dcfg, DistContext(device=torch.device(device)),
                                   inputs=inputs, init=init, progress=progress)
        last = state["history"][-1] if state["history"] else {}
    dec = dec.cpu().eval()
    info = {"images": len(train), "identities": int(len(np.unique(train.labels))), "budget": config.budget(adaptive),
            "epochs": state["epochs_run"] if converge else dcfg.epochs, "arch": dcfg.arch, "width": dcfg.width,
            "seed": dcfg.seed, "params": int(sum(p.numel() for p in dec.parameters())),
            "train_minutes": round((time.perf_counter() - start) / 60, 2), "final_loss": last}
    if converge:
        info.update(best_epoch=state["best_epoch"], stopped=state["stopped"], train_faces=state["train_faces"],
                    val_faces=state["val_faces"], val_identities=state["val_identities"], curve=state["history"])
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


# ---------------------------------------------------------------------- attacks without the key

def procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Orthogonal (or semi-orthogonal, for other widths) ``W`` minimising ``‖a W − b‖``. LAPACK's divide-and-conquer
    SVD can fail to converge on the near-rank-1 products of a handful of pairs; the slower QR-iteration driver then
    answers."""
    try:
        u, _, vt = np.linalg.svd(a.T @ b, full_matrices=False)
    except np.linalg.LinAlgError:
        import scipy.linalg

        u, _, vt = scipy.linalg.svd(a.T @ b, full_matrices=False, lapack_driver="gesvd")
    return u @ vt


def rank1(mapped: np.ndarray, candidates: np.ndarray) -> float:
    """Share of rows ``i`` of ``mapped`` whose cosine-nearest candidate is row ``i`` (same person)."""
    return float(np.mean(np.argmax(l2_normalize(mapped) @ l2_normalize(candidates).T, axis=1) == np.arange(len(candidates))))


def align_without_pairs(templates: np.ndarray, clean: np.ndarray, top: int = 64, iters: int = 30) -> np.ndarray:
    """(c) Map stolen ``templates`` into the space of ``clean`` embeddings without any known pair.

    As in unsupervised word translation: initial matches from each point's sorted similarity profile
    within its own set (invariant to any rotation of that set), then orthogonal Procrustes refined on
    mutual nearest neighbours. Returns the templates mapped (unit rows, the width of ``clean``). Profiles hold the
    ``top`` largest similarities, fewer where either set is smaller.
    """
    x, y = l2_normalize(templates - templates.mean(0)), l2_normalize(clean - clean.mean(0))
    top = min(top, len(x) - 1, len(y) - 1)
    if top < 1:  # a set of one point has no similarity profile: nothing to align, the template left as stored
        return l2_normalize(np.asarray(templates, np.float64)[:, :y.shape[1]])

    def profile(z):
        s = np.sort(z @ z.T, axis=1)[:, ::-1][:, 1:top + 1]
        return l2_normalize(s - s.mean(1, keepdims=True))

    sim, w, pairs = profile(x) @ profile(y).T, None, None
    for _ in range(iters):
        fwd, bwd = sim.argmax(1), sim.argmax(0)
        mutual = np.flatnonzero(bwd[fwd] == np.arange(len(x)))
        if len(mutual) < 2:
            break
        if pairs is not None and np.array_equal(pairs, fwd[mutual] * len(x) + mutual):
            break  # the same pairs give the same map: a fixed point, every further iteration repeats it exactly
        pairs = fwd[mutual] * len(x) + mutual
        w = procrustes(x[mutual], y[fwd[mutual]])
        sim = (x @ w) @ y.T
    return l2_normalize(x @ w) if w is not None else l2_normalize(x[:, :y.shape[1]])


#: entropic regularisation of the Gromov–Wasserstein matcher, annealed coarse → fine (each stage warm-starts the next)
GW_EPSILONS = (5e-3, 2e-3, 1e-3, 5e-4, 2e-4)


def annealed_gw(cx: np.ndarray, cy: np.ndarray, epsilons: tuple[float, ...] = GW_EPSILONS):
    """Yield ``(epsilon, coupling)`` of POT's entropic Gromov–Wasserstein between two similarity matrices (uniform
    marginals, sizes may differ), annealed coarse → fine, each stage warm-starting the next; stops at divergence."""
    import warnings

    import ot

    p, q, coupling = ot.unif(len(cx)), ot.unif(len(cy)), None
    for eps in epsilons:
        with warnings.catch_warnings():  # non-converged inner Sinkhorn stages are expected while annealing
            warnings.simplefilter("ignore")
            coupling = ot.gromov.entropic_gromov_wasserstein(cx, cy, p, q, "square_loss", epsilon=eps, max_iter=300,
                                                             G0=coupling, solver="PPA" if eps < 1e-3 else "PGD")
        if not np.isfinite(coupling).all():
            return
        yield eps, coupling


def match_without_pairs(templates: np.ndarray, candidates: np.ndarray, epsilons: tuple[float, ...] = GW_EPSILONS) -> dict:
    """(c) Match stolen ``templates`` to ``candidates`` (one per person) from the two sets' shapes alone.

    A Gromov–Wasserstein coupling of the two cosine-similarity matrices (POT's entropic solver, rather
    than a hand-written one). It sees only similarities *within* each set, so any secret isometry applied
    to every template — a rotation key — is invisible to it. The thief needs no pair and no label: of
    the annealing stages he keeps the hard matching with the lowest GW objective. Returns ``match``
    (candidate index per template), ``epsilon`` and ``objective`` of the kept stage.
    """


    x, y = l2_normalize(np.asarray(templates, np.float64)), l2_normalize(np.asarray(candidates, np.float64))
    if len(x) != len(y) or len(x) < 2:
        raise InvalidInputError(f"match_without_pairs needs two sets of the same size ≥ 2, got {len(x)} and {len(y)}")
    cx, cy = x @ x.T, y @ y.T
    best = None
    for eps, coupling in annealed_gw(cx, cy, epsilons):
        match = coupling.argmax(1)
        objective = float(np.mean((cx - cy[np.ix_(match, match)]) ** 2))
        if best is None or objective < best["objective"]:
            best = {"match": match, "epsilon": eps, "objective": objective}
    if best is None:
        raise InvalidInputError("match_without_pairs: the Gromov–Wasserstein solver diverged on these sets")
    return best


def matched_rank1(match: np.ndarray) -> float:
    """Share of stolen templates ``i`` that a pair-free matching sends to candidate ``i`` (the same person)."""
    return float(np.mean(np.asarray(match) == np.arange(len(match))))


def find_own_templates(stored: np.ndarray, own: np.ndarray, parts: np.ndarray | None = None,
                       tol: float = 1e-6) -> np.ndarray:
    """The thief who holds the very images enrolled for some stored templates finds those templates without
    their ids: an isometric key (one secret rotation per partition) keeps every cosine between two templates
    of a partition, and the public SDK gives him those cosines exactly from his images. ``own``: his
    deterministic templates of his images (plain AdvFace, no key). Each pair of stored templates votes for the
    pairs of his templates whose cosine equals theirs within ``tol`` (a float32 store keeps cosines to ~1e-7);
    a template is his image ``a`` when ``a`` wins at least 4 votes (4 more of his images in the partition) and
    three times the runner-up. Returns, per stored template, the index into ``own`` or
    ``-1``. Found templates are known plaintext pairs (:func:`known_plaintext_attack`). Holds every pair of
    ``own`` in memory (``len(own)² / 2`` cosines): for thieves of up to ~10 k images."""
    stored, own = l2_normalize(np.asarray(stored, np.float64)), l2_normalize(np.asarray(own, np.float64))
    parts = np.zeros(len(stored), np.int64) if parts is None else np.asarray(parts)
    n = len(own)
    ia, ja = np.triu_indices(n, 1)
    values = (own @ own.T)[ia, ja]
    order = np.argsort(values, kind="stable")
    values, ia, ja = values[order], ia[order], ja[order]
    found = np.full(len(stored), -1, np.int64)
    for k in np.unique(parts):
        rows = np.flatnonzero(parts == k)
        if len(rows) < 5:  # too few other templates to vote
            continue
        x = stored[rows]
        step = max(1, (1 << 22) // len(rows))
        for start in range(0, len(rows), step):  # template i's votes from every pair (i, j) of its partition
            cos = x[start:start + step] @ x.T
            cos[np.arange(len(cos)), start + np.arange(len(cos))] = np.inf  # not (i, i)
            lo, hi = np.searchsorted(values, cos - tol), np.searchsorted(values, cos + tol)
            hits = (hi - lo).ravel()
            votes = np.zeros((len(cos), n), np.int32)
            if hits.sum():
                at = np.concatenate([np.arange(u, v) for u, v in zip(lo.ravel()[hits > 0], hi.ravel()[hits > 0])])
                t = np.repeat(np.repeat(np.arange(len(cos)), len(rows)), hits)
                np.add.at(votes, (np.concatenate([t, t]), np.concatenate([ia[at], ja[at]])), 1)  # either orientation
            top2 = np.sort(votes, axis=1)[:, -2:]
            ok = (top2[:, 1] >= 4) & (top2[:, 1] >= 3 * top2[:, 0])
            found[rows[start:start + step][ok]] = votes.argmax(1)[ok]
    return found


def known_plaintext_maps(pairs_clean: np.ndarray, pairs_stored: np.ndarray) -> dict[str, np.ndarray]:
    """(d) Linear maps stored template → clean embedding fitted on the thief's own (clean, stored) pairs:
    ridge least squares, and orthogonal Procrustes where the widths allow."""
    a, b = pairs_stored.astype(np.float64), l2_normalize(pairs_clean.astype(np.float64))
    maps = {"least squares": np.linalg.solve(a.T @ a + 1e-2 * len(a) * np.eye(a.shape[1]), a.T @ b)}
    if a.shape[1] >= b.shape[1]:
        maps["procrustes"] = procrustes(l2_normalize(a), b)
    return maps


def known_plaintext_attack(pairs_clean: np.ndarray, pairs_stored: np.ndarray, stolen: np.ndarray, candidates: np.ndarray,
                           pair_parts: np.ndarray | None = None,
                           stolen_parts: np.ndarray | None = None) -> tuple[float, str, np.ndarray]:
    """(d) The better of the :func:`known_plaintext_maps` applied to the ``stolen`` templates: ``(rank-1 against
    candidates, map name, mapped templates)``. With partitions (a bucketed key's buckets, which the store shows),
    one map per partition fitted on the pairs in it; templates of a partition without pairs stay unmapped."""
    pair_parts = np.zeros(len(pairs_stored), np.int64) if pair_parts is None else pair_parts
    stolen_parts = np.zeros(len(stolen), np.int64) if stolen_parts is None else stolen_parts
    best = None
    for name in ("least squares", "procrustes"):
        mapped = None
        for k in np.unique(stolen_parts):
            mine, rows = pair_parts == k, stolen_parts == k
            maps = known_plaintext_maps(pairs_clean[mine], pairs_stored[mine]) if mine.any() else {}
            if name not in maps:  # no pair in this partition (or no Procrustes for these widths)
                continue
            if mapped is None:
                mapped = np.zeros((len(stolen), maps[name].shape[1]))
                if mapped.shape[1] == stolen.shape[1]:
                    mapped[:] = stolen
            x = stolen[rows]
            mapped[rows] = (l2_normalize(x) if name == "procrustes" else x) @ maps[name]
        if mapped is not None:
            r1 = rank1(mapped, candidates)
            if best is None or r1 > best[0]:
                best = (r1, name, mapped)
    return best