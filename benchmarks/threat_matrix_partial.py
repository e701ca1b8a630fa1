"""Score the attackers a (partial) threat-matrix run has already trained and cached, on the benchmark's victims,
without training anything: the non-adaptive decoder and the converged adaptive decoders of advface (also used with
a stolen key) and advface-key (key secret, trained under the attacker's own key).

    python benchmarks/threat_matrix_partial.py --recognizer fr128 --cache-dir runs/bench_cache \
        --out benchmarks/results/threat_matrix/partial_fr128

Same configuration as `advface-cli benchmark --methods none,advface,advface-key --adaptive-max-epochs 15 --patience 2`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
import torch


@click.command()
@click.option("--recognizer", "-r", default="fr128", show_default=True)
@click.option("--cache-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output stem (.json, .md).")
@click.option("--adaptive-max-epochs", default=15, show_default=True)
@click.option("--patience", default=2, show_default=True)
def main(recognizer, cache_dir, out, adaptive_max_epochs, patience) -> None:
    from advface_sdk.evaluation import attacks
    from advface_sdk.evaluation.attacks import AttackerConfig, train_attacker
    from advface_sdk.evaluation.harness import Benchmark, BenchmarkConfig
    from advface_sdk.evaluation.privacy import pick_victims

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = BenchmarkConfig(recognizer=recognizer, methods=("none", "advface", "advface-key"), curve_budgets=(),
                          cache_dir=str(cache_dir), progress=False,
                          attacker=AttackerConfig(adaptive_max_epochs=adaptive_max_epochs, patience=patience))
    b = Benchmark(cfg)
    ev, labels = b.ev, b.ev.dataset.labels
    victims = pick_victims(labels, ev.mask("victim"), None, cfg.seed)
    methods = b._methods()
    train, users, rows = b._attacker_set()
    validator = b._validator(train, rows)
    rt = ev.recognizer.to_torch()

    def cached(**kw):  # refuse to train: only what the run already cached
        real = attacks.train_decoder_converged, attacks.train_decoder

        def refuse(*a, **k):
            raise click.ClickException("attacker not in the cache yet")
        attacks.train_decoder_converged = attacks.train_decoder = refuse
        try:
            return train_attacker(train, rt, cfg.attacker, cache_dir=cache_dir, progress=False, **kw)
        except click.ClickException:
            return None, None
        finally:
            attacks.train_decoder_converged, attacks.train_decoder = real

    base, base_info = cached()
    if base is None:
        raise click.ClickException("the non-adaptive attacker is not cached yet")
    res = {"command": shlex.join(["python", "benchmarks/threat_matrix_partial.py", *sys.argv[1:]]),
           "recognizer": recognizer, "evaluator": ev.evaluator_name, "victims": int(len(victims.enrolled)),
           "non_adaptive": {"train": base_info}, "rows": {}}
    stolen = {n: m.protect_gallery(ev.emb[victims.enrolled], labels[victims.enrolled]) for n, m in methods.items()}
    res["rows"]["raw, non-adaptive"] = b._success(base, stolen["none"], victims)
    res["rows"]["advface, non-adaptive"] = b._success(base, stolen["advface"], victims)
    res["rows"]["advface-key (a) key secret, non-adaptive"] = b._success(base, stolen["advface-key"], victims)
    for name in ("advface", "advface-key"):
        dec, info = cached(adaptive=True, inputs=b._attacker_templates(name, methods[name], train, users), init=base,
                           validator=validator)
        if dec is None:
            res["rows"][f"{name} adaptive"] = None
            continue
        info = {k: v for k, v in info.items()}
        if name == "advface":
            res["rows"]["advface adaptive (= advface-key (b) key stolen)"] = {**b._success(dec, stolen["advface"], victims),
                                                                              "train": info}
        else:
            res["rows"]["advface-key (a) key secret, adaptive"] = {**b._success(dec, stolen["advface-key"], victims),
                                                                   "train": info}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    pct = lambda x: f"{100 * x:.1f} %"
    lines = [f"# Partial threat matrix — {recognizer}, evaluator {ev.evaluator_name} (attackers cached by an unfinished run)", "",
             f"Command: `{res['command']}`", "",
             f"{res['victims']} victims (LFW folds 9–10); type II = reconstruction matches another photo of the victim by "
             f"{ev.evaluator_name} at FAR 1e-3; re-id = its rank-1 among the victims' other photos. Non-adaptive: "
             f"{base_info['budget']} ({base_info.get('params', 'n/a')} parameters). Adaptive: {cfg.attacker.budget(True)}.", "",
             "| attacker | type II | type I | re-id rank-1 | epochs (best) | stopped by | val type II at best |", "|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        if r is None:
            lines.append(f"| {name} | not trained yet | | | | | |")
            continue
        t = r.get("train")
        ep = f"{t['epochs']} ({t['best_epoch']})" if t else ""
        vb = pct(t["curve"][t["best_epoch"]]["val_type2"]) if t else ""
        lines.append(f"| {name} | {pct(r['type2'])} | {pct(r['type1'])} | {pct(r['reid_rank1'])} | {ep} | "
                     f"{t['stopped'] if t else ''} | {vb} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
