"""How good and how private is a synthetic dataset, judged by an evaluator recognizer that is not the
backbone the prototypes came from.

* identity consistency: cosine of each sample to its own identity's other samples;
* identity control: same-vs-different virtual identity pairs, 10-fold verification accuracy;
* leakage: each sample's most similar real training identity (mean template of its images); a sample
  is a leak when that similarity exceeds the evaluator's FAR = 1e-3 threshold on real impostor pairs;
* a picture grid per identity (PNG).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from facecore.artifacts import member, safe_name
from facecore.embeddings import l2_normalize
from facecore.errors import DataError, InvalidInputError
from facecore.metrics import cosine_scores, kfold_accuracy, threshold_at_far
from facecore.recognizers.base import Recognizer


def embed_faces(recognizer: Recognizer, images_rgb: np.ndarray, batch_size: int = 256, device=None) -> np.ndarray:
    """Embed uint8 RGB faces of any size: resized to the recognizer's input (cubic), as BGR. With a
    ``device`` the recognizer's torch copy runs there instead (bilinear resize; for GPUs)."""
    if device is not None:
        import torch

        module = recognizer.to_torch().to(device)
        with torch.no_grad():
            return np.concatenate([module(torch.from_numpy(images_rgb[lo:lo + batch_size]).to(device).permute(0, 3, 1, 2).contiguous()
                                          .float().div(255)).float().cpu().numpy()
                                   for lo in range(0, len(images_rgb), batch_size)])
    w, h = recognizer.preprocessing.input_size
    out = []
    for lo in range(0, len(images_rgb), batch_size):
        batch = [cv2.resize(im[..., ::-1], (w, h), interpolation=cv2.INTER_CUBIC) if im.shape[:2] != (h, w)
                 else np.ascontiguousarray(im[..., ::-1]) for im in images_rgb[lo:lo + batch_size]]
        out.append(recognizer.embed(np.stack(batch)))
    return np.concatenate(out) if out else np.zeros((0, recognizer.dim), np.float32)


def _stats(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "p05": float(np.percentile(values, 5)), "median": float(np.median(values)), "max": float(values.max())}


