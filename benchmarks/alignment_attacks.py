"""(c) Pair-free attackers against keyed AdvFace templates, and what stops them: rotation, salts, noise, decoy padding.

The thief holds the stolen template database, the SDK and the public recognizers, and clean photos of
the victims, but no key and no (photo, template) pair. He links stolen templates to their owners and,
once the key is undone, decodes them. Schemes, all on the shipped AdvFace generator's templates ``g``:

* ``rotation key`` — ``R·ĝ`` (what ``protect(..., key=)`` stores, up to the template's norm);
* ``salted rotation (1:1)`` — ``Q_u·R·ĝ``, one salt per user (``protect(..., key=, salts=)``);
* ``advface + fresh noise b`` — AdvFace, then fresh Gaussian noise of relative size ``b`` drawn for every
  template and kept nowhere (enrolling the same face twice stores two draws), then the rotation key;
* ``keyed noise direction`` — AdvFace's perturbation ``ĝ − ẑ`` turned by a second secret rotation before it is
  added back (the thief's SDK, with his key, makes other noise), then the rotation key;
* ``decoy padding c`` — ``R₂·[ĝ ; c·d̂]`` in twice the width (``--blocks b``: ``b`` decoys, ``1+b`` times the
  width, scores divided by ``√(1+b)``): ``d`` a fresh decoy drawn for every template
  from a Gaussian with the mean and covariance of public AdvFace templates (defender identities), so no
  second-moment statistic tells the halves apart; probes are ``R₂·[ẑ ; 0]``. Scores are the AdvFace
  scores divided by ``√(1+c²)``: accuracy and every ranking are exactly AdvFace's, at twice the storage.
* ``identity decoys c`` — decoy padding where each user gets a keyed *virtual identity*: the decoy is that
  identity's mean (drawn once per user id from the between-identity covariance of public templates) plus
  fresh within-identity variation (the within-identity covariance), so the decoy half of one user's
  templates agrees about as much as the template half does;
* ``bucketed rotation K`` — users spread over ``K`` keyed buckets (HMAC(key, user id) mod K), one secret
  rotation per bucket; a 1:N query is prepared once per bucket and searched in that bucket's partition, so
  accuracy is AdvFace's and cosines *across* buckets mean nothing;
* ``bucketed rotation K + fresh noise b`` (``--bucket-noise``) — the same with fresh noise of relative size ``b``
  before the bucket's rotation, as a bucketed ``Gallery`` enrols by default (``fresh_noise``).

Attackers, each reported (the strongest is what counts):

* profile + Procrustes (the harness's first aligner);
* Gromov–Wasserstein matching of the similarity structures (``match_without_pairs``), against the clean
  photos and against the photos protected with the public SDK under the thief's own key (own decoys);
* subspace + GW (padding only): the thief first looks for the template half in the whole stolen database
  (every image of the victims' folds; ``--store all``: every LFW image but the thief's own faces), as its top
  principal subspace, or as the subspace in which every template's share of the squared norm is most
  constant (the halves are each unit vectors; a torch search over orthonormal bases, several restarts), or as
  the subspace in which
  presumed same-person pairs (mutual nearest neighbours) agree most (paired scatter: LDA with the pairs as
  classes, re-paired inside the subspace three times), or with the store's own user ids as classes (a
  stolen store keeps its user column: user-id scatter), then runs GW on the victims' templates projected on it
  — of each subspace and its complement he keeps the one whose GW matching fits better;
* store alignment (rotations and buckets): the thief aligns the *whole* stolen store (each bucket apart) to
  plain AdvFace templates of faces of his own, identity-disjoint from the store, with the
  unsupervised-translation aligner (similarity profiles, then Procrustes on mutual nearest neighbours), then
  re-identifies the victims directly or by GW; against buckets also GW of each bucket's templates into all
  the photos (unequal sizes), one photo per template over all buckets;
* store projection (rotations and buckets): PCA commutes with a rotation, so the thief projects each bucket of
  the stolen store onto its own top principal directions (90 % of the bucket's variance) — in the keyed space
  this takes off AdvFace's noise as ``SubspaceDenoiser`` does in the clean one — and projects his own AdvFace
  templates by PCA of his clean embeddings; then the store alignment above, its result matched directly and by
  GW to the clean photos (the plain rotation key: also GW of the projected store vs the clean photos);
* own images by exact cosines (buckets; ``--store all+thief``, where the store holds the thief's images): a
  key of one rotation per bucket keeps every cosine inside a bucket, so the thief finds the templates of
  the very images he holds by those exact cosines, without their ids (``find_own_templates``), and uses
  them as known plaintext pairs, one map per bucket (``known_plaintext_attack``).

Victims: 346 people of LFW folds 9–10 (chance rank-1 1/346); LFW accuracy on View-2 folds 6–10. One key
links few enough victims that chance moves it by a victim or two, so each rank-1 is the mean over
``--keys`` independent deployment keys (per-key values in the JSON). Key ranges can run on separate cores
(``--first-key``) and be joined into one report (``--merge A.json B.json --out ...``).

    FACEPRIV_SHARED=... FACEPRIV_CACHE=... python benchmarks/alignment_attacks.py --out benchmarks/results/threat_matrix/alignment_attacks
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from advface_sdk.evaluation.attacks import (
    align_without_pairs,
    annealed_gw,
    find_own_templates,
    known_plaintext_attack,
    match_without_pairs,
    matched_rank1,
    rank1,
)
from advface_sdk.evaluation.denoise import SubspaceDenoiser
from advface_sdk.keys import DeploymentKey, random_rotation
from facecore.embeddings import l2_normalize
from facecore.metrics import kfold_accuracy


class Scheme:
    """One keyed storage transform: ``store(g, z, users)`` for AdvFace templates ``g`` of clean embeddings ``z``,
    ``probe(z, users)`` for clean probes."""

    def __init__(self, name: str, dim: int, key_seed: int, public: np.ndarray, decoy: float | None = None,
                 blocks: int = 1, salted: bool = False, noise: float = 0.0, keyed_noise: bool = False,
                 identity_decoy: bool = False, public_labels: np.ndarray | None = None, buckets: int = 0):
        self.name, self.decoy, self.blocks, self.salted, self.buckets = name, decoy, blocks, salted, buckets
        self.identity_decoy, self.key_seed = identity_decoy, key_seed
        self.noise, self.keyed_noise = noise, keyed_noise
        self.rng = np.random.default_rng(key_seed)
        if buckets:  # the SDK's own bucketed key, its secret derived from the seed (a measurement, not a deployment)
            secret = hashlib.sha256(f"alignment attacks key {key_seed}".encode()).digest()
            self.bucket_key = DeploymentKey(secret, "alignment-attacks", buckets)
        self.rot = random_rotation(self.rng, dim * (1 + blocks if decoy else 1))
        self.salt_seed = int(self.rng.integers(2 ** 31))
        if keyed_noise:
            self.noise_rot = random_rotation(self.rng, dim)
        if decoy:
            pub = l2_normalize(public)
            self.mean, self.chol = pub.mean(0), np.linalg.cholesky(np.cov(pub.T) + 1e-6 * np.eye(dim))
            if identity_decoy:  # a virtual person per user: between- and within-identity covariances of public templates
                ids, inv = np.unique(public_labels, return_inverse=True)
                counts = np.bincount(inv)
                keep = counts[inv] >= 2
                means = np.stack([pub[inv == i].mean(0) for i in range(len(ids))])
                within = pub[keep] - means[inv[keep]]
                s_w = within.T @ within / (keep.sum() - (counts >= 2).sum())
                s_b = np.cov(means[counts >= 2].T) - s_w / np.mean(counts[counts >= 2])
                w, v = np.linalg.eigh(s_b)
                self.chol_b = v * np.sqrt(np.clip(w, 0, None))
                self.chol_w = np.linalg.cholesky(s_w + 1e-6 * np.eye(dim))

    def bucket(self, users: np.ndarray) -> np.ndarray:
        """Each user's bucket under the SDK's bucketed key (``DeploymentKey.bucket`` of id ``user-<u>``); one bucket
        (the whole store) for a plain rotation key."""
        if not self.buckets:
            return np.zeros(len(users), int)
        return self.bucket_key.bucket([f"user-{int(u)}" for u in users])

    def _bucketed(self, x: np.ndarray, users: np.ndarray) -> np.ndarray:
        out, b = np.empty_like(x), self.bucket(users)
        for k in np.unique(b):
            out[b == k] = x[b == k] @ self.bucket_key.bucket_rotation(int(k), x.shape[1]).T.astype(np.float64)
        return out

    def _salted(self, x: np.ndarray, users: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for u in np.unique(users):
            q = random_rotation(np.random.default_rng([self.salt_seed, int(u)]), x.shape[1])
            out[users == u] = x[users == u] @ (q @ self.rot).T
        return out

    def store(self, g: np.ndarray, z: np.ndarray, users: np.ndarray) -> np.ndarray:
        x = l2_normalize(g)
        if self.keyed_noise:  # AdvFace's perturbation turned by a secret rotation: the thief's SDK makes other noise
            zn = l2_normalize(z)
            x = l2_normalize(zn + (x - zn) @ self.noise_rot.T)
        if self.noise:  # fresh noise of relative size ``noise``, never stored apart from the template
            x = l2_normalize(x + self.noise * l2_normalize(self.rng.standard_normal(x.shape)))
        if self.decoy:
            if self.identity_decoy:  # one virtual identity per user (keyed), fresh within-identity variation per template
                person = np.stack([np.random.default_rng([self.key_seed, 7, int(u)]).standard_normal(x.shape[1]) for u in users])
                decoys = [l2_normalize(self.mean + person @ self.chol_b.T + self.rng.standard_normal(x.shape) @ self.chol_w.T)]
            else:
                decoys = [l2_normalize(self.mean + self.rng.standard_normal(x.shape) @ self.chol.T) for _ in range(self.blocks)]
            x = np.hstack([x, *(self.decoy * d for d in decoys)])
        return self._salted(x, users) if self.salted else self._bucketed(x, users) if self.buckets else x @ self.rot.T

    def probe(self, z: np.ndarray, users: np.ndarray) -> np.ndarray:
        x = l2_normalize(z)
        if self.decoy:
            x = np.hstack([x, np.zeros((len(x), self.blocks * x.shape[1]))])
        # bucketed: a 1:N query is prepared once per bucket and searched in that bucket; ``users`` picks the bucket
        return self._salted(x, users) if self.salted else self._bucketed(x, users) if self.buckets else x @ self.rot.T


def norm_split_subspace(t: np.ndarray, dim: int, restarts: int = 4, steps: int = 400, seed: int = 0) -> np.ndarray:
    """Orthonormal ``(D, dim)`` basis in which every unit template's squared-norm share is most constant.

    Why by hand: no library searches this objective; it is a few lines of torch on a QR-parametrised basis.
    """
    x = torch.from_numpy(l2_normalize(t)).float()
    best = None
    for r in range(restarts):
        g = torch.Generator().manual_seed(seed + r)
        w = torch.randn(x.shape[1], dim, generator=g).requires_grad_()
        opt = torch.optim.Adam([w], lr=0.02)
        for _ in range(steps):
            u, _ = torch.linalg.qr(w)
            share = ((x @ u) ** 2).sum(1)
            loss = share.var() / share.mean() ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            u, _ = torch.linalg.qr(w)
            share = ((x @ u) ** 2).sum(1)
            score = float(share.var() / share.mean() ** 2)
        if best is None or score < best[0]:
            best = (score, u.numpy().astype(np.float64))
    return best[1]


def _agreeing_directions(diff: np.ndarray, total: np.ndarray, dim: int) -> np.ndarray:
    """LDA's ``dim`` smallest generalised eigenvectors of (within scatter of ``diff``, ``total``), orthonormalised.
    Why by hand: it is one ``scipy.linalg.eigh``."""
    from scipy.linalg import eigh

    within = diff.T @ diff / len(diff) + 1e-6 * np.eye(diff.shape[1])
    return np.linalg.qr(eigh(within, total)[1][:, :dim])[0]


def paired_scatter_subspace(t: np.ndarray, dim: int, rounds: int = 3) -> np.ndarray:
    """Orthonormal ``(D, dim)`` basis of the directions in which presumed same-person pairs agree most.

    The thief pairs every template with its mutual nearest neighbour (mostly two images of one person: the
    template halves agree, the decoys do not), then takes the generalised eigenvectors of (within-pair
    scatter, total scatter) with the smallest eigenvalues — linear discriminant analysis with the pairs as
    classes — and repeats the pairing inside the subspace found. Why by hand: it is one ``scipy.linalg.eigh``.
    """

    x = l2_normalize(t)
    xc = x - x.mean(0)
    total = xc.T @ xc / len(x) + 1e-6 * np.eye(x.shape[1])
    view = x
    for _ in range(rounds):
        sim = view @ view.T
        np.fill_diagonal(sim, -np.inf)
        nn = sim.argmax(1)
        a = np.flatnonzero((nn[nn] == np.arange(len(nn))) & (np.arange(len(nn)) < nn))
        u = _agreeing_directions(x[a] - x[nn[a]], total, dim)
        view = x @ u
    return u


def labelled_scatter_subspace(t: np.ndarray, labels: np.ndarray, dim: int) -> np.ndarray:
    """Orthonormal ``(D, dim)`` basis in which templates of one user agree most, with the store's own user ids as
    classes (a stolen store keeps its user column): LDA's smallest (within, total) generalised eigenvectors."""

    x = l2_normalize(t)
    xc = x - x.mean(0)
    total = xc.T @ xc / len(x) + 1e-6 * np.eye(x.shape[1])
    _, inv = np.unique(labels, return_inverse=True)
    means = np.zeros((inv.max() + 1, x.shape[1]))
    np.add.at(means, inv, x)
    means /= np.bincount(inv)[:, None]
    return _agreeing_directions(x - means[inv], total, dim)


