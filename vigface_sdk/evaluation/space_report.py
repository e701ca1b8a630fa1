"""Separability report of an identity space: are virtual prototypes as far from real identities as
real identities are from each other? JSON + Markdown + a histogram PNG.

For each prototype the report takes its most similar prototype of the other group ("max cosine"):
real → nearest other real (nearest negative), virtual → nearest real, virtual → nearest other
virtual, and random unit vectors of the same dimension → nearest real as a baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError

from ..models.prototypes import PrototypeStore


def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    return {"max": float(v.max()), "p99": float(np.percentile(v, 99)), "mean": float(v.mean()),
            "median": float(np.median(v)), "min": float(v.min()), "count": int(v.size)}


def max_cosine(a: np.ndarray, b: np.ndarray, same: bool = False, chunk: int = 2048) -> np.ndarray:
    """For each row of ``a`` the largest cosine with a row of ``b`` (its own row left out if ``same``)."""
    a, b = l2_normalize(np.asarray(a, np.float32)), l2_normalize(np.asarray(b, np.float32))
    out = np.empty(len(a), np.float32)
    for start in range(0, len(a), chunk):
        sims = a[start:start + chunk] @ b.T
        if same:
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf
        out[start:start + chunk] = sims.max(1)
    return out


def _mean_cosine(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """Mean cosine over all pairs (distinct pairs when ``b`` is None), from the sums of unit vectors."""
    a = l2_normalize(np.asarray(a, np.float64))
    if b is None:
        s = a.sum(0)
        return float((s @ s - len(a)) / (len(a) * (len(a) - 1)))
    b = l2_normalize(np.asarray(b, np.float64))
    return float(a.sum(0) @ b.sum(0) / (len(a) * len(b)))


def separability_report(store: PrototypeStore, seed: int = 0) -> dict:
    """Cosine statistics of the store's prototypes and the acceptance check
    ``p99(max cos(virtual, real)) <= median(nearest-negative cos among real)``."""
    real, virtual = store.real, store.virtual
    if len(real) < 2 or len(virtual) < 1:
        raise InvalidInputError(f"need at least 2 real and 1 virtual prototype, got {len(real)} and {len(virtual)}")
    rand = l2_normalize(np.random.default_rng(seed).standard_normal((len(virtual), store.dim)).astype(np.float32))
    real_nn = max_cosine(real, real, same=True)
    virt_real = max_cosine(virtual, real)
    rand_real = max_cosine(rand, real)
    groups = {
        "real_nearest_negative": {"max_cosine": _stats(real_nn), "mean_cosine": _mean_cosine(real)},
        "virtual_vs_real": {"max_cosine": _stats(virt_real), "mean_cosine": _mean_cosine(virtual, real)},
        "random_vs_real": {"max_cosine": _stats(rand_real), "mean_cosine": _mean_cosine(rand, real)},
    }
    hist = {"real_nearest_negative": real_nn, "virtual_vs_real": virt_real, "random_vs_real": rand_real}
    if len(virtual) > 1:
        virt_virt = max_cosine(virtual, virtual, same=True)
        groups["virtual_vs_virtual"] = {"max_cosine": _stats(virt_virt), "mean_cosine": _mean_cosine(virtual)}
        hist["virtual_vs_virtual"] = virt_virt
    p99, median = groups["virtual_vs_real"]["max_cosine"]["p99"], groups["real_nearest_negative"]["max_cosine"]["median"]
    meta = {k: v for k, v in store.metadata.items() if k != "sigma"}
    return {
        "dim": store.dim, "num_real": len(real), "num_virtual": len(virtual), "metadata": meta, "random_seed": seed,
        "groups": groups,
        "criterion": {"virtual_vs_real_max_p99": p99, "real_nearest_negative_median": median, "passed": bool(p99 <= median),
                      "rule": "p99 of max cos(virtual, any real) <= median nearest-negative cos among real prototypes"},
        "_histograms": {k: v.tolist() for k, v in hist.items()},
    }


LABELS = {"real_nearest_negative": "real → nearest other real", "virtual_vs_real": "virtual → nearest real",
          "virtual_vs_virtual": "virtual → nearest other virtual", "random_vs_real": "random unit vector → nearest real"}


def _markdown(report: dict, png_name: str) -> str:
    crit = report["criterion"]
    lines = [f"# {report.get('title', 'VIGFace identity space: separability')}", ""]
    if report.get("command"):
        lines += ["Command:", "", "```", report["command"], "```", ""]
    lines += [f"{report['num_real']} real and {report['num_virtual']} virtual prototypes, dimension {report['dim']}, "
              f"backbone `{report['metadata'].get('backbone_fingerprint')}`, "
              f"{report['metadata'].get('margin_type', '?')} margin {report['metadata'].get('margin', '?')}, "
              f"scale {report['metadata'].get('scale', '?')}.", "",
              "Max cosine = each prototype's cosine with its most similar prototype of the other group.", "",
              "| distribution | max | p99 | median | mean | mean cosine (all pairs) |", "|---|---|---|---|---|---|"]
    for key, group in report["groups"].items():
        s = group["max_cosine"]
        lines.append(f"| {LABELS[key]} | {s['max']:.4f} | {s['p99']:.4f} | {s['median']:.4f} | {s['mean']:.4f} "
                     f"| {group['mean_cosine']:.4f} |")
    verdict = "PASS" if crit["passed"] else "FAIL"
    lines += ["", f"**Criterion** ({crit['rule']}): {crit['virtual_vs_real_max_p99']:.4f} <= "
              f"{crit['real_nearest_negative_median']:.4f} → **{verdict}**", ""]
    if report.get("verification"):
        lines += ["## Verification", "", "| evaluation | accuracy | std | TAR@FAR=1e-3 | pairs |", "|---|---|---|---|---|"]
        for name, res in report["verification"].items():
            lines.append(f"| {name} | {100 * res['accuracy']:.2f} % | {100 * res['std']:.2f} | "
                         f"{res.get('tar@far=0.001', float('nan')):.4f} | {res.get('pairs', '')} |")
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += [f"![histogram]({png_name})", ""]
    return "\n".join(lines)


def _histogram(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    bins = np.linspace(-0.2, 1.0, 121)
    for key, values in report["_histograms"].items():
        ax.hist(values, bins=bins, histtype="step", density=True, linewidth=1.5, label=LABELS[key])
    crit = report["criterion"]
    ax.axvline(crit["virtual_vs_real_max_p99"], color="k", linestyle="--", linewidth=1, label="p99 virtual → real")
    ax.axvline(crit["real_nearest_negative_median"], color="grey", linestyle=":", linewidth=1.5,
               label="median real nearest negative")
    ax.set_xlabel("max cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"{report['num_real']} real, {report['num_virtual']} virtual prototypes (dim {report['dim']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict, directory: str | Path, name: str = "separability") -> dict[str, Path]:
    """Write ``name.json``, ``name.md`` and ``name.png`` into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{name}.{ext}" for ext in ("json", "md", "png")}
    _histogram(report, paths["png"])
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    texts = {"json": json.dumps(public, indent=2, sort_keys=True) + "\n", "md": _markdown(report, paths["png"].name)}
    for ext, text in texts.items():
        tmp = paths[ext].with_name(f".{paths[ext].name}.tmp")
        tmp.write_text(text)
        tmp.replace(paths[ext])
    return paths
