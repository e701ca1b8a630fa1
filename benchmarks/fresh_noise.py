"""What fresh enrolment noise costs and what it blurs: LFW accuracy and the cosines between stored templates.

A bucketed key keeps every cosine between two templates of a bucket, and a thief holding the very images enrolled
computes their AdvFace templates exactly, so he finds them by those cosines (``find_own_templates``). A bucketed
``Gallery`` adds fresh noise of relative size ``b`` to every template it enrolls (``Protector.protect(...,
fresh_noise=b)``, default ``0.15·sqrt(D/128)``). For each size this measures, on both shared recognizers:

* LFW accuracy (View-2 folds 6–10, stored noisy template against a clean probe) over ``--draws`` independent noise
  draws: mean, standard deviation, range, and the mean cost against raw embeddings;
* how far the noise moves the cosine between two stored templates (the standard deviation of the shift, over every
  pair of the thief's 6,922 LFW images of the defender split), and the share of the thief's image pairs whose cosine
  lies within ±2 of those standard deviations of a given pair's — the fraction of his pairs that one stored pair
  still "votes" for once the cosines are blurred (exact cosines: about 1e-5 at a tolerance of 1e-6).

    FACEPRIV_SHARED=... FACEPRIV_CACHE=... python benchmarks/fresh_noise.py --out benchmarks/results/threat_matrix/fresh_noise
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from facecore.embeddings import l2_normalize
from facecore.metrics import kfold_accuracy

WITHIN = "share of pairs within ±2 shift std of a pair's cosine"
SIZES = {"fr128": (0.05, 0.1, 0.15, 0.2, 0.3), "fr512": (0.1, 0.2, 0.3, 0.4)}


def noisy(g: np.ndarray, b: float, rng: np.random.Generator) -> np.ndarray:
    """Unit templates ``g`` with fresh noise of relative size ``b`` (as ``Protector.protect(..., fresh_noise=b)``)."""
    return l2_normalize(g + b * l2_normalize(rng.standard_normal(g.shape)))


def cosine_blur(g: np.ndarray, b: float, seed: int = 0) -> dict:
    """Std of the shift noise gives the cosine between two templates, and the share of all pairs within ±2 std of the
    median pair's cosine (what one blurred stored pair still matches among the thief's pairs)."""
    iu = np.triu_indices(len(g), 1)
    exact = (g @ g.T)[iu]
    t = noisy(g, b, np.random.default_rng(seed))
    shift = float(((t @ t.T)[iu] - exact).std())
    med = float(np.median(exact))
    return {"cosine shift std": shift, WITHIN: float(np.mean(np.abs(exact - med) < 2 * shift)),
            "pair cosine std": float(exact.std())}


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for rec, res in results.items():
        rows = res["sizes"]
        x = [0.0] + [r["size"] for r in rows]
        y = [res["raw accuracy"] - res["advface accuracy"]] + [r["cost vs raw"] for r in rows]
        err = [0.0] + [r["accuracy std"] for r in rows]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{rec} (default {res['default']:g})")
        ax.axvline(res["default"], ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.axhline(0.3, color="r", ls="--", lw=1, label="budget 0.3 points")
    ax.set(xlabel="fresh noise size b (relative to the template)", ylabel="LFW accuracy cost vs raw (points)",
           title="Fresh enrolment noise: accuracy cost (mean ± std over draws)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Output stem (.json, .md and .png are written).")
    ap.add_argument("--recognizers", nargs="+", choices=tuple(SIZES), default=tuple(SIZES))
    ap.add_argument("--draws", type=int, default=20, help="Independent noise draws per size.")
    args = ap.parse_args()
    from advface_sdk import Protector
    from advface_sdk.evaluation.lfw_setup import LfwEvaluation
    from advface_sdk.protector import default_fresh_noise

    ev = LfwEvaluation("fr128", "fr512")
    left, right, issame, folds = ev.eval_pairs
    thief = ev.mask("defender")
    results = {}
    for rec in args.recognizers:
        z = (ev.emb if rec == "fr128" else ev.emb_eval).astype(np.float32)
        g = l2_normalize(Protector(rec, backend="onnxruntime").protect(z).astype(np.float64))
        z = l2_normalize(z.astype(np.float64))

        def acc(stored: np.ndarray) -> float:
            return 100 * kfold_accuracy(np.sum(stored[left] * z[right], 1), issame, folds).accuracy

        res = {"raw accuracy": acc(z), "advface accuracy": acc(g), "default": default_fresh_noise(z.shape[1]),
               "thief images": int(thief.sum()), "sizes": []}
        for b in SIZES[rec]:
            draws = [acc(noisy(g, b, np.random.default_rng([d, 1]))) for d in range(args.draws)]
            row = {"size": b, "accuracy mean": float(np.mean(draws)), "accuracy std": float(np.std(draws)),
                   "accuracy min": float(np.min(draws)), "accuracy max": float(np.max(draws)),
                   "cost vs raw": res["raw accuracy"] - float(np.mean(draws)), **cosine_blur(g[thief], b)}
            res["sizes"].append(row)
            print(rec, row, flush=True)
        results[rec] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Fresh enrolment noise: accuracy cost and blurred cosines", "",
             f"Command: `python benchmarks/fresh_noise.py {shlex.join(sys.argv[1:])}`", "",
             f"LFW View-2 folds 6–10, stored template (AdvFace + noise) against a clean probe; mean over {args.draws} "
             "noise draws. Cosine shift: over every pair of the thief's images (LFW defender split); a stored pair's "
             "cosine, blurred, still matches the stated share of his pairs (see the module docstring).", ""]
    for rec, res in results.items():
        lines += [f"## {rec} (raw {res['raw accuracy']:.2f} %, AdvFace {res['advface accuracy']:.2f} %; "
                  f"gallery default b = {res['default']:g})", "",
                  "| b | LFW acc mean ± std (range) | cost vs raw | cosine shift std | pair cosines' std | "
                  "his pairs within ±2 std |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['size']:g} | {r['accuracy mean']:.2f} ± {r['accuracy std']:.2f} ({r['accuracy min']:.2f}–"
                  f"{r['accuracy max']:.2f}) | {-r['cost vs raw']:+.2f} | {r['cosine shift std']:.4f} | "
                  f"{r['pair cosine std']:.3f} | {100 * r[WITHIN]:.0f} % |"
                  for r in res["sizes"]]
        lines += [""]
    lines += [f"![accuracy cost of fresh noise]({args.out.name}.png)", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(results, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
