"""Column (e) of the threat matrix on its own: the face-prior attacker against raw, AdvFace, AdvFace + key and
AdvFace + key + per-user salts (key stolen, salts not).

The same pieces as ``advface-cli benchmark`` (its victims, attacker faces, thresholds and scoring), without the
decoders, so that it fits a short CPU budget:

    python benchmarks/face_prior_attack.py --recognizer fr128 --out benchmarks/results/threat_matrix

Writes ``face_prior_<rec>.json`` / ``.md`` / ``_grid.png``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch


@click.command()
@click.option("--recognizer", "-r", default="fr128", show_default=True)
@click.option("--out", default="benchmarks/results/threat_matrix", show_default=True, type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True)
def main(recognizer: str, out: Path, seed: int) -> None:
    from advface_sdk.evaluation.attacks import decoder_inputs
    from advface_sdk.evaluation.harness import Benchmark, BenchmarkConfig
    from advface_sdk.evaluation.privacy import pick_victims, random_face_baseline
    from advface_sdk.evaluation.report import plot_grid, portable

    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    b = Benchmark(BenchmarkConfig(recognizer=recognizer, methods=("none", "advface", "advface-key", "advface-salted"), curve_budgets=(),
                                  seed=seed, progress=False))
    ev, labels = b.ev, b.ev.dataset.labels
    victims = pick_victims(labels, ev.mask("victim"), None, seed)
    methods = b._methods()
    train, users, rows = b._attacker_set()
    prior = b._prior_setup(train, rows)
    keep = 6
    b.pictures["true"] = ev.true_rgb(victims.enrolled[:keep], 64)
    priors, res = {}, {}
    for name, m in methods.items():
        stolen = m.protect_gallery(ev.emb[victims.enrolled], labels[victims.enrolled])
        if name == "advface-salted":  # (b) without the salts: the thief undoes R, not the users' Q_u
            plain = stolen.astype(np.float64) @ m.key.rotation(stolen.shape[1])
            res["advface-salted, key stolen, salts not"] = b._score(priors["advface"].reconstruct(decoder_inputs(plain)),
                                                                    victims)
            continue
        res[name] = b._face_prior(name, m, stolen, victims, train, users, prior, priors, keep)
        if name == "advface-key" and "advface" in priors:
            plain = stolen.astype(np.float64) @ m.key.rotation(stolen.shape[1])
            res["advface-key, key stolen"] = b._score(priors["advface"].reconstruct(decoder_inputs(plain)), victims, keep,
                                                      "advface-key (b) face prior")
    thr_e = ev.thresholds[1]
    chance = random_face_baseline(victims, labels, ev.emb_eval, thr_e, np.flatnonzero(ev.mask("victim")), seed)
    result = {"command": shlex.join(["python", "benchmarks/face_prior_attack.py", *sys.argv[1:]]),
              "recognizer": recognizer, "evaluator": ev.evaluator_name, "victims": int(len(victims.enrolled)),
              "attacker_faces": len(train), "attacker_identities": int(len(np.unique(train.labels))),
              "random_face_type2": chance, "results": res, "minutes": round((time.perf_counter() - t0) / 60, 2)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"face_prior_{recognizer}.json").write_text(json.dumps(portable(result), indent=1) + "\n")
    pct = lambda x: f"{100 * x:.1f} %"
    lines = [f"# (e) Face-prior attacker — {recognizer}, evaluator {ev.evaluator_name}", "", f"Command: `{result['command']}`", "",
             f"The attacker maps a stolen template to an fr128 prototype (ridge or MLP, learned on his {len(train)} faces of "
             f"{result['attacker_identities']} identities under the scheme — AdvFace + key: under *his own* key) and renders it "
             "with the VIGFace face autoencoder (vigface64, trained on LFW identities outside folds 6–10) from the mean latent "
             f"of his faces. {result['victims']} victims (LFW folds 9–10). Type II: the reconstruction matches another photo "
             f"of the victim by {ev.evaluator_name} at FAR 1e-3 (a random real face of another person: {pct(chance)}); "
             f"type I: matches the enrolled photo by {recognizer}; re-id: rank-1 of the reconstruction among the victims' "
             "other photos by the evaluator." + (" Caveat: the autoencoder was trained with an fr128 identity loss, so the "
                                                "fr128 type II / re-id here is not independent of the prior; fr512 type I is."
                                                if ev.evaluator_name == "fr128" else ""), "",
             "| templates | map (val. cosine) | type II | type I | re-id rank-1 | SSIM / PSNR |", "|---|---|---|---|---|---|"]
    for name, r in res.items():
        a = r.get("attacker") or res["advface"]["attacker"]
        cos = a["val_cosine_mlp"] if a["map"] == "mlp" else a["val_cosine_ridge"]
        lines.append(f"| {name} | {a['map']} ({cos:.3f}) | {pct(r['type2'])} | {pct(r['type1'])} | {pct(r['reid_rank1'])} | "
                     f"{r['ssim']:.3f} / {r['psnr']:.1f} dB |")
    lines += ["", f"![grid](face_prior_{recognizer}_grid.png)", "", f"{result['minutes']:.1f} min on 2 shared CPU cores."]
    (out / f"face_prior_{recognizer}.md").write_text("\n".join(lines) + "\n")
    plot_grid(b.pictures, out / f"face_prior_{recognizer}_grid.png", f"{recognizer}: face-prior reconstructions")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
