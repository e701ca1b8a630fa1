"""Training curves of the converged (adaptive) attackers found in a benchmark's attacker cache, as JSON + PNG —
for runs that have trained some attackers but not finished (the benchmark itself writes
``benchmark_<rec>_adaptive_curves.*`` at its end).

    python benchmarks/attacker_curves.py runs/bench_cache --out benchmarks/results/threat_matrix/partial_adaptive_curves
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("cache", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output stem (writes .json and .png).")
def main(cache: Path, out: Path) -> None:
    from advface_sdk.training.reconstruction import save_training_curve

    curves = {}
    for folder in sorted(cache.glob("attacker-*")):
        cfg = json.loads((folder / "config.json").read_text())
        info = cfg.get("attack", {})
        if "curve" in info:
            curves[f"{folder.name} (in {cfg['dim']}-d, {info['epochs']} ep, best {info['best_epoch']})"] = info
    if not curves:
        raise click.ClickException(f"no converged attacker in {cache}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_training_curve(curves, out.with_suffix(".json"), out.with_suffix(".png"), "adaptive attackers (held-out attacker identities)")
    for name, info in curves.items():
        print(name, info["stopped"], {k: v for k, v in info["curve"][info["best_epoch"]].items() if k.startswith("val_")})


if __name__ == "__main__":
    main()
