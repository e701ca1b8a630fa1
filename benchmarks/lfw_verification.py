"""LFW View-2 verification benchmark of face recognizers (all 6,000 pairs, 10 folds, cosine similarity).

Writes ``lfw_verification.json``, ``lfw_verification.md`` and ``lfw_verification_roc.png`` to ``--out``:
10-fold accuracy ± std (each fold's threshold chosen on the other nine), TAR at FAR 1e-2/1e-3/1e-4
and the ROC curve, per recognizer, optionally with flip fusion (embedding of the crop plus that of its
mirror image). Embeddings are cached ($FACEPRIV_CACHE), so a second run only scores.

    FACEPRIV_SHARED=/path/to/shared python benchmarks/lfw_verification.py --recognizer fr128 fr512 --flip
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from facecore import __version__
from facecore.data import IdentityFolderDataset, pair_indices, read_pairs
from facecore.embeddings import extract_embeddings
from facecore.metrics import cosine_scores, roc_curve, verification_report
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer

NAME = "lfw_verification"
FARS = (1e-2, 1e-3, 1e-4)
# Published by the shared folder's README for the same crops and pairs (10-fold, cosine).
REFERENCE = {"fr512": 0.9945, "fr128": 0.9928}


def evaluate(recognizer, dataset, protocol, flip: bool) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Verification report (and ROC ``(far, tar)``) of one recognizer on the protocol."""
    start = time.perf_counter()
    emb = extract_embeddings(recognizer, dataset)
    if flip:
        emb = emb + extract_embeddings(recognizer, dataset, flip=True)
    embed_s = time.perf_counter() - start
    left, right = pair_indices(dataset, protocol)
    scores = cosine_scores(emb[left], emb[right])
    report = verification_report(scores, protocol.issame, protocol.folds)
    far, tar, _ = roc_curve(scores, protocol.issame)
    report.update({
        "recognizer": recognizer.name, "flip": flip, "dim": recognizer.dim, "fingerprint": recognizer.fingerprint,
        "preprocessing": recognizer.preprocessing.to_dict(), "n_pairs": int(len(scores)),
        "genuine_mean": float(scores[protocol.issame].mean()), "impostor_mean": float(scores[~protocol.issame].mean()),
        "embed_or_cache_seconds": round(embed_s, 2), "reference_accuracy": REFERENCE.get(recognizer.name),
    })
    return report, (far, tar)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, (far, tar) in curves.items():
        keep = far > 0
        ax.step(far[keep], tar[keep], where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlim(1 / 3000, 1)
    ax.set_ylim(0.95, 1.001)
    ax.set_xlabel("false accept rate (3,000 impostor pairs)")
    ax.set_ylabel("true accept rate")
    ax.set_title("LFW View-2 ROC (6,000 pairs, cosine)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# LFW View-2 verification",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"All {results[0]['n_pairs']:,} pairs of `data/lfw/pairs.txt` on the 112x112 aligned crops of "
        "`data/lfw/aligned112`; cosine similarity of raw embeddings; 10 folds, each fold's threshold chosen "
        "on the other nine (accuracy = mean ± std over folds). TAR@FAR thresholds come from all "
        f"{results[0]['n_impostors']:,} impostor scores: at FAR 1e-4 that is the highest impostor score, so the "
        "FAR actually reached is 0 (fewer than 1/FAR impostors).",
        "",
        "| recognizer | flip | dim | accuracy | std | mean threshold | TAR@FAR=1e-2 | TAR@FAR=1e-3 | TAR@FAR=1e-4 | reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = f"{100 * r['reference_accuracy']:.2f} %" if r["reference_accuracy"] and not r["flip"] else ""
        lines.append(
            f"| {r['recognizer']} | {'yes' if r['flip'] else 'no'} | {r['dim']} | {100 * r['accuracy']:.2f} % "
            f"| {100 * r['std']:.2f} | {r['threshold_mean']:.3f} | {100 * r['tar@far=0.01']:.2f} % "
            f"| {100 * r['tar@far=0.001']:.2f} % | {100 * r['tar@far=0.0001']:.2f} % | {ref} |"
        )
    lines += [
        "",
        "Reference: the accuracy the shared folder's README reports for the same model and crops.",
        "",
        f"ROC: `{meta['roc_png']}`. Environment: {meta['environment']}. Written {meta['written']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recognizer", "-r", nargs="+", default=["fr128", "fr512"],
                        help="built-in names, adapter names or .onnx paths (default: fr128 fr512)")
    parser.add_argument("--flip", action="store_true", help="also report flip fusion (crop + mirrored crop)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="output folder (default: benchmarks/results)")
    args = parser.parse_args(argv)

    protocol = read_pairs(shared_path("data", "lfw", "pairs.txt"))
    dataset = IdentityFolderDataset.from_folder(shared_path("data", "lfw", "aligned112"))
    results, curves = [], {}
    for name in args.recognizer:
        recognizer = create_recognizer(name)
        for flip in (False, True) if args.flip else (False,):
            report, curve = evaluate(recognizer, dataset, protocol, flip)
            label = f"{recognizer.name}{' + flip' if flip else ''}"
            curves[label] = curve
            results.append(report)
            print(f"{label:>14}: {100 * report['accuracy']:.2f} % ± {100 * report['std']:.2f}  "
                  + "  ".join(f"TAR@FAR={f:g}: {100 * report[f'tar@far={f:g}']:.2f} %" for f in FARS))

    args.out.mkdir(parents=True, exist_ok=True)
    roc_png = args.out / f"{NAME}_roc.png"
    plot_roc(curves, roc_png)
    command = shlex.join(["python", "benchmarks/lfw_verification.py", *(sys.argv[1:] if argv is None else argv)])
    import onnxruntime

    meta = {
        "command": f"FACEPRIV_SHARED=<shared> {command}",
        "roc_png": roc_png.name,
        "environment": f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
                       f"facecore {__version__}, {platform.machine()} CPU",
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    payload = {"benchmark": NAME, **meta, "protocol": "LFW View-2, 10 folds x (300 genuine + 300 impostor)",
               "results": results}
    for suffix, text in ((".json", json.dumps(payload, indent=2) + "\n"), (".md", to_markdown(results, meta))):
        path = args.out / f"{NAME}{suffix}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(f"wrote {args.out / NAME}.json, .md and {roc_png.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
