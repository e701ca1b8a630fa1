"""AdvFace core acceptance numbers: utility on LFW folds 6–10 and privacy against the shadow model.

python benchmarks/advface_core_eval.py --recognizer fr128 --artifact fr128 --shadow PATH [--pgd]
Writes benchmarks/results/advface_core_<recognizer>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from advface_sdk import Protector
from advface_sdk.artifact import default_shadow
from advface_sdk.evaluation.lfw_setup import LfwEvaluation
from advface_sdk.evaluation.privacy import attack_success, decode_to_crops
from advface_sdk.models.decoders import FaceDecoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recognizer", default="fr128")
    ap.add_argument("--artifact", nargs="+", default=None, help="Artifact names/folders (default: the recognizer's default).")
    ap.add_argument("--shadow", type=Path, default=None,
                    help="Shadow decoder folder (default: the shipped one; fr512's is rebuilt with advface_sdk/defaults/README.md).")
    ap.add_argument("--max-victims", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ev = LfwEvaluation.for_recognizer(args.recognizer, max_victims=args.max_victims)
    args.shadow = args.shadow or default_shadow(args.recognizer)
    shadow = FaceDecoder.from_pretrained(args.shadow)
    victims = ev.victims("evaluation")
    thr_p, thr_e = ev.thresholds
    truth = ev.true_rgb(victims.enrolled, shadow.config["size"])
    left, *_ = ev.eval_pairs

    def privacy(stored):
        rec = decode_to_crops(shadow, stored)
        return attack_success(rec, victims, ev.recognizer, ev.evaluator, ev.emb, ev.emb_eval, thr_p, thr_e, truth)

    rows = {"raw": {"utility": ev.utility(ev.emb[left]), "privacy_vs_shadow": privacy(ev.emb[victims.enrolled])}}
    for art in args.artifact or [args.recognizer]:
        prot = Protector(art, recognizer_fingerprint=ev.recognizer.fingerprint)
        rows[f"advface[{Path(str(art)).name}, budget={prot.artifact.config['budget']}]"] = {
            "utility": ev.utility(prot.protect(ev.emb[left])),
            "privacy_vs_shadow": privacy(prot.protect(ev.emb[victims.enrolled])),
        }
    result = {"command": " ".join(["python"] + sys.argv), "recognizer": args.recognizer, "evaluator": ev.evaluator_name,
              "thresholds_far1e-3": {"protected": thr_p, "evaluator": thr_e}, "victims": int(len(victims.enrolled)),
              "shadow": str(args.shadow.name), "rows": rows}
    out = args.out or Path("benchmarks/results") / f"advface_core_{args.recognizer}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    base = rows["raw"]
    lines = [f"# AdvFace core — {args.recognizer} (evaluator {ev.evaluator_name})", "", f"Command: `{result['command']}`", "",
             "| method | LFW folds 6–10 acc | Δ vs raw (points) | shadow type II | shadow type I | reduction (II) | SSIM |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        u, p = r["utility"], r["privacy_vs_shadow"]
        b2 = base["privacy_vs_shadow"]["type2"]
        red = ("n/a (the shadow reconstructs no one from raw templates: train it longer)" if b2 == 0 else
               f"{b2 / p['type2']:.1f}×" if p["type2"] > 0 else f"> {b2 * p['victims']:.0f}× (0 of {p['victims']})")
        lines.append(f"| {name} | {100 * u['accuracy']:.2f} ± {100 * u['std']:.2f} | {100 * (u['accuracy'] - base['utility']['accuracy']):+.2f} "
                     f"| {100 * p['type2']:.1f} % | {100 * p['type1']:.1f} % | {red} | {p['ssim']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
