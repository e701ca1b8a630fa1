"""What it costs in accuracy to stop the face-prior attacker (e) when the deployment key is stolen.

With the key stolen (threat column (b)) the thief holds plain AdvFace templates and the SDK. This script
measures, for perturbations of growing size, the LFW accuracy cost (stored template vs clean probe) against
the type II success of the face-prior attacker — the strongest attacker we have — so that the acceptance
target "≥ 5× below raw within 0.3 points" can be read off a privacy–utility frontier:

* ``advface`` — the shipped generator (deterministic: whoever has the SDK can fit its inverse);
* ``gaussian b`` — fresh random noise of relative size ``b`` that is never stored (the thief's own faces get
  other draws, so he cannot subtract it);
* ``advface+noise b`` — the shipped generator, then fresh noise of relative size ``b``;
* ``remove m`` (``--remove m``) — stored templates *and* probes lose their top ``m`` principal directions
  (fitted on the defender's clean embeddings): information the store never holds, so no key, stolen or not,
  gives it back. The projection is public, so the thief's map and a decoder retrained on projected clean
  embeddings of his faces use no SDK output: for these points both count as non-adaptive.

For every point the face-prior attacker runs twice: *non-adaptive* (template → prototype map fitted on raw
templates of his faces) and *adaptive* (fitted on his faces under the same scheme, with his own noise draws),
plus the benchmark's non-adaptive decoder (cached by ``advface-cli benchmark``; trained here if missing).

``--artifact LABEL=FOLDER`` adds other protector artifacts as points (e.g. a generator trained against the
face prior as a second shadow, ``advface-cli train-generator --face-prior``). Such a generator has seen the
shipped prior, so fooling it proves little: ``--judge FOLDER`` adds a face autoencoder the *attacker* trained
himself (another seed, never seen by any generator; ``benchmarks/vigface_train.py autoencoder --seed 1``), and
the non-adaptive attacker runs with it too. ``--denoise K`` adds the shipped prior and the decoder behind a
PCA projection onto the top ``K`` principal directions of the thief's clean embeddings
(:class:`~advface_sdk.evaluation.denoise.SubspaceDenoiser`; still non-adaptive: no SDK output is used).
``--schemes`` keeps only the named points. ``--search STEPS`` adds the *matcher search*
(:meth:`~advface_sdk.evaluation.face_prior.FacePriorAttacker.search`): the non-adaptive map's render refined by
``STEPS`` gradient steps on the deployment's own match score (stolen template vs the recognizer's embedding of the
render, prepared as the scheme prepares probes). It uses no SDK output: non-adaptive for every point.

    python benchmarks/face_prior_frontier.py --recognizer fr128 --cache-dir runs/bench_cache --out benchmarks/results/threat_matrix

Writes ``face_prior_frontier_<rec>.json`` / ``.md`` / ``.png``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click
import torch

GAUSSIAN = (0.5, 0.8, 1.2, 1.6, 2.0)
GRID_VICTIMS = 6
ADVFACE_NOISE = (0.5, 0.8, 1.2)
SEARCH_LR, SEARCH_JITTER = 0.02, 3  # the matcher search's Adam step and flip-and-shift jitter (px)


def _advface_plus_noise(artifact: str, budget: float, seed: int):
    """AdvFace, then fresh Gaussian noise of relative size ``budget`` (per-user draws from ``seed``)."""
    from advface_sdk.evaluation.methods import create_method
    from advface_sdk.evaluation.methods.advface import AdvFace

    noise = create_method("gaussian", budget=budget, seed=seed)

    class AdvFacePlusNoise(AdvFace):
        name = "advface+noise"

        def _params(self) -> dict:
            return {**super()._params(), "noise": budget}

        def _protect(self, z, user_ids):
            return noise.protect_gallery(super()._protect(z, user_ids), user_ids)

    return AdvFacePlusNoise(artifact=artifact, seed=seed)


def _remove_top(m: int, seed: int):
    """Stored templates and probes both projected off the top-``m`` principal directions of clean embeddings."""
    import numpy as np

    from advface_sdk.evaluation.denoise import SubspaceDenoiser
    from advface_sdk.evaluation.methods.raw import NoProtection
    from facecore.embeddings import l2_normalize

    class RemoveTop(NoProtection):
        name = "remove-top"

        def fit(self, train_embeddings, train_labels=None):
            super().fit(train_embeddings, train_labels)
            self.basis = SubspaceDenoiser.fit(train_embeddings, k=m).basis
            return self

        def _params(self) -> dict:
            return {"remove": m}

        def _drop(self, z):
            z = l2_normalize(np.asarray(z, np.float64))
            return l2_normalize(z - (z @ self.basis) @ self.basis.T).astype(np.float32)

        def _protect(self, z, user_ids):
            return self._drop(z)

        def _probe(self, z, user_ids):
            return self._drop(z)

        def torch_probe(self, e: torch.Tensor) -> torch.Tensor:
            """The probe preparation in torch, for the matcher search (unnormalised: the score is a cosine)."""
            b = torch.from_numpy(self.basis.astype(np.float32))
            return e - (e @ b) @ b.T

    return RemoveTop(seed=seed)


@click.command()
@click.option("--recognizer", "-r", default="fr128", show_default=True)
@click.option("--cache-dir", default=None, help="Where the benchmark caches its trained attackers.")
@click.option("--out", default="benchmarks/results/threat_matrix", show_default=True, type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True)
@click.option("--artifact", "artifacts", multiple=True, metavar="LABEL=FOLDER", help="Another protector artifact as a point.")
@click.option("--judge", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A face autoencoder of the attacker's own (never seen by a generator).")
@click.option("--denoise", "denoise", multiple=True, type=click.IntRange(min=1),
              help="Also attack through a PCA projection onto this many principal directions (repeatable).")
@click.option("--remove", "remove", multiple=True, type=click.IntRange(min=1),
              help="Add a point that drops this many top principal directions from templates and probes (repeatable).")
@click.option("--schemes", default=None, help="Comma-separated point labels to keep (default: all).")
@click.option("--search", "search", default=0, show_default=True, type=click.IntRange(min=0),
              help="Gradient steps of the matcher search (0: not run).")
@click.option("--stem", default=None, help="Output file stem (default face_prior_frontier_<recognizer>).")
def main(recognizer: str, cache_dir: str | None, out: Path, seed: int, artifacts: tuple[str, ...], judge: Path | None,
         denoise: tuple[int, ...], remove: tuple[int, ...], schemes: str | None, search: int, stem: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advface_sdk.evaluation.attacks import decoder_inputs, train_attacker
    from advface_sdk.evaluation.denoise import SubspaceDenoiser
    from advface_sdk.evaluation.face_prior import FacePriorAttacker
    from advface_sdk.evaluation.grid import save_reconstruction_grid
    from advface_sdk.evaluation.harness import Benchmark, BenchmarkConfig
    from advface_sdk.evaluation.methods import create_method
    from advface_sdk.evaluation.privacy import pick_victims
    from advface_sdk.evaluation.report import portable
    from facecore.errors import InvalidInputError

    extra = []
    for spec in artifacts:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            raise click.BadParameter(f"expected LABEL=FOLDER, got {spec!r}", param_hint="--artifact")
        extra.append((label, folder))

    t0 = time.perf_counter()
    b = Benchmark(BenchmarkConfig(recognizer=recognizer, methods=("none", "advface"), curve_budgets=(), seed=seed,
                                  cache_dir=cache_dir, progress=False))
    ev, labels = b.ev, b.ev.dataset.labels
    victims = pick_victims(labels, ev.mask("victim"), None, seed)
    train, users, rows = b._attacker_set()
    prior = b._prior_setup(train, rows)
    rec_torch = ev.recognizer.to_torch()
    decoder, dec_info = train_attacker(train, rec_torch, b.cfg.attacker, cache_dir=b.cache, progress=False)
    defender = ev.emb[ev.mask("defender")]
    artifact = recognizer

    def fit(method, autoencoder=None, denoiser=None) -> FacePriorAttacker:
        return FacePriorAttacker.fit(decoder_inputs(method.protect_gallery(train.embeddings, users)), prior["prototypes"],
                                     train.images, train.labels, autoencoder or prior["autoencoder"],
                                     b.cfg.attacker.val_fraction, seed, denoiser)

    def retrained(method):
        """The benchmark's decoder trained from scratch on the scheme's output for the thief's faces."""
        inputs = decoder_inputs(method.protect_gallery(train.embeddings, users))
        return train_attacker(train, rec_torch, b.cfg.attacker, inputs=inputs, cache_dir=b.cache,
                              progress=False)[0]

    raw = create_method("none", seed=seed).fit(defender)
    non_adaptive = fit(raw)
    denoisers = {k: SubspaceDenoiser.fit(train.embeddings, k=k) for k in denoise}  # his clean faces, no SDK
    denoised = {k: fit(raw, denoiser=d) for k, d in denoisers.items()}
    own = None
    if judge is not None:
        from advface_sdk.evaluation.face_prior import load_face_prior

        own = fit(raw, load_face_prior(judge))
    specs = [("raw", 0.0, lambda s: create_method("none", seed=s)), ("advface", 0.0, lambda s: create_method("advface", artifact=artifact, seed=s))]
    specs += [(f"gaussian {g}", g, lambda s, g=g: create_method("gaussian", budget=g, seed=s)) for g in GAUSSIAN]
    specs += [(f"advface+noise {g}", g, lambda s, g=g: _advface_plus_noise(artifact, g, s)) for g in ADVFACE_NOISE]
    specs += [(label, 0.0, lambda s, f=folder: create_method("advface", artifact=f, seed=s)) for label, folder in extra]
    specs += [(f"remove {m}", 0.0, lambda s, m=m: _remove_top(m, s)) for m in remove]
    if schemes:
        keep = {x.strip() for x in schemes.split(",")} | {"raw"}
        unknown = keep - {label for label, _, _ in specs}
        if unknown:
            raise InvalidInputError(f"unknown schemes {sorted(unknown)}; points: {', '.join(label for label, _, _ in specs)}")
        specs = [sp for sp in specs if sp[0] in keep]
    points = []
    # the grid shows the matcher search when it runs (the strongest), else the denoising attacker when there is one
    # (no generator is trained against it by default), else the attacker's own prior (no generator has seen it)
    strongest = denoised[max(denoised)] if denoised else own or non_adaptive
    shown = (f"matcher search, {search} steps" if search else f"shipped face prior behind PCA-{max(denoised)}" if denoised
             else "own face prior" if own else "shipped face prior")
    grid = {"true": ev.true_rgb(victims.enrolled[:GRID_VICTIMS], 64)}
    for label, budget, make in specs:
        t = time.perf_counter()
        defended = make(seed).fit(defender)
        util, _ = b._utility(defended)
        stolen = decoder_inputs(defended.protect_gallery(ev.emb[victims.enrolled], labels[victims.enrolled]))
        attacker_view = make(seed + 1).fit(defender)  # his own faces: other noise draws (fresh randomness)
        adaptive = non_adaptive if label == "raw" else fit(attacker_view)
        searched = (non_adaptive.search(stolen, rec_torch, search, getattr(defended, "torch_probe", None), SEARCH_LR,
                                        SEARCH_JITTER, seed=seed) if search else None)
        res = {"scheme": label, "noise_budget": budget, "accuracy": util["accuracy"], "tar@far=0.001": util["tar@far=0.001"],
               "face_prior_non_adaptive": b._score(non_adaptive.reconstruct(stolen), victims),
               "face_prior_adaptive": {**b._score(adaptive.reconstruct(stolen), victims), "map": adaptive.info["map"]},
               **({"own_prior_non_adaptive": b._score(own.reconstruct(stolen), victims)} if own else {}),
               **({"search_non_adaptive": b._score(searched, victims)} if search else {}),
               "decoder_non_adaptive": b._success(decoder, stolen, victims),
               **({"decoder_retrained": b._success(retrained(attacker_view), stolen, victims)}
                  if label.startswith("remove ") else {}),
               **{f"face_prior_pca{k}_non_adaptive": b._score(att.reconstruct(stolen), victims) for k, att in denoised.items()},
               **{f"decoder_pca{k}_non_adaptive": b._success(decoder, d(stolen), victims) for k, d in denoisers.items()},
               "minutes": round((time.perf_counter() - t) / 60, 2)}
        points.append(res)
        if not label.startswith(("gaussian ", "advface+noise ")):
            grid[label] = searched[:GRID_VICTIMS] if search else strongest.reconstruct(stolen[:GRID_VICTIMS])
        click.echo(f"{label}: acc {100 * res['accuracy']:.2f}  face prior non-adaptive "
                   f"{100 * res['face_prior_non_adaptive']['type2']:.1f} %  adaptive "
                   f"{100 * res['face_prior_adaptive']['type2']:.1f} %  "
                   + (f"own prior {100 * res['own_prior_non_adaptive']['type2']:.1f} %  " if own else "")
                   + (f"search {100 * res['search_non_adaptive']['type2']:.1f} %  " if search else "")
                   + "".join(f"PCA-{k} {100 * res[f'face_prior_pca{k}_non_adaptive']['type2']:.1f} %  " for k in denoise) + "decoder "
                   f"{100 * res['decoder_non_adaptive']['type2']:.1f} %  ({res['minutes']} min)", err=True)

    raw_acc = points[0]["accuracy"]
    columns = (("face_prior_non_adaptive", "face_prior_adaptive") + (("own_prior_non_adaptive",) if own else ())
               + (("search_non_adaptive",) if search else ())
               + tuple(f"face_prior_pca{k}_non_adaptive" for k in denoise))
    raw_t2 = max(points[0][c]["type2"] for c in columns)
    for p in points:
        p["accuracy_cost_points"] = round(100 * (raw_acc - p["accuracy"]), 3)
        p["strongest_face_prior_type2"] = max(p[c]["type2"] for c in columns)
        # a public projection: his map fitted on his projected faces uses no SDK output
        p["strongest_non_adaptive_type2"] = max(p[c]["type2"] for c in columns
                                                if c != "face_prior_adaptive" or p["scheme"].startswith("remove "))
        p["non_adaptive_reduction_vs_raw"] = (points[0]["strongest_non_adaptive_type2"] / p["strongest_non_adaptive_type2"]
                                              if p["strongest_non_adaptive_type2"] else None)
        p["reduction_vs_raw"] = (raw_t2 / p["strongest_face_prior_type2"]) if p["strongest_face_prior_type2"] else None
    def best_and_cheapest(key: str, reduction: str):
        within = [p for p in points[1:] if p["accuracy_cost_points"] <= 0.3]
        best = min(within, key=lambda p: p[key]) if within else None
        reaching = [p for p in points[1:] if p[reduction] is None or p[reduction] >= 5]
        return best, (min(reaching, key=lambda p: p["accuracy_cost_points"]) if reaching else None)

    best, cheapest = best_and_cheapest("strongest_face_prior_type2", "reduction_vs_raw")
    best_na, cheapest_na = best_and_cheapest("strongest_non_adaptive_type2", "non_adaptive_reduction_vs_raw")
    result = {"command": shlex.join(["python", "benchmarks/face_prior_frontier.py", *sys.argv[1:]]),
              "recognizer": recognizer, "evaluator": ev.evaluator_name, "victims": int(len(victims.enrolled)),
              "threat_model": "(b) database and deployment key stolen: the thief has plain AdvFace templates, the SDK, "
                              "the public recognizers, his own faces and the VIGFace face prior",
              "decoder": dec_info, "face_prior": non_adaptive.info, "points": points,
              **({"search": {"steps": search, "start": "the non-adaptive map's prototype", "lr": SEARCH_LR, "jitter_px": SEARCH_JITTER,
                             "objective": "cos(prepared probe of the render, stolen template) by the deployed recognizer"}}
                 if search else {}),
              "denoisers": [d.info for d in denoisers.values()],
              **({"own_prior": {"folder": str(judge), **own.info}} if own else {}),
              "best_within_0.3_points": best and best["scheme"], "cheapest_5x": cheapest and cheapest["scheme"],
              "best_within_0.3_points_non_adaptive": best_na and best_na["scheme"],
              "cheapest_5x_non_adaptive": cheapest_na and cheapest_na["scheme"],
              "minutes": round((time.perf_counter() - t0) / 60, 2)}
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or f"face_prior_frontier_{recognizer}"
    (out / f"{stem}.json").write_text(json.dumps(portable(result), indent=1) + "\n")

    pct = lambda x: f"{100 * x:.1f} %"
    lines = [f"# Stopping the face-prior attacker with the key stolen — {recognizer}, evaluator {ev.evaluator_name}", "",
             f"Command: `{result['command']}`", "",
             f"Threat model: {result['threat_model']}. {result['victims']} victims (LFW folds 9–10); type II = the "
             f"reconstruction matches another photo of the victim by {ev.evaluator_name} at FAR 1e-3. Accuracy: LFW View-2 "
             "folds 6–10, stored template vs clean probe. *Noise* is fresh randomness of that size relative to the "
             "template, never stored (the thief's own faces get other draws)."
             + (" *PCA-k*: the stolen templates are first projected onto the top k principal directions of clean "
                "embeddings of the thief's own faces (" + ", ".join(f"k = {d.k} keeps {100 * d.variance_kept:.1f} % of "
                "their variance" for d in denoisers.values()) + "); non-adaptive, no SDK output used." if denoise else ""), "",
             "| scheme | accuracy (cost) | face prior, non-adaptive |" + (" own prior, non-adaptive |" if own else "")
             + (" matcher search, non-adaptive |" if search else "")
             + "".join(f" face prior, PCA-{k}, non-adaptive |" for k in denoise)
             + " strongest non-adaptive vs raw | face prior, adaptive | strongest vs raw | decoder, non-adaptive |"
             + "".join(f" decoder, PCA-{k}, non-adaptive |" for k in denoise) + (" decoder, retrained on the scheme |" if remove else ""),
             "|---|---|---|" + ("---|" if own else "") + ("---|" if search else "") + "---|" * len(denoise) + "---|---|---|---|" + "---|" * len(denoise)
             + ("---|" if remove else "")]
    fold = lambda r: "—" if r is None else f"{r:.1f}× below"
    for p in points:
        first = p is points[0]
        lines.append(f"| {p['scheme']} | {100 * p['accuracy']:.2f} % ({p['accuracy_cost_points']:+.2f}) | "
                     f"{pct(p['face_prior_non_adaptive']['type2'])} | "
                     + (f"{pct(p['own_prior_non_adaptive']['type2'])} | " if own else "")
                     + (f"{pct(p['search_non_adaptive']['type2'])} | " if search else "")
                     + "".join(f"{pct(p[f'face_prior_pca{k}_non_adaptive']['type2'])} | " for k in denoise)
                     + f"{'—' if first else fold(p['non_adaptive_reduction_vs_raw'])} | "
                     f"{pct(p['face_prior_adaptive']['type2'])} ({p['face_prior_adaptive']['map']}) | "
                     f"{'—' if first else fold(p['reduction_vs_raw'])} | {pct(p['decoder_non_adaptive']['type2'])} |"
                     + "".join(f" {pct(p[f'decoder_pca{k}_non_adaptive']['type2'])} |" for k in denoise)
                     + ((f" {pct(p['decoder_retrained']['type2'])} |" if "decoder_retrained" in p else " — |") if remove else ""))

    def verdict(title: str, best, cheapest, key: str, reduction: str) -> list[str]:
        return [f"{title}: within 0.3 points the best is **{best['scheme'] if best else 'none'}**"
                + (f" ({pct(best[key])}, {fold(best[reduction])} raw)." if best and best[reduction] else "."),
                f"Cheapest scheme ≥ 5× below raw: **{cheapest['scheme']}** at {cheapest['accuracy_cost_points']:.2f} points."
                if cheapest else "No scheme measured here gets ≥ 5× below raw.", ""]

    if remove:
        lines += ["", "*remove m*: templates and probes projected off the top m principal directions of the defender's "
                  "clean embeddings. The projection is public: the face prior's map refitted on the thief's projected "
                  "faces (the *adaptive* column) and the decoder retrained on them use no SDK output, so for these "
                  "points they count as non-adaptive."]
    if search:
        lines += ["", f"*Matcher search*: each render of the non-adaptive map refined by {search} Adam steps on the "
                  f"deployment's own match score, the cosine between the stolen template and {recognizer}'s embedding of "
                  f"the render (prepared as the scheme prepares probes; a random flip and ≤ {SEARCH_JITTER} px shift each step). A thief "
                  "holding the key can compute that score; he uses no SDK output, so it is non-adaptive for every point."]
    lines += [""]
    lines += verdict("Strongest non-adaptive attacker (acceptance (b))", best_na, cheapest_na, "strongest_non_adaptive_type2",
                     "non_adaptive_reduction_vs_raw")
    lines += verdict("Strongest attacker, adaptive included", best, cheapest, "strongest_face_prior_type2", "reduction_vs_raw")
    if own:
        lines += [f"*Own prior*: a face autoencoder the attacker trained himself (`{judge}`), which no generator has seen; "
                  "the shipped prior is what `advface-cli train-generator --face-prior default` trains against.", ""]
    lines += [f"![frontier]({stem}.png)", "", f"![renders]({stem}_grid.png)", "", f"{result['minutes']:.1f} min on 2 shared CPU cores."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")

    save_reconstruction_grid(out / f"{stem}_grid.png", grid, title=f"{recognizer}, key stolen: "
                             f"{shown}, non-adaptive (first {GRID_VICTIMS} victims)")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, marker in (("gaussian", "o"), ("advface+noise", "s")):
        sel = [p for p in points if p["scheme"].startswith(kind + " ")]
        if sel:
            ax.plot([p["accuracy_cost_points"] for p in sel], [100 * p["strongest_face_prior_type2"] for p in sel],
                    marker=marker, label=f"{kind} (strongest face prior)")
    for p in points[1:]:
        if not p["scheme"].startswith(("gaussian ", "advface+noise ")):
            ax.scatter([p["accuracy_cost_points"]], [100 * p["strongest_face_prior_type2"]], marker="*", s=90, zorder=3,
                       label=f"{p['scheme']} (strongest)")
            ax.scatter([p["accuracy_cost_points"]], [100 * p["strongest_non_adaptive_type2"]], marker="x", zorder=3,
                       label=f"{p['scheme']} (strongest non-adaptive)")
    ax.axhline(100 * raw_t2, color="k", lw=0.8, label="raw templates")
    ax.axhline(100 * raw_t2 / 5, color="r", ls="--", lw=0.8, label="5× below raw")
    ax.axvline(0.3, color="g", ls=":", lw=0.8, label="0.3-point budget")
    ax.set_xlabel("LFW accuracy cost (points)")
    ax.set_ylabel("face-prior type II (%)")
    ax.set_title(f"{recognizer}: key stolen, face-prior attacker")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    click.echo((out / f"{stem}.md").read_text())


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
