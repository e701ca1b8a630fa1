"""The main job: embed real faces, protect the gallery, verify clean probes, attack, report.

``advface-cli demo`` runs it on LFW from ``$FACEPRIV_SHARED`` with the shipped ``fr128`` protector
and shadow decoder; the evaluator of reconstructions is the other shared recognizer (fr512).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .artifact import default_shadow
from .evaluation.denoise import SubspaceDenoiser
from .evaluation.grid import save_reconstruction_grid
from .evaluation.lfw_setup import LfwEvaluation
from .evaluation.privacy import attack_success, decode_to_crops, random_face_baseline
from .models.decoders import FaceDecoder
from .protector import Protector


def run_demo(out: Path, recognizer: str = "fr128", victims: int = 300, grid_rows: int = 6,
             originals: bool | None = None) -> dict:
    ev = LfwEvaluation.for_recognizer(recognizer, max_victims=victims, subset="evaluation")
    click.echo(f"1/5 embedding {len(ev.dataset)} LFW faces (folds 6–10) with {recognizer} and evaluator {ev.evaluator_name} "
               "(cached after the first run)")
    emb, emb_eval = ev.emb, ev.emb_eval
    protector = Protector(recognizer, recognizer_fingerprint=ev.recognizer.fingerprint)
    left, right, issame, _ = ev.eval_pairs
    click.echo(f"2/5 protecting the gallery: {len(left)} stored templates (budget {protector.artifact.config['budget']})")
    stored = protector.protect(emb[left])
    click.echo("3/5 verifying clean probes against raw and protected galleries (LFW View-2 folds 6–10)")
    util_raw, util_prot = ev.utility(emb[left]), ev.utility(stored)
    click.echo(f"4/5 attacking {victims} victims' stored templates with the shadow reconstruction model")
    vic = ev.victims("evaluation")
    shadow = FaceDecoder.from_pretrained(default_shadow(recognizer))
    thr_p, thr_e = ev.thresholds
    truth = ev.true_rgb(vic.enrolled, shadow.config["size"])
    rec_raw = decode_to_crops(shadow, emb[vic.enrolled])
    protected = protector.protect(emb[vic.enrolled])
    rec_prot = decode_to_crops(shadow, protected)
    # the thief's projection: PCA of clean embeddings of people who are not victims (no SDK output needed)
    others = ~np.isin(ev.dataset.labels, ev.dataset.labels[vic.enrolled])
    rec_proj = decode_to_crops(shadow, SubspaceDenoiser.fit(emb[others])(protected))
    args = (vic, ev.recognizer, ev.evaluator, emb, emb_eval, thr_p, thr_e)
    att_raw, att_prot = attack_success(rec_raw, *args, truth), attack_success(rec_prot, *args, truth)
    att_proj = attack_success(rec_proj, *args, truth)
    chance = random_face_baseline(vic, ev.dataset.labels, emb_eval, thr_e, np.arange(len(emb_eval)))
    click.echo("5/5 writing the report")
    out.mkdir(parents=True, exist_ok=True)
    grid = save_reconstruction_grid(out / "reconstructions.png",
                                    {"true face": truth[:grid_rows], "from raw template": rec_raw[:grid_rows],
                                     "from protected template": rec_prot[:grid_rows],
                                     "protected, PCA-projected": rec_proj[:grid_rows]},
                                    title=f"AdvFace ({recognizer}): shadow-model reconstructions", originals=originals)
    result = {"recognizer": recognizer, "evaluator": ev.evaluator_name, "victims": int(len(vic.enrolled)),
              "utility": {"raw": util_raw, "protected": util_prot},
              "attack_shadow": {"raw": att_raw, "protected": att_prot, "protected_pca_projected": att_proj,
                                "random_face_type2": chance}}
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [("raw embeddings", util_raw, att_raw), ("AdvFace-protected", util_prot, att_prot),
            ("  PCA-projected", util_prot, att_proj)]
    click.echo("")
    click.echo(f"{'stored template':<20} {'LFW acc (6–10)':>15} {'TAR@1e-3':>9} {'attack type II':>15} {'type I':>8} {'SSIM':>6}")
    for name, u, a in rows:
        click.echo(f"{name:<20} {100 * u['accuracy']:>14.2f}% {100 * u['tar@far=0.001']:>8.1f}% "
                   f"{100 * a['type2']:>14.1f}% {100 * a['type1']:>7.1f}% {a['ssim']:>6.3f}")
    click.echo(f"{'random real face':<20} {'':>15} {'':>9} {100 * chance:>14.1f}%")
    click.echo("")
    click.echo("attack = the shipped shadow decoder reconstructs a face from the stolen template; type II: the "
               f"reconstruction matches another photo of the victim by {ev.evaluator_name} at FAR 1e-3; type I: matches the "
               f"enrolled photo by {recognizer}. This is the attacker AdvFace was trained against. 'PCA-projected': the "
               "same decoder, fed each protected template after a projection onto the principal subspace of clean "
               "embeddings of other people — no SDK needed, and the noise comes off. Store templates under a deployment "
               "key; the other attackers are in `advface-cli benchmark` (see README, 'What protection you get').")
    click.echo(f"wrote {grid} and {out / 'demo.json'}")
    return result
