"""Which keyed transform for AdvFace + key: accuracy and embedding-space attacks of each candidate.

For fr128 and fr512, composed with the shipped AdvFace generator ``g``: the stored template is
``φ_K(g(z))``, the prepared probe ``φ_K(z)``, the score their cosine. Candidates: a secret
orthogonal rotation; keyed random features (``tanh`` and ``relu`` of a secret Gaussian projection,
``m`` outputs); per-user salted rotations ``Q_u·R`` (1:1 only; ``DeploymentKey.salted_rotation``,
one salt per enrolled row, a probe takes the salt of the identity it claims); bucketed rotations
(``DeploymentKey(..., buckets=K)``: each row stored under its own id, in that id's keyed bucket, one
rotation per bucket; a probe takes the bucket of the identity it claims). Measured per candidate:
LFW accuracy on View-2 folds 6–10 (stored left image vs prepared clean right image), and
re-identification rank-1 of the 346 victims of folds 9–10 against a clean photo of every victim
(chance 1/346) for a thief who (c) links the stolen templates to clean photos of the victims without
pairs — the strongest of: similarity-profile initialisation then orthogonal Procrustes on mutual nearest
neighbours; Gromov–Wasserstein matching of the similarity structures against the clean photos, and
against the photos under the public SDK with a key (and salts) of the thief's own — or (d)
knows 10 / 30 / 100 / 1,000 (``--pairs``) (clean embedding, stored template) pairs of his own enrolled
faces (least squares and orthogonal Procrustes maps, the better one reported; against buckets he sees
which bucket each of his pairs and each stolen template sits in and fits one map per bucket); "key stolen": the thief
applies the deployment key to the candidates (salted rotations: without the victims' salts, which
he does not hold; with them, the salted mode is exactly ``rotation`` with the key stolen; bucketed:
he undoes each stored template's bucket rotation). The alignment attack (c) on buckets is measured by
``benchmarks/alignment_attacks.py`` (thieves that align bucket by bucket); it is not repeated here.

    FACEPRIV_SHARED=... FACEPRIV_CACHE=... python benchmarks/keyed_candidates.py --out benchmarks/results/keyed_candidates
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from advface_sdk.evaluation.attacks import (align_without_pairs, known_plaintext_attack, match_without_pairs,
                                            matched_rank1, rank1)
from advface_sdk.keys import DeploymentKey, random_rotation
from facecore.embeddings import l2_normalize
from facecore.metrics import kfold_accuracy



class BucketedRotation:
    """``φ(x, users)`` of a bucketed key: row ``i`` stored under id ``user-<users[i]>``, rotated by its bucket's rotation."""

    def __init__(self, key: DeploymentKey, dim: int):
        self.key, self.dim = key, dim
        self.rotations = np.stack([key.bucket_rotation(b, dim).astype(np.float64) for b in range(key.buckets)])

    def buckets(self, users: np.ndarray) -> np.ndarray:
        return self.key.bucket([f"user-{int(u)}" for u in users])

    def __call__(self, x: np.ndarray, users: np.ndarray) -> np.ndarray:
        return np.einsum("nij,nj->ni", self.rotations[self.buckets(users)], l2_normalize(x))

    def undo(self, stored: np.ndarray, users: np.ndarray) -> np.ndarray:
        """What a thief holding the key (and the store's ids) gets back: the AdvFace templates."""
        return np.einsum("nji,nj->ni", self.rotations[self.buckets(users)], stored)