def identity_consistency(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: mean cosine to the other samples of its identity (NaN for a single-sample identity)."""
    e = l2_normalize(np.asarray(embeddings, np.float64))
    labels = np.asarray(labels)
    out = np.full(len(e), np.nan)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        if len(idx) > 1:
            sims = e[idx] @ e[idx].T
            out[idx] = (sims.sum(1) - 1.0) / (len(idx) - 1)
    return out


def make_pairs(labels: np.ndarray, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_pairs // 2`` same-identity and as many different-identity sample pairs (seeded)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    multi = [g for g in groups if len(g) > 1]
    if not multi or len(groups) < 2:
        raise InvalidInputError("pairs need at least two identities and one with two or more samples")
    half = n_pairs // 2
    same = [rng.choice(multi[rng.integers(len(multi))], 2, replace=False) for _ in range(half)]
    diff = []
    while len(diff) < half:
        i, j = rng.integers(len(labels), size=2)
        if labels[i] != labels[j]:
            diff.append((i, j))
    left, right = np.asarray(same + diff).T
    return left, right, np.r_[np.ones(half, bool), np.zeros(half, bool)]


def identity_control(embeddings: np.ndarray, labels: np.ndarray, n_pairs: int = 6000, seed: int = 0) -> dict:
    """10-fold verification accuracy of same vs different virtual identity pairs (folds interleaved)."""
    left, right, issame = make_pairs(labels, n_pairs, seed)
    scores = cosine_scores(embeddings[left], embeddings[right])
    res = kfold_accuracy(scores, issame, folds=np.arange(len(issame)) % 10)
    return {**res.to_dict(), "pairs": int(len(issame)), "genuine_mean": float(scores[issame].mean()),
            "impostor_mean": float(scores[~issame].mean())}


def impostor_threshold(embeddings: np.ndarray, labels: np.ndarray, far: float = 1e-3, n_pairs: int = 200_000,
                       seed: int = 0) -> dict:
    """Threshold at ``far`` on random different-identity image pairs of a real dataset."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(len(labels), size=(2, n_pairs * 2))
    keep = labels[i] != labels[j]
    i, j = i[keep][:n_pairs], j[keep][:n_pairs]
    scores = cosine_scores(embeddings[i], embeddings[j])
    return {"far": far, "threshold": threshold_at_far(scores, far), "impostor_pairs": int(len(scores))}


def identity_templates(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(label values, unit mean embedding per label)``."""
    labels = np.asarray(labels)
    names, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(names), embeddings.shape[1]))
    np.add.at(sums, inverse, l2_normalize(np.asarray(embeddings, np.float64)))
    return names, l2_normalize(sums)


def nearest_identity(queries: np.ndarray, templates: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine of each query's most similar template."""
    q = l2_normalize(np.asarray(queries, np.float64))
    best, score = np.empty(len(q), np.int64), np.empty(len(q))
    for lo in range(0, len(q), chunk):
        sims = q[lo:lo + chunk] @ templates.T
        best[lo:lo + chunk] = sims.argmax(1)
        score[lo:lo + chunk] = sims.max(1)
    return best, score


def leakage(virtual_emb: np.ndarray, real_emb: np.ndarray, real_labels: np.ndarray, threshold: float,
            real_names: list[str] | None = None, max_listed: int = 100) -> dict:
    """Share of virtual samples whose most similar real identity scores above ``threshold``; the leaks
    with the highest scores are listed (``sample`` is the row in ``virtual_emb``)."""
    labels, templates = identity_templates(real_emb, real_labels)
    best, score = nearest_identity(virtual_emb, templates)
    leaks = np.flatnonzero(score > threshold)
    order = leaks[np.argsort(-score[leaks])][:max_listed]
    name = (lambda k: real_names[int(labels[k])]) if real_names is not None else (lambda k: int(labels[k]))
    return {"threshold": float(threshold), "samples": int(len(score)), "leaks": int(len(leaks)),
            "leak_rate": float(len(leaks) / max(1, len(score))), "clean_rate": float(1 - len(leaks) / max(1, len(score))),
            "nearest_real_similarity": _stats(score),
            "listed": [{"sample": int(i), "real_identity": name(best[i]), "similarity": float(score[i])} for i in order]}


def save_grid(images_rgb: np.ndarray, path: str | Path, columns: int = 8, title: str | None = None) -> Path:
    """A PNG grid of uint8 RGB images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images_rgb)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + (0.3 if title else 0)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im in zip(axes.ravel(), images_rgb):
        ax.imshow(im)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_synthesis_report(report: dict, directory: str | Path, name: str = "synthesis_report") -> dict[str, Path]:
    """``NAME.json`` and a Markdown summary ``NAME.md`` (grids are written by :func:`save_grid`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / f"{name}.json"
    js.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    lines = [f"# Synthetic dataset report: {report.get('dataset', '')}", "",
             f"{report['identities']} virtual identities x {report['per_identity']} images, evaluator `{report['evaluator']}`.", ""]
    c, ctl = report["consistency"], report["identity_control"]
    lines += ["| measure | value |", "|---|---|",
              f"| identity consistency (mean cos to own identity's other samples) | {c['mean']:.4f} (p05 {c['p05']:.4f}) |",
              f"| identity control: same vs different virtual identity, 10-fold accuracy | {100 * ctl['accuracy']:.2f} % ± {100 * ctl['std']:.2f} |",
              f"| genuine / impostor mean cosine | {ctl['genuine_mean']:.4f} / {ctl['impostor_mean']:.4f} |"]
    if "leakage" in report:
        lk = report["leakage"]
        lines += [f"| FAR={lk['far']:g} threshold on {lk['impostor_pairs']} real impostor pairs | {lk['threshold']:.4f} |",
                  f"| samples with no real training identity above it | {100 * lk['clean_rate']:.2f} % ({lk['leaks']} leaks of {lk['samples']}) |",
                  f"| nearest real identity similarity (median / max) | {lk['nearest_real_similarity']['median']:.4f} / "
                  f"{lk['nearest_real_similarity']['max']:.4f} |"]
        if "reference" in lk:
            ref = lk["reference"]
            lines += [f"| reference: real non-training faces with no training identity above it | {100 * ref['clean_rate']:.2f} % "
                      f"({ref['samples']} faces) |"]
    lines += [""]
    for grid in report.get("grids", []):
        lines.append(f"![{Path(grid).stem}]({grid})")
    md = directory / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return {"json": js, "md": md}


def build_report(virtual_emb: np.ndarray, virtual_labels: np.ndarray, evaluator: str,
                 real: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
                 impostors: tuple[np.ndarray, np.ndarray] | None = None,
                 heldout: np.ndarray | None = None, far: float = 1e-3, n_pairs: int = 6000, seed: int = 0) -> dict:
    """The JSON report. ``real``: evaluator embeddings, labels (indices into names) and names of the
    real training images; ``impostors``: embeddings and labels of the real set the FAR threshold is
    set on (default: ``real``); ``heldout``: real faces of people outside training, whose clean rate
    is the floor a perfect generator would reach at this threshold."""
    labels = np.asarray(virtual_labels)
    consistency = identity_consistency(virtual_emb, labels)
    report = {"evaluator": evaluator, "identities": int(len(np.unique(labels))),
              "per_identity": int(round(len(labels) / max(1, len(np.unique(labels))))),
              "consistency": _stats(consistency[np.isfinite(consistency)]),
              "identity_control": identity_control(virtual_emb, labels, n_pairs, seed)}
    if real is not None:
        emb, lab, names = real
        imp_emb, imp_lab = impostors if impostors is not None else (emb, lab)
        th = impostor_threshold(imp_emb, imp_lab, far, seed=seed)
        report["leakage"] = {**leakage(virtual_emb, emb, lab, th["threshold"], names), "far": far,
                             "impostor_pairs": th["impostor_pairs"]}
        if heldout is not None:
            ref = leakage(heldout, emb, lab, th["threshold"], names, max_listed=0)
            report["leakage"]["reference"] = {k: ref[k] for k in ("samples", "leaks", "leak_rate", "clean_rate")}
    return report


def load_synthetic(directory: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """``(uint8 RGB images, labels, manifest rows)`` of a finished ``vigface-cli synthesize`` folder."""
    from facecore.images import read_image

    from ..pipelines.writers import read_insightface_recordio, read_manifest

    directory = Path(directory)
    rows = read_manifest(directory / "manifest.jsonl")
    if not rows:
        raise DataError(f"{directory / 'manifest.jsonl'} lists no images")
    for n, r in enumerate(rows, start=1):
        if not (isinstance(r, dict) and isinstance(r.get("label"), int) and isinstance(r.get("identity"), str)
                and ("file" in r) == ("file" in rows[0]) and isinstance(r.get("file", ""), str)):
            raise DataError(f"{directory / 'manifest.jsonl'}: row {n} is not a synthesis row (integer label, identity, file)")
        safe_name(r["identity"] + ".png")  # names the grid file: no path out of the report folder
    if "file" in rows[0]:
        images = np.stack([read_image(member(directory, r["file"]))[..., ::-1] for r in rows])
    else:
        images = np.stack([im for _, im in read_insightface_recordio(directory)])
    if len(images) != len(rows):
        raise InvalidInputError(f"{directory}: {len(images)} images for {len(rows)} manifest rows")
    return images, np.asarray([r["label"] for r in rows]), rows