def either_side(stolen: np.ndarray, u: np.ndarray, view: np.ndarray) -> tuple[float, np.ndarray]:
    """GW rank-1 on the subspace ``u`` or on its complement (when that has the same width), whichever matching fits
    better: the thief cannot tell which side holds the template half (he has no labels). Returns the side too."""
    sides = [u]
    if u.shape[0] == 2 * u.shape[1]:
        sides.append(np.linalg.svd(np.eye(len(u)) - u @ u.T)[0][:, :u.shape[1]])
    fits = [match_without_pairs(stolen @ b, view) for b in sides]
    best = min(range(len(sides)), key=lambda i: fits[i]["objective"])
    return matched_rank1(fits[best]["match"]), sides[best]


def per_bucket_gw(stolen: np.ndarray, buckets: np.ndarray, view: np.ndarray) -> float:
    """Each bucket's stolen templates matched into *all* the victims' photos by Gromov–Wasserstein (unequal
    sizes: the thief does not know which victims a bucket holds), then one photo per template over all
    buckets (a linear assignment on the stacked couplings)."""
    from scipy.optimize import linear_sum_assignment

    y = l2_normalize(view)
    score = np.zeros((len(stolen), len(y)))
    for k in np.unique(buckets):
        rows = np.flatnonzero(buckets == k)
        if len(rows) < 3:
            continue
        x = l2_normalize(stolen[rows])
        stages = list(annealed_gw(x @ x.T, y @ y.T, (5e-3, 2e-3, 1e-3)))
        if stages:
            score[rows] = stages[-1][1] * len(rows)
    r, c = linear_sum_assignment(-score)
    return float(np.mean(c[np.argsort(r)] == np.arange(len(stolen))))