def candidates(dim: int, seed: int = 7, buckets: tuple[int, ...] = (16, 64)) -> dict:
    """``{name: φ(x, users)}`` for one secret key (seeded here: the measurement, not a deployment).

    ``users``: the claimed user of each row, which only the salted candidate uses (``None``: the
    thief's view with the key but without the users' salts).
    """
    rng = np.random.default_rng(seed)
    rot = random_rotation(rng, dim)
    out = {"advface (no key)": lambda x, users: x, "rotation": lambda x, users: l2_normalize(x) @ rot.T}
    for m in (dim, 4 * dim):
        w = rng.standard_normal((m, dim))
        out[f"tanh features m={m}"] = (lambda w: lambda x, users: np.tanh(l2_normalize(x) @ w.T))(w)
        out[f"relu features m={m}"] = (lambda w: lambda x, users: np.maximum(l2_normalize(x) @ w.T, 0))(w)
    key = DeploymentKey(hashlib.sha256(f"keyed candidates seed {seed}".encode()).digest(), "keyed-candidates")

    def salted(x: np.ndarray, users: np.ndarray | None) -> np.ndarray:
        x = l2_normalize(x)
        if users is None:
            return x @ key.rotation(dim).T
        out = np.empty_like(x)
        for u in np.unique(users):
            rows = users == u
            out[rows] = x[rows] @ key.salted_rotation(hashlib.sha256(f"salt {seed} {u}".encode()).digest()[:16], dim).T
        return out

    out["salted rotation (1:1)"] = salted
    for k in buckets:
        secret = hashlib.sha256(f"keyed candidates seed {seed} buckets {k}".encode()).digest()
        out[f"bucketed rotation K={k}"] = BucketedRotation(DeploymentKey(secret, "keyed-candidates", k), dim)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Output stem (.json and .md are written).")
    ap.add_argument("--data", type=Path, default=None, help="Optional .npz dump of the LFW arrays (else loaded).")
    ap.add_argument("--recognizers", nargs="+", choices=("fr128", "fr512"), default=("fr128", "fr512"))
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="Measure only these candidates (and the 'advface (no key)' baseline), e.g. 'salted rotation (1:1)'.")
    ap.add_argument("--pairs", nargs="+", type=int, default=(10, 30, 100, 1000),
                    help="(d) numbers of known (clean, stored) pairs of the thief's own enrolled faces.")
    ap.add_argument("--buckets", nargs="*", type=int, default=(16, 64), help="Bucketed rotation candidates (K buckets).")
    args = ap.parse_args()
    from advface_sdk import Protector

    if args.data:
        d = dict(np.load(args.data))
    else:
        from advface_sdk.evaluation.lfw_setup import LfwEvaluation
        from advface_sdk.evaluation.privacy import pick_victims

        ev = LfwEvaluation("fr128", "fr512")
        left, right, issame, folds = ev.eval_pairs
        v = pick_victims(ev.dataset.labels, ev.mask("victim"), None, 0)
        d = {"fr128": ev.emb, "fr512": ev.emb_eval, "attacker": ev.mask("attacker"), "left": left, "right": right,
             "issame": issame, "folds": folds, "v_enrolled": v.enrolled, "v_probe": v.probe}
    rng = np.random.default_rng(0)
    attacker_rows = np.flatnonzero(d["attacker"])
    args.pairs = sorted({min(n, len(attacker_rows)) for n in args.pairs})  # the thief's pool caps the pairs
    results = {}
    for rec in args.recognizers:
        z = d[rec].astype(np.float32)
        prot = Protector(rec, backend="onnxruntime")
        gz = prot.protect(z).astype(np.float64)
        z = z.astype(np.float64)
        base = None
        thief = candidates(z.shape[1], seed=8, buckets=args.buckets)
        for name, phi in candidates(z.shape[1], buckets=args.buckets).items():
            if args.only and name not in args.only and name != "advface (no key)":
                continue
            stored, probe = phi(gz[d["left"]], d["left"]), phi(z[d["right"]], d["left"])  # the probe claims the left user
            scores = np.sum(l2_normalize(stored) * l2_normalize(probe), axis=1)
            acc = kfold_accuracy(scores, d["issame"], d["folds"]).accuracy
            stolen, cand = phi(gz[d["v_enrolled"]], d["v_enrolled"]), z[d["v_probe"]]
            bucketed = isinstance(phi, BucketedRotation)
            row = {"accuracy": round(100 * acc, 2), "dim_out": int(stolen.shape[1]),
                   "reid_no_key_direct": rank1(stolen, cand) if stolen.shape[1] == z.shape[1] else None,
                   "reid_key_stolen": rank1(phi.undo(stolen, d["v_enrolled"]), cand) if bucketed else rank1(stolen, phi(cand, None)),
                   "alignment_no_pairs": None}
            if name != "advface (no key)" and not bucketed:
                own = thief[name](gz[d["v_probe"]], d["v_probe"])  # the victims' photos under the thief's own key (salts)
                row["alignment_by_attacker"] = {
                    "profile + Procrustes": rank1(align_without_pairs(stolen, cand), cand),
                    "GW vs clean photos": matched_rank1(match_without_pairs(stolen, cand)["match"]),
                    "GW vs photos under the SDK": matched_rank1(match_without_pairs(stolen, own)["match"])}
                row["alignment_no_pairs"] = max(row["alignment_by_attacker"].values())
            for n in args.pairs:
                pick = rng.choice(attacker_rows, n, replace=False)
                parts = (phi.buckets(pick), phi.buckets(d["v_enrolled"])) if bucketed else (None, None)
                row[f"known_plaintext_{n}"] = known_plaintext_attack(z[pick], phi(gz[pick], pick), stolen, cand, *parts)[0]
            base = base if base is not None else row["accuracy"]
            row["delta_vs_advface"] = round(row["accuracy"] - base, 2)
            results.setdefault(rec, {})[name] = row
            print(rec, name, row, flush=True)
        raw = kfold_accuracy(np.sum(l2_normalize(z[d["left"]]) * l2_normalize(z[d["right"]]), 1), d["issame"], d["folds"]).accuracy
        results[rec]["raw accuracy"] = round(100 * raw, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Keyed transform candidates (AdvFace generator, then the keyed map)", "",
             f"Command: `python benchmarks/keyed_candidates.py {shlex.join(sys.argv[1:])}`", "",
             "Victims: 346 (folds 9–10), chance rank-1 = 0.3 %. Re-id = rank-1 of the stolen template against a clean "
             "photo of every victim. Salted rotation (1:1 only): one salt per enrolled row, the probe takes the claimed "
             "user's salt; 'key stolen' = the thief holds the key but not the victims' salts (with the salts too it is "
             "`rotation`'s key-stolen column). Bucketed rotation: (d) fits one map per bucket from the pairs in that "
             "bucket; (c) is measured by `benchmarks/alignment_attacks.py` (n/a here). "
             f"The thief's pool of own faces holds {len(attacker_rows):,} images.", ""]
    for rec, rows in results.items():
        lines += [f"## {rec} (raw accuracy {rows['raw accuracy']} %)", "",
                  "| candidate | template dim | LFW acc | Δ vs AdvFace | re-id, key secret, direct | (c) alignment, no pairs | "
                  + "".join(f"(d) {n:,} pairs | " for n in args.pairs) + "re-id, key stolen |",
                  "|---|---|---|---|---|---|" + "---|" * len(args.pairs) + "---|"]
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        for name, r in rows.items():
            if name == "raw accuracy":
                continue
            lines.append(f"| {name} | {r['dim_out']} | {r['accuracy']:.2f} | {r['delta_vs_advface']:+.2f} | "
                         f"{pct(r['reid_no_key_direct'])} | {pct(r['alignment_no_pairs'])} | "
                         + "".join(f"{pct(r[f'known_plaintext_{n}'])} | " for n in args.pairs) + f"{pct(r['reid_key_stolen'])} |")
        lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
