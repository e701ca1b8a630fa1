"""Which keyed transform for AdvFace + key: accuracy and embedding-space attacks of each candidate.

For fr128 and fr512, composed with the shipped AdvFace generator ``g``: the stored template is
``φ_K(g(z))``, the prepared probe ``φ_K(z)``, the score their cosine. Candidates: a secret
orthogonal rotation; keyed random features (``tanh`` and ``relu`` of a secret Gaussian projection,
``m`` outputs); per-user salted rotations (1:1 only) are covered analytically in the output.
Measured per candidate: LFW accuracy on View-2 folds 6–10 (stored left image vs prepared clean right
image), and re-identification rank-1 of the 346 victims of folds 9–10 against a clean photo of every
victim (chance 1/346) for a thief who (c) aligns the stolen templates to clean embeddings without
pairs (similarity-profile initialisation, then orthogonal Procrustes on mutual nearest neighbours),
or (d) knows 10 / 30 / 100 / 1,000 (clean embedding, stored template) pairs of his own enrolled faces
(least squares and orthogonal Procrustes maps, the better one reported).

    FACEPRIV_SHARED=... FACEPRIV_CACHE=... python benchmarks/keyed_candidates.py --out benchmarks/results/keyed_candidates
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from advface_sdk.evaluation.attacks import align_without_pairs, known_plaintext_maps, rank1
from facecore.embeddings import l2_normalize
from facecore.metrics import kfold_accuracy



def candidates(dim: int, seed: int = 7) -> dict:
    """``{name: φ}`` for one secret key (seeded here: the measurement, not a deployment)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    rot = q * np.sign(np.diag(r))
    out = {"advface (no key)": lambda x: x, "rotation": lambda x: l2_normalize(x) @ rot.T}
    for m in (dim, 4 * dim):
        w = rng.standard_normal((m, dim))
        out[f"tanh features m={m}"] = (lambda w: lambda x: np.tanh(l2_normalize(x) @ w.T))(w)
        out[f"relu features m={m}"] = (lambda w: lambda x: np.maximum(l2_normalize(x) @ w.T, 0))(w)
    return out


def known_plaintext(pairs_z: np.ndarray, pairs_t: np.ndarray, stolen: np.ndarray, cand: np.ndarray) -> float:
    """Best rank-1 over the linear maps fitted on the thief's own pairs."""
    return max(rank1((l2_normalize(stolen) if name == "procrustes" else stolen) @ m, cand)
               for name, m in known_plaintext_maps(pairs_z, pairs_t).items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Output stem (.json and .md are written).")
    ap.add_argument("--data", type=Path, default=None, help="Optional .npz dump of the LFW arrays (else loaded).")
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
    results = {}
    for rec in ("fr128", "fr512"):
        z = d[rec].astype(np.float32)
        prot = Protector(rec, backend="onnxruntime")
        gz = prot.protect(z).astype(np.float64)
        z = z.astype(np.float64)
        base = None
        for name, phi in candidates(z.shape[1]).items():
            stored, probe = phi(gz[d["left"]]), phi(z[d["right"]])
            scores = np.sum(l2_normalize(stored) * l2_normalize(probe), axis=1)
            acc = kfold_accuracy(scores, d["issame"], d["folds"]).accuracy
            stolen, cand = phi(gz[d["v_enrolled"]]), z[d["v_probe"]]
            row = {"accuracy": round(100 * acc, 2), "dim_out": int(stolen.shape[1]),
                   "reid_no_key_direct": rank1(stolen, cand) if stolen.shape[1] == z.shape[1] else None,
                   "reid_key_stolen": rank1(stolen, phi(cand)),
                   "alignment_no_pairs": rank1(align_without_pairs(stolen, cand), cand) if name != "advface (no key)" else None}
            for n in (10, 30, 100, 1000):
                pick = rng.choice(attacker_rows, n, replace=False)
                row[f"known_plaintext_{n}"] = known_plaintext(z[pick], phi(gz[pick]), stolen, cand)
            base = base if base is not None else row["accuracy"]
            row["delta_vs_advface"] = round(row["accuracy"] - base, 2)
            results.setdefault(rec, {})[name] = row
            print(rec, name, row, flush=True)
        raw = kfold_accuracy(np.sum(l2_normalize(z[d["left"]]) * l2_normalize(z[d["right"]]), 1), d["issame"], d["folds"]).accuracy
        results[rec]["raw accuracy"] = round(100 * raw, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Keyed transform candidates (AdvFace generator, then the keyed map)", "",
             f"Command: `python benchmarks/keyed_candidates.py --out {args.out}`", "",
             "Victims: 346 (folds 9–10), chance rank-1 = 0.3 %. Re-id = rank-1 of the stolen template against a clean "
             "photo of every victim. Per-user salted rotations (1:1 only): same accuracy as `rotation` (a rotation shared "
             "by template and probe preserves the cosine); without the key every template lives in its own random "
             "frame, so pairs of the thief's own users say nothing about a victim's.", ""]
    for rec, rows in results.items():
        lines += [f"## {rec} (raw accuracy {rows['raw accuracy']} %)", "",
                  "| candidate | template dim | LFW acc | Δ vs AdvFace | re-id, key secret, direct | (c) alignment, no pairs | "
                  "(d) 10 pairs | (d) 30 pairs | (d) 100 pairs | (d) 1,000 pairs | re-id, key stolen |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        for name, r in rows.items():
            if name == "raw accuracy":
                continue
            lines.append(f"| {name} | {r['dim_out']} | {r['accuracy']:.2f} | {r['delta_vs_advface']:+.2f} | "
                         f"{pct(r['reid_no_key_direct'])} | {pct(r['alignment_no_pairs'])} | {pct(r['known_plaintext_10'])} | "
                         f"{pct(r['known_plaintext_30'])} | {pct(r['known_plaintext_100'])} | "
                         f"{pct(r['known_plaintext_1000'])} | {pct(r['reid_key_stolen'])} |")
        lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
