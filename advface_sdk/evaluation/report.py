"""Benchmark outputs: JSON, a Markdown table, privacy–utility curve, ROC curves and a reconstruction grid (PNG)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from facecore.paths import originals_allowed

from .grid import publishable


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _label(name: str, row: dict) -> str:
    p = row["params"]
    if name == "gaussian":
        return f"gaussian (b={p['budget']:g})"
    if name in ("advface", "advface-key"):
        return f"{name} ({Path(p['artifact']).name})"
    if name == "advface-bucketed":
        return f"{name} ({Path(p['artifact']).name}, K={p['buckets']})"
    if name == "advface-pgd":
        return f"advface-pgd (b={p['budget']:g}, {p['steps']} steps)"
    return name


def markdown(result: dict) -> str:
    """The tables of one benchmark result."""
    rows, raw = result["methods"], result["methods"]["none"]
    proto, att = result["protocol"], result["attackers"]
    raw_acc = raw["utility"]["accuracy"]
    raw_t2 = raw["attack"]["non_adaptive"]["type2"]
    lines = [
        f"# Template-protection benchmark — {result['recognizer']} ({result['dim']}-d), evaluator {result['evaluator']}", "",
        f"Command: `{result.get('command', 'n/a')}`", "",
        f"- Utility: {proto['utility']}; keyed methods use the claimed user's key for the probe (stolen-token setting).",
        f"- Attackers: `deconv` decoders (width {result['config']['attacker']['width']}, "
        f"{result['config']['attacker']['size']}×{result['config']['attacker']['size']}, seed {result['config']['attacker']['seed']}) "
        f"trained on {proto['attacker_images']} faces of {proto['attacker_identities']} attacker identities (LFW folds 6–8) with "
        f"pixel + identity loss through the {result['recognizer']} recognizer. Non-adaptive: {att['non_adaptive_budget']} on clean "
        f"embeddings; adaptive: {att['adaptive_budget']} from the non-adaptive attacker on the method's templates of the attacker's "
        "faces (keyed methods: the attacker's own keys).",
        f"- Victims: {proto['victims']} people of folds 9–10 (advface-pgd: the first {proto['pgd_victims']}). Type II = share of "
        f"victims whose reconstruction matches a *different* image of them by {result['evaluator']} at FAR 1e-3; type I = matches "
        f"the enrolled image by {result['recognizer']} at FAR 1e-3. Random real face of another person (chance): "
        f"type II {_pct(result['random_face_type2'])}.",
        "- Embedding-space attack: each stolen template is matched against clean embeddings of another image of every victim "
        "with the method's own comparison (keyed methods: with the stolen template's key); rank-1 among all victims and TAR at FAR 1e-3.",
        "", "## Utility, storage and cost", "",
        "| method | LFW acc (folds 6–10) | Δ vs raw | TAR@FAR1e-3 | TAR@FAR1e-4 | bytes / template | × float32 | protect µs | match µs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        u, s, c = r["utility"], r["storage"], r["cost"]
        subset = f" ({u['pairs']} pairs)" if u["pairs"] != raw["utility"]["pairs"] else ""
        lines.append(f"| {_label(name, r)} | {100 * u['accuracy']:.2f} ± {100 * u['std']:.2f}{subset} | "
                     f"{100 * (u['accuracy'] - raw_acc):+.2f} | {100 * u['tar@far=0.001']:.1f} % | {100 * u['tar@far=0.0001']:.1f} % | "
                     f"{s['bytes_per_template']} | {s['expansion_vs_float32']:.3g} | {c['protect_us']:.1f} | {c['match_us']:.1f} |")
    lines += ["", "## Privacy under attack", "",
              "| method | non-adaptive type II | reduction vs raw | non-adaptive type I | adaptive type II | adaptive type I | "
              "adaptive SSIM / PSNR | re-id rank-1 | re-id TAR@FAR1e-3 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        a = r["attack"]
        na, ad, emb = a["non_adaptive"], a["adaptive"], a["embedding"]
        red = "n/a" if na is None else ("∞" if na["type2"] == 0 else f"{raw_t2 / na['type2']:.1f}×")
        q = "n/a" if ad is None else f"{ad['ssim']:.3f} / {ad['psnr']:.1f} dB"
        lines.append(f"| {_label(name, r)} | {_pct(na and na['type2'])} | {red} | {_pct(na and na['type1'])} | "
                     f"{_pct(ad and ad['type2'])} | {_pct(ad and ad['type1'])} | {q} | {_pct(emb['rank1'])} | {_pct(emb['tar@far=0.001'])} |")
    if any("threats" in r for r in rows.values()):
        lines += threat_matrix(result)
    notes = [f"- {_label(n, r)}: {note}" for n, r in rows.items() for note in r["notes"]] + [f"- {n}" for n in result["notes"]]
    if notes:
        lines += ["", "Notes:", *notes]
    if result.get("curve"):
        lines += ["", "## Privacy–utility over noise budgets (non-adaptive attacker)", "",
                  "| method | budget | LFW acc | TAR@FAR1e-3 | type II | type I |", "|---|---|---|---|---|---|"]
        for p in result["curve"]:
            lines.append(f"| {p['method']}{' ' + p['artifact'] if 'artifact' in p else ''} | {p['budget']:g} | "
                         f"{100 * p['accuracy']:.2f} | {100 * p['tar@far=0.001']:.1f} % | {_pct(p['type2'])} | {_pct(p['type1'])} |")
    t = result["timing_minutes"]
    trained = [("non-adaptive", att["non_adaptive"])] + [
        (_label(n, r), r["attack"]["adaptive"]["train"]) for n, r in rows.items()
        if r["attack"]["adaptive"] and "train" in r["attack"]["adaptive"]]
    cached = [name for name, info in trained if info.get("cached")]
    lines += ["", "Attacker training, minutes when first trained (2 shared CPU cores): " +
              ", ".join(f"{name} {info['train_minutes']:.1f}" for name, info in trained) + ".",
              f"This invocation: {t['total']:.1f} min in total" +
              (f", with these attackers loaded from the cache: {', '.join(cached)}" if cached else "") + "; slowest stages: " +
              ", ".join(f"{k} {v:.1f}" for k, v in sorted(((k, v) for k, v in t.items() if k != "total"),
                                                           key=lambda kv: -kv[1])[:5]) + "."]
    return "\n".join(lines) + "\n"


def _t2(x: dict | None, raw: float | None = None) -> str:
    """``type II (reduction vs raw)`` of one attack result."""
    if x is None:
        return "n/a"
    red = "" if raw is None else " (∞)" if x["type2"] == 0 else f" ({raw / x['type2']:.1f}×)"
    return f"{_pct(x['type2'])}{red}"


def _epochs(info: dict | None) -> str:
    if not info or "best_epoch" not in info:
        return ""
    return f", {info['epochs']} ep (best {info['best_epoch']})"


def threat_matrix(result: dict) -> list[str]:
    """The threat-matrix tables: reconstruction (type II) and linking (rank-1) per attacker, columns (a)–(e)."""
    rows, raw = result["methods"], result["methods"]["none"]
    raw_acc = raw["utility"]["accuracy"]
    raw_t2 = raw["attack"]["non_adaptive"]["type2"] or None
    att = result["attackers"]
    n_vic = raw["attack"]["victims"]
    lines = ["", "## Threat matrix", "",
             "What the thief has, per column: **(a) key secret** — the stolen template database, the SDK and the public "
             "recognizers, not the deployment key (he trains on his own faces, protected with a key of his own); "
             "**(b) key stolen** — the database and the deployment key; **(c) alignment** — (a) plus clean photos of the "
             "victims, and he aligns the template set to their embeddings without any known pair; **(d) known plaintext** — "
             "(a) plus N faces he enrolled himself and whose stored templates he can read; **(e) face prior** — (a) or (b) "
             "plus a public face generator (the VIGFace face autoencoder), so reconstructions look like faces to a person. "
             "Unkeyed methods have no key: (a) = (b). Keyed baselines (biohashing, slerpface) have per-user keys; their "
             "(b) re-identification uses the stolen user's key. AdvFace + key + salts: (b) is the key stolen, the users' salts "
             "not (with them too it is AdvFace + key's (b)).", "",
             f"Attackers' budgets: non-adaptive decoder {att['non_adaptive_budget']} "
             f"({att['non_adaptive'].get('params', 'n/a')} parameters) on clean embeddings of "
             f"{result['protocol']['attacker_images']} attacker faces; adaptive decoder: {att['adaptive_budget']}, epochs per "
             "row below; face prior: " + (att.get("face_prior_budget") or "not run") + ". *PCA-projected*: the same "
             "non-adaptive decoder, fed every template after a projection onto the top "
             + (f"{att['denoiser']['k']} principal directions ({100 * att['denoiser']['variance_kept']:.1f} % of the variance)"
                if att.get("denoiser") else "principal directions") + " of clean embeddings of the attacker's faces "
             "(no SDK output used).", "",
             f"### Reconstruction — type II by {result['evaluator']} at FAR 1e-3 ({n_vic} victims; reduction vs raw "
             "non-adaptive in brackets; chance " + _pct(result["random_face_type2"]) + ")", "",
             "| method | Δ LFW acc | (a) non-adaptive | (a) non-adaptive, PCA-projected | (a) adaptive, converged | "
             "(e) face prior, key secret | (b) non-adaptive | (b) non-adaptive, PCA-projected | (b) adaptive | "
             "(e) face prior, key stolen |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        a = r["attack"]
        ad = a["adaptive"]
        b_na = a.get("non_adaptive_key_stolen", a["non_adaptive"] if not r["keyed"] else None)
        b_dn = a.get("non_adaptive_denoised_key_stolen", a.get("non_adaptive_denoised") if not r["keyed"] else None)
        b_ad = a.get("adaptive_key_stolen", ad if not r["keyed"] else None)
        b_fp = a.get("face_prior_key_stolen", a.get("face_prior") if not r["keyed"] else None)
        lines.append(f"| {_label(name, r)} | {100 * (r['utility']['accuracy'] - raw_acc):+.2f} | {_t2(a['non_adaptive'], raw_t2)} | "
                     f"{_t2(a.get('non_adaptive_denoised'), raw_t2)} | "
                     f"{_t2(ad, raw_t2)}{_epochs(ad and ad.get('train'))} | {_t2(a.get('face_prior'), raw_t2)} | "
                     f"{_t2(b_na, raw_t2)} | {_t2(b_dn, raw_t2)} | {_t2(b_ad, raw_t2)} | {_t2(b_fp, raw_t2)} |")
    lines += ["", f"### Linking a stolen template to its owner — rank-1 among {n_vic} victims (chance {100 / n_vic:.1f} %)", "",
              "Template: the stored template matched against a clean photo of every victim (by the method's own comparison "
              "where the column gives the key). Reconstruction: the evaluator's embedding of the reconstruction against "
              "the victims' other photos.", "",
              "| method | (a) template | (a) adaptive reconstruction | (e) face prior, key secret | (b) template | "
              "(c) alignment, rank-1 / type II | (d) 100 pairs, rank-1 / type II | (d) 1,000 pairs, rank-1 / type II |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        t, a = r.get("threats"), r["attack"]
        if t is None:
            continue
        kp = [t.get(f"known_plaintext_{n}") for n in (100, 1000)]
        ad, fp = a["adaptive"], a.get("face_prior")
        lines.append(f"| {_label(name, r)} | {_pct(t['reid_key_secret'])} | {_pct(ad and ad.get('reid_rank1'))} | "
                     f"{_pct(fp and fp.get('reid_rank1'))} | {_pct(a.get('embedding_key_stolen', a['embedding'])['rank1'])} | "
                     f"{_pct(t['alignment']['rank1'])} / {_pct(t['alignment']['type2'])} | "
                     + " | ".join(f"{_pct(k and k['rank1'])} / {_pct(k and k['type2'])}" for k in kp) + " |")
    found = {n: r["threats"]["alignment"].get("attackers") for n, r in rows.items() if r.get("threats")}
    names = list(dict.fromkeys(k for f in found.values() if f for k in f))
    if names:
        lines += ["", "(c) per pair-free attacker — rank-1 / type II (the row above shows the strongest). Profile + Procrustes: "
                  "matches by each point's sorted similarity profile, then Procrustes on mutual nearest neighbours. "
                  "Gromov-Wasserstein: matches the two sets' cosine-similarity structures (blind to any rotation key), "
                  "against the clean photos and against the photos protected with the public SDK under the thief's own "
                  "key; Procrustes on its matching maps templates for decoding.", "",
                  "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for n, f in found.items():
            if f:
                lines.append(f"| {_label(n, rows[n])} | " + " | ".join(
                    f"{_pct(f[k]['rank1'])} / {_pct(f[k]['type2'])}" if k in f else "n/a" for k in names) + " |")
    curves = {n: r["attack"]["adaptive"]["train"] for n, r in rows.items()
              if r["attack"]["adaptive"] and "curve" in r["attack"]["adaptive"].get("train", {})}
    if curves:
        lines += ["", "Adaptive attackers' training (held-out attacker identities; type II there by the evaluator's torch copy "
                  "against another photo of the same person):", "",
                  "| method | parameters | epochs run | best epoch | stopped by | val loss at best | val type II at best | minutes |",
                  "|---|---|---|---|---|---|---|---|"]
        for n, info in curves.items():
            best = next((h for h in info["curve"] if h["epoch"] == info["best_epoch"]), info["curve"][-1])
            lines.append(f"| {_label(n, rows[n])} | {info.get('params', 'n/a')} | {info['epochs']} | {info['best_epoch']} | "
                         f"{info['stopped']} | {best['val_loss']:.4f} | {_pct(best.get('val_type2'))} | {info['train_minutes']:.1f} |")
    return lines


def adaptive_curves(result: dict) -> dict[str, dict]:
    """``{method label: training info with its per-epoch curve}`` of the converged adaptive attackers."""
    return {_label(n, r): r["attack"]["adaptive"]["train"] for n, r in result["methods"].items()
            if r["attack"].get("adaptive") and "curve" in r["attack"]["adaptive"].get("train", {})}


def _save_fig(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_curve(result: dict, path: Path) -> None:
    """Privacy–utility: LFW accuracy against type II attack success, over noise budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    pts = result.get("curve", [])
    for name, style in (("gaussian", "o-"), ("advface", "s")):
        sel = sorted((p for p in pts if p["method"] == name), key=lambda p: p["budget"])
        if sel:
            ax.plot([100 * p["type2"] for p in sel], [100 * p["accuracy"] for p in sel], style, label=f"{name} (non-adaptive)")
            for p in sel:
                ax.annotate(f"{p['budget']:g}", (100 * p["type2"], 100 * p["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    for name, r in result["methods"].items():
        ad = r["attack"]["adaptive"]
        if ad is not None and r["utility"]["pairs"] == result["methods"]["none"]["utility"]["pairs"]:
            ax.plot(100 * ad["type2"], 100 * r["utility"]["accuracy"], "x", ms=8, label=f"{_label(name, r)} adaptive")
    ax.axvline(100 * result["random_face_type2"], color="grey", ls="--", lw=1, label="random face (chance)")
    ax.set_xlabel(f"reconstruction attack success, type II by {result['evaluator']} (%)")
    ax.set_ylabel("LFW accuracy, folds 6–10 (%)")
    ax.set_title(f"Privacy–utility, {result['recognizer']} (budget = ‖δ‖ on unit embeddings)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save_fig(fig, path)
    plt.close(fig)


def plot_roc(result: dict, path: Path) -> None:
    """Verification ROC of every method (protected gallery vs probe) on the evaluation pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, r in result["methods"].items():
        ax.plot(r["roc"]["far"], r["roc"]["tar"], label=_label(name, r) + (" (subset)" if name == "advface-pgd" else ""))
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"Verification ROC, protected gallery — {result['recognizer']} on LFW folds 6–10")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    _save_fig(fig, path)
    plt.close(fig)


def plot_grid(pictures: dict[str, np.ndarray], path: Path, title: str = "", originals: bool | None = None) -> None:
    """Rows = victims; columns = true face, then each reconstruction in ``pictures`` order. The true face is
    kept as :func:`facecore.paths.originals_allowed` says for the folder of ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = publishable(pictures, Path(path).parent, originals)
    cols = [k for k in pictures if len(pictures[k])]
    n = min(len(pictures[k]) for k in cols)
    fig, axes = plt.subplots(n, len(cols), figsize=(1.25 * len(cols), 1.3 * n + 0.4), squeeze=False)
    for j, key in enumerate(cols):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(pictures[key][i])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(key.replace("none (non-adaptive)", "raw").replace(" (", "\n("), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_fig(fig, path)
    plt.close(fig)


def portable(obj):
    """``obj`` with absolute paths under the project or the working directory made relative, so that
    committed results name no machine's folders."""
    roots = [Path(__file__).resolve().parents[2], Path.cwd()]
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        for root in roots:
            if Path(obj).is_relative_to(root):
                return Path(obj).relative_to(root).as_posix()
    return obj


def write_report(result: dict, pictures: dict[str, np.ndarray], out_dir: str | Path, stem: str,
                 originals: bool | None = None) -> dict[str, Path]:
    """Write ``<stem>.json``, ``.md``, ``_curve.png``, ``_roc.png`` and ``_grid.png`` into ``out_dir``; the grid
    shows the victims' photos as :func:`facecore.paths.originals_allowed` says."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "curve": out / f"{stem}_curve.png",
             "roc": out / f"{stem}_roc.png", "grid": out / f"{stem}_grid.png",
             "adaptive_json": out / f"{stem}_adaptive_curves.json", "adaptive_png": out / f"{stem}_adaptive_curves.png"}
    result = portable(result)
    for key, text in (("json", json.dumps(result, indent=1) + "\n"), ("md", markdown(result))):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    plot_curve(result, paths["curve"])
    plot_roc(result, paths["roc"])
    curves = adaptive_curves(result)
    if curves:
        from ..training.reconstruction import save_training_curve

        save_training_curve(curves, paths["adaptive_json"], paths["adaptive_png"],
                            f"{result['recognizer']}: adaptive attackers trained to convergence (held-out attacker identities)")
    else:
        paths.pop("adaptive_json"), paths.pop("adaptive_png")
    if pictures:
        shown = originals_allowed(out, originals)
        plot_grid(pictures, paths["grid"], f"{result['recognizer']}: " + ("true face | " if shown else "")
                  + "reconstructions by the attacker" + ("" if shown else " (victims' photos withheld)"), originals=shown)
    else:
        paths.pop("grid")
    return paths