def merge_buckets(whole: np.ndarray, buckets: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The thief's bucket merger: every bucket of the whole stolen store aligned without pairs to ``reference``
    (unsupervised word translation: similarity profiles, then Procrustes on mutual nearest neighbours)."""
    out = np.empty_like(whole)
    for k in np.unique(buckets):
        rows = np.flatnonzero(buckets == k)
        out[rows] = align_without_pairs(whole[rows], reference)
    return out


def project_buckets(whole: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Each bucket of the stolen store projected onto its own principal subspace (90 % of its variance): a
    rotation commutes with PCA, so this removes AdvFace's noise without the key."""
    out = np.empty_like(whole)
    for k in np.unique(buckets):
        rows = np.flatnonzero(buckets == k)
        out[rows] = SubspaceDenoiser.fit(whole[rows])(whole[rows]) if len(rows) > 2 else l2_normalize(whole[rows])
    return out


def overlap(u: np.ndarray, truth: np.ndarray) -> float:
    """How much of the subspace ``truth`` the orthonormal basis ``u`` found: the mean cosine of their principal angles."""
    return float(np.linalg.svd(u.T @ truth, compute_uv=False).mean())


def gw_rank1(stolen: np.ndarray, view: np.ndarray) -> float:
    return matched_rank1(match_without_pairs(stolen, view)["match"])


def attack(scheme: Scheme, thief: Scheme, g: np.ndarray, z: np.ndarray, lab: np.ndarray, db: np.ndarray,
           enrolled: np.ndarray, probes: np.ndarray, reference: np.ndarray, own_clean: np.ndarray) -> dict:
    """Every pair-free attacker on ``scheme``; ``thief`` is the same scheme under the thief's own key;
    ``reference``: plain AdvFace templates of faces the thief owns (his public SDK, no key), ``own_clean``
    their clean embeddings."""
    stolen = scheme.store(g[enrolled], z[enrolled], lab[enrolled])
    cand, dim = z[probes], z.shape[1]
    own = thief.store(g[probes], z[probes], lab[probes])  # the victims' photos through the public SDK, the thief's own key
    out = {"direct": rank1(stolen, cand) if stolen.shape[1] == dim else None,
           "profile + Procrustes": rank1(align_without_pairs(stolen, cand), cand) if stolen.shape[1] == dim else None,
           "GW vs clean photos": gw_rank1(stolen, cand),
           "GW vs photos under the SDK": gw_rank1(stolen, own)}
    if not (scheme.salted or scheme.decoy):  # one rotation per bucket (a plain key: one bucket, the whole store)
        mine = l2_normalize(g[probes])
        if scheme.buckets:  # the thief sees which bucket (index partition) each stolen template sits in
            out["per-bucket GW vs photos under the SDK"] = per_bucket_gw(stolen, scheme.bucket(lab[enrolled]), mine)
        whole, wb = scheme.store(g[db], z[db], lab[db]), scheme.bucket(lab[db])
        at = np.searchsorted(db, enrolled)
        to_public = merge_buckets(whole, wb, reference)[at]
        out["store aligned to own templates, direct"] = rank1(to_public, cand)
        out["store aligned to own templates + GW"] = gw_rank1(to_public, mine)
        projected = project_buckets(whole, wb)
        if not scheme.buckets:
            out["store projected + GW vs clean photos"] = gw_rank1(projected[at], cand)
        to_clean = merge_buckets(projected, wb, SubspaceDenoiser.fit(own_clean)(reference))[at]
        out["store projected, aligned to own templates, direct"] = rank1(to_clean, cand)
        out["store projected, aligned to own templates + GW"] = gw_rank1(to_clean, cand)
        if scheme.buckets:
            first = whole[wb == wb[0]]
            out["buckets aligned to one bucket + GW"] = gw_rank1(merge_buckets(whole, wb, first)[at], mine)
            # his own images, where the store holds them, found by their exact cosines (a float32 store), then (d)
            found = find_own_templates(whole.astype(np.float32), reference, wb)
            hit = found >= 0
            out["own images found by exact cosines (share of his images)"] = float(hit.sum() / len(reference))
            out["own images found by exact cosines + known plaintext"] = (
                known_plaintext_attack(own_clean[found[hit]], whole[hit], stolen, cand, wb[hit], wb[at])[0]
                if hit.any() else None)
    if scheme.decoy:
        whole = scheme.store(g[db], z[db], lab[db])  # the whole stolen database, for finding the template half
        mine = l2_normalize(g[probes])
        truth = scheme.rot[:, :dim]  # how much of the template half the search found (the thief cannot see this)
        found = {"PCA": np.linalg.svd(whole - whole.mean(0), full_matrices=False)[2][:dim].T,
                 "norm-split": norm_split_subspace(whole, dim), "paired-scatter": paired_scatter_subspace(whole, dim),
                 "user-id scatter": labelled_scatter_subspace(whole, lab[db], dim)}
        for name, u in found.items():
            out[f"{name} subspace + GW"], side = either_side(stolen, u, mine)
            out[f"{name} overlap with the true half"] = overlap(side, truth)
        rand = random_rotation(np.random.default_rng(0), len(truth))[:, :dim]
        out["random subspace overlap"] = overlap(rand, truth)
    return out


def _plot(results: dict, victims: int, path: Path) -> None:
    """Accuracy cost vs raw against the strongest (c) attacker, one panel per recognizer, with the issue's bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (rec, res) in zip(axes[0], results.items()):
        rows = [(n, r) for n, r in res.items() if isinstance(r, dict)]
        for i, (name, r) in enumerate(rows):
            x, y = res["raw accuracy"] - r["accuracy"], max(100 * r["strongest"], 0.1)  # 0 % drawn at the floor
            ax.scatter(x, y, s=30)
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, 6 if i % 2 else -10), textcoords="offset points")
        ax.axhline(200 / victims, color="r", ls="--", lw=1, label="bar: 2× chance")
        ax.axvline(0.3, color="gray", ls=":", lw=1, label="accuracy budget 0.3 points")
        ax.set(title=f"{rec}: (c) pair-free linking vs accuracy cost", xlabel="LFW accuracy cost vs raw (points)",
               ylabel="strongest attacker's rank-1 (%, log)", yscale="log", ylim=(0.1, 100), xlim=(0, None))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def store_sweep(scheme: Scheme, g: np.ndarray, z: np.ndarray, lab: np.ndarray, db: np.ndarray, enrolled: np.ndarray,
                probes: np.ndarray, sizes: list[int], seed: int = 0) -> list[dict]:
    """The paired-scatter thief on stolen stores of growing size (random subsets of ``db``): how much of the
    template half he finds (overlap) and how many victims GW then links."""
    dim, rng, out = z.shape[1], np.random.default_rng(seed), []
    stolen, mine, truth = scheme.store(g[enrolled], z[enrolled], lab[enrolled]), l2_normalize(g[probes]), scheme.rot[:, :dim]
    for n in sizes:
        part = np.sort(rng.choice(db, size=min(n, len(db)), replace=False))
        u = paired_scatter_subspace(scheme.store(g[part], z[part], lab[part]), dim)
        out.append({"store": int(len(part)), "overlap": overlap(u, truth),
                    "rank1": gw_rank1(stolen @ u, mine)})
        print(scheme.name, out[-1], flush=True)
    return out


def summarise(runs: list[dict], accuracies: list[float], values: int) -> dict:
    """One scheme's row: every attacker's rank-1 as the mean over the keys (``runs``: one dict per key), the
    strongest of those means, and the mean LFW accuracy (%, one per key)."""
    attackers = [a for a in runs[0] if a != "key"]
    row = {"accuracy": round(float(np.mean(accuracies)), 2), "accuracy_per_key": accuracies, "template_values": values,
           "keys": len(runs), "per_key": runs,
           **{a: (None if runs[0][a] is None else float(np.mean([r[a] for r in runs]))) for a in attackers}}
    row["strongest"] = max(row[a] for a in attackers if "overlap" not in a and "share" not in a and row[a] is not None)
    return row


def merge_runs(parts: list[dict], store: str) -> dict:
    """Several runs' JSON (disjoint key ranges of the same schemes) joined into one: per-key results concatenated,
    every mean and the strongest attacker taken again over all the keys. Refuses a key measured twice, runs that
    measured different attackers or another stolen store than ``store``, and store sweeps (one key only)."""
    out: dict = {}
    for part in parts:
        for rec, res in part.items():
            into = out.setdefault(rec, {k: v for k, v in res.items() if not isinstance(v, dict)})
            for name, row in res.items():
                if not isinstance(row, dict):
                    continue
                if row.get("store", store) != store:  # runs from before the store was recorded: as --store says
                    raise SystemExit(f"error: {rec} {name}: a run used --store {row['store']}, not {store}")
                if "store sweep" in row:
                    raise SystemExit(f"error: {rec} {name}: store sweeps measure the first key only; merge runs without --sweep")
                # a run from before per-key accuracies were kept: its mean stands for each of its keys
                accs = row.get("accuracy_per_key", [row["accuracy"]] * row["keys"])
                into.setdefault(name, {"runs": [], "acc": [], "values": row["template_values"], "minutes": 0.0})
                # runs from before --first-key started at key 0 and did not name their keys
                into[name]["runs"] += [r if "key" in r else {"key": i, **r} for i, r in enumerate(row["per_key"])]
                into[name]["acc"] += accs
                into[name]["minutes"] += row.get("minutes", 0.0)
    for rec, res in out.items():
        for name, m in list(res.items()):
            if not isinstance(m, dict):
                continue
            keys = [r["key"] for r in m["runs"]]
            if len(set(keys)) < len(keys):
                raise SystemExit(f"error: {rec} {name}: a key was measured in two of the merged runs ({sorted(keys)})")
            if len({tuple(a for a in r if a != "key") for r in m["runs"]}) > 1:
                raise SystemExit(f"error: {rec} {name}: the merged runs measured different attackers")
            res[name] = {**summarise(m["runs"], m["acc"], m["values"]), "store": store, "minutes": round(m["minutes"], 1)}
    return out


def _keys_of(results: dict) -> str:
    counts = sorted({r["keys"] for res in results.values() for r in res.values() if isinstance(r, dict)})
    return " / ".join(map(str, counts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Output stem (.json and .md are written).")
    ap.add_argument("--recognizers", nargs="+", choices=("fr128", "fr512"), default=("fr128", "fr512"))
    ap.add_argument("--decoys", nargs="+", type=float, default=(0.5, 1.0), help="Decoy scales c to measure.")
    ap.add_argument("--noise", nargs="+", type=float, default=(0.3, 0.5, 0.7),
                    help="Fresh-noise sizes (relative to the template) to measure on top of AdvFace.")
    ap.add_argument("--keys", type=int, default=3, help="Independent keys per scheme; rank-1 is their mean.")
    ap.add_argument("--first-key", type=int, default=0,
                    help="Index of the first key (key k is seeded 1 + 10k, the thief's 2 + 10k): runs over disjoint "
                         "key ranges can go on separate cores and be joined with --merge.")
    ap.add_argument("--merge", nargs="+", type=Path, default=(), metavar="JSON",
                    help="Measure nothing: join these runs' per-key results (disjoint key ranges; pass the --store "
                         "they used) into one report at --out, every mean over all their keys.")
    ap.add_argument("--blocks", nargs="+", type=int, default=(), help="Also measure this many decoy blocks (c = 1 each).")
    ap.add_argument("--buckets", nargs="+", type=int, default=(16, 64),
                    help="Bucketed rotation: users spread over this many keyed buckets, one rotation each.")
    ap.add_argument("--bucket-noise", nargs="+", type=float, default=(),
                    help="Also measure each bucketed rotation with fresh noise of these sizes (a bucketed Gallery's "
                         "fresh_noise; its default is 0.15 for 128-d and 0.3 for 512-d templates).")
    ap.add_argument("--store", choices=("folds", "all", "all+thief"), default="folds",
                    help="The stolen database the store-wide attacks use: the victims' folds, every LFW image but the "
                         "thief's own faces, or every LFW image (the thief holds the very images enrolled for half "
                         "the store, not knowing which template is whose).")
    ap.add_argument("--sweep", nargs="+", type=int, default=(),
                    help="Store sizes for the paired-scatter thief against each decoy scheme (first key only).")
    ap.add_argument("--schemes", nargs="+", default=None, metavar="NAME", help="Measure only these schemes (by name).")
    args = ap.parse_args()
    from advface_sdk import Protector
    from advface_sdk.evaluation.lfw_setup import LfwEvaluation
    from advface_sdk.evaluation.privacy import pick_victims

    ev = LfwEvaluation("fr128", "fr512")
    left, right, issame, folds = ev.eval_pairs
    lab = ev.dataset.labels
    vic = pick_victims(lab, ev.mask("victim"), None, 0)
    db, public = np.flatnonzero(ev.mask("victim")), ev.mask("defender")
    if args.store == "all":  # every LFW image but the thief's own faces (his public reference set)
        db = np.flatnonzero(~public)
    elif args.store == "all+thief":
        db = np.arange(len(lab))
    results = merge_runs([json.loads(f.read_text()) for f in args.merge], args.store) if args.merge else {}
    for rec in () if args.merge else args.recognizers:
        z = (ev.emb if rec == "fr128" else ev.emb_eval).astype(np.float32)
        g = Protector(rec, backend="onnxruntime").protect(z).astype(np.float64)
        z = z.astype(np.float64)
        dim = z.shape[1]
        specs = [("rotation key", {}), ("salted rotation (1:1)", {"salted": True})]
        specs += [(f"decoy padding c={c:g}", {"decoy": c}) for c in args.decoys]
        specs += [(f"decoy padding {b} blocks c=1", {"decoy": 1.0, "blocks": b}) for b in args.blocks if b > 1]
        specs += [(f"identity decoys c={c:g}", {"decoy": c, "identity_decoy": True, "public_labels": lab[public]})
                  for c in args.decoys]
        specs += [(f"bucketed rotation K={k}", {"buckets": k}) for k in args.buckets]
        specs += [(f"bucketed rotation K={k} + fresh noise {b:g}", {"buckets": k, "noise": b})
                  for k in args.buckets for b in args.bucket_noise]
        specs += [(f"advface + fresh noise {b:g}", {"noise": b}) for b in args.noise]
        specs += [("keyed noise direction", {"keyed_noise": True})]
        res = {"raw accuracy": round(100 * kfold_accuracy(np.sum(l2_normalize(z[left]) * l2_normalize(z[right]), 1),
                                                         issame, folds).accuracy, 2),
               "advface accuracy": round(100 * kfold_accuracy(np.sum(l2_normalize(g[left]) * l2_normalize(z[right]), 1),
                                                                 issame, folds).accuracy, 2)}
        for name, kw in specs:
            if args.schemes and name not in args.schemes:
                continue
            start, runs, acc = time.perf_counter(), [], []
            keys = range(args.first_key, args.first_key + args.keys)
            for k in keys:  # independent deployment keys (and decoys) against independent thieves' keys
                scheme, thief = Scheme(name, dim, 1 + 10 * k, g[public], **kw), Scheme(name, dim, 2 + 10 * k, g[public], **kw)
                acc.append(kfold_accuracy(np.sum(l2_normalize(scheme.store(g[left], z[left], lab[left]))
                                                 * l2_normalize(scheme.probe(z[right], lab[left])), 1), issame, folds).accuracy)
                runs.append({"key": k, **attack(scheme, thief, g, z, lab, db, vic.enrolled, vic.probe,
                                                l2_normalize(g[public]), z[public])})
            row = summarise(runs, [100 * a for a in acc], int(scheme.store(g[:1], z[:1], lab[:1]).shape[1]))
            row["store"] = args.store
            if kw.get("decoy") and args.sweep:
                row["store sweep"] = store_sweep(Scheme(name, dim, 1, g[public], **kw), g, z, lab, db, vic.enrolled,
                                                 vic.probe, list(args.sweep))
            row["minutes"] = round((time.perf_counter() - start) / 60, 1)
            res[name] = row
            print(rec, name, row, flush=True)
        results[rec] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    cols = ["direct", "profile + Procrustes", "GW vs clean photos", "GW vs photos under the SDK", "PCA subspace + GW",
            "norm-split subspace + GW", "paired-scatter subspace + GW", "user-id scatter subspace + GW",
            "per-bucket GW vs photos under the SDK", "store aligned to own templates, direct",
            "store aligned to own templates + GW", "buckets aligned to one bucket + GW",
            "store projected + GW vs clean photos", "store projected, aligned to own templates, direct",
            "store projected, aligned to own templates + GW",
            "own images found by exact cosines (share of his images)", "own images found by exact cosines + known plaintext"]
    cols = [c for c in cols if any(isinstance(r, dict) and r.get(c) is not None for res in results.values() for r in res.values())]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    lines = ["# (c) Pair-free attackers against keyed AdvFace templates", "",
             f"Command: `python benchmarks/alignment_attacks.py {shlex.join(sys.argv[1:])}`", "",
             "Thief: the stolen database, the SDK, the public recognizers and clean photos of every victim; no key, no "
             f"known pair. Rank-1 linking of the {len(vic.enrolled)} victims' stolen templates to their photos (chance "
             f"{100 / len(vic.enrolled):.1f} %, the issue's bar 2× chance = {200 / len(vic.enrolled):.1f} %), the mean over "
             f"{_keys_of(results)} independent deployment keys (and decoy draws), each against a thief with a key of his own. Subspace attacks "
             f"search the whole stolen database ({len(db)} templates: "
             f"{dict(folds='the victims’ folds', all='every LFW image but the thief’s own faces').get(args.store, 'every LFW image, the thief’s own enrolment images among them')}). See the module docstring.", ""]
    for rec, res in results.items():
        lines += [f"## {rec} (raw accuracy {res['raw accuracy']:.2f} %, AdvFace {res['advface accuracy']:.2f} %)", "",
                  "| scheme | values | LFW acc (Δ vs raw) | " + " | ".join(cols) + " | strongest |",
                  "|---|---|---|" + "---|" * (len(cols) + 1)]
        for name, r in res.items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {r['template_values']} | {r['accuracy']:.2f} ({r['accuracy'] - res['raw accuracy']:+.2f}) | " +
                             " | ".join(pct(r.get(c)) for c in cols) + f" | **{pct(r['strongest'])}** |")
        over = {n: r for n, r in res.items() if isinstance(r, dict) and "PCA overlap with the true half" in r}
        if over:
            lines += ["", "Subspace found vs the true template half (mean cosine of principal angles; 1 = found): " + "; ".join(
                f"{n}: PCA {r['PCA overlap with the true half']:.2f}, norm-split {r['norm-split overlap with the true half']:.2f}, "
                f"paired-scatter {r['paired-scatter overlap with the true half']:.2f}, "
                f"user-id scatter {r['user-id scatter overlap with the true half']:.2f}, "
                f"a random subspace {r['random subspace overlap']:.2f}" for n, r in over.items()), ""]
    sweeps = [(rec, n, r["store sweep"]) for rec, res in results.items() for n, r in res.items()
              if isinstance(r, dict) and "store sweep" in r]
    if sweeps:
        lines += ["## The paired-scatter thief against stores of growing size (first key)", "",
                  "| recognizer | scheme | templates in the stolen store | overlap with the template half | GW rank-1 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {rec} | {n} | {p['store']} | {p['overlap']:.2f} | {pct(p['rank1'])} |" for rec, n, sw in sweeps for p in sw]
        lines += [""]
    lines += [f"![accuracy cost against the strongest pair-free attacker]({args.out.name}.png)", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(results, len(vic.enrolled), args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
