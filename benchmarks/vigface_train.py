"""Train the shipped VIGFace pipeline on LFW on a 2-core CPU: autoencoder, then latent diffusion.

Faces of every LFW identity outside View-2 folds 6-10 (those are kept for evaluation), 64x64,
conditioned on fr128 identity prototypes (the frozen-recognizer stage-1 space: prototypes are
the normalised identity means its head starts from). Each stage is resumable from its checkpoint
folder (re-run the same command) and bounded by --minutes.

    export FACEPRIV_SHARED=/path/to/shared FACEPRIV_CACHE=~/.cache/face-privacy
    python benchmarks/vigface_train.py pack --out runs/vigface/lfw64_fr128.npz
    python benchmarks/vigface_train.py autoencoder --pack runs/vigface/lfw64_fr128.npz --out runs/vigface --minutes 40
    python benchmarks/vigface_train.py diffusion --pack runs/vigface/lfw64_fr128.npz --out runs/vigface --minutes 30
    python benchmarks/vigface_train.py assemble --pack runs/vigface/lfw64_fr128.npz --out runs/vigface \\
        --pipeline vigface_sdk/defaults/vigface64
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
import numpy as np
import torch

from facecore.data import IdentityFolderDataset, read_pairs
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer
from facecore.training.distributed import init_distributed
from facecore.training.face_pack import FaceTrainingSet

HELD_OUT_FOLDS = range(5, 10)


def training_subset(pack: FaceTrainingSet) -> FaceTrainingSet:
    held = read_pairs(shared_path("data", "lfw", "pairs.txt")).identities_in_folds(HELD_OUT_FOLDS)
    return pack.subset(set(pack.identities) - held)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


@click.group()
def main() -> None:
    """Train the VIGFace pipeline on LFW (CPU budget)."""


@main.command("pack")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--size", default=64, show_default=True)
def pack_cmd(out: Path, size: int) -> None:
    """Every LFW image at SIZE px with its fr128 embedding (cached)."""
    ds = IdentityFolderDataset.from_folder(shared_path("data", "lfw", "aligned112"))
    FaceTrainingSet.build(ds, create_recognizer("fr128"), size).save(out)


@main.command("autoencoder")
@click.option("--pack", "pack_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--minutes", type=float, default=40.0, show_default=True)
@click.option("--max-steps", type=int, default=100_000, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--init-from", type=click.Path(exists=True, path_type=Path), default=None,
              help="Start from this autoencoder folder.")
@click.option("--adversarial-weight", type=float, default=0.5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Initialisation and batch order; another seed trains an independent prior (an attacker's own).")
@click.option("--widths", default="16,32,64,128", show_default=True,
              help="Block widths (another architecture for an attacker's own prior).")
def autoencoder_cmd(pack_path: Path, out: Path, minutes: float, max_steps: int, batch_size: int, threads: int,
                    init_from: Path | None, adversarial_weight: float, seed: int, widths: str) -> None:
    from vigface_sdk.models.autoencoder import FaceAutoencoder
    from vigface_sdk.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    torch.set_num_threads(threads)
    ctx = init_distributed("cpu")
    train = training_subset(FaceTrainingSet.load(pack_path))
    rec = create_recognizer("fr128")
    cfg = AutoencoderTrainConfig(max_steps=max_steps, max_minutes=minutes, batch_size=batch_size,
                                 identity_batch=batch_size // 2, adversarial_weight=adversarial_weight, seed=seed,
                                 model={"block_out_channels": [int(c) for c in widths.split(",")]})
    init = FaceAutoencoder.from_pretrained(init_from) if init_from else None
    model, state = train_autoencoder(train.images, train.embeddings, train.labels, rec.to_torch(), cfg, ctx,
                                     out / "ckpt_autoencoder", condition={"recognizer": "fr128", "fingerprint": rec.fingerprint},
                                     init=init)
    if ctx.is_main:
        model.save_pretrained(out / "autoencoder")
        (out / "autoencoder_log.json").write_text(json.dumps({"command": command_line(), **state}, indent=1) + "\n")
        print(f"autoencoder: {state['step']} steps, last {state['history'][-1]}")


@main.command("diffusion")
@click.option("--pack", "pack_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--minutes", type=float, default=30.0, show_default=True)
@click.option("--max-steps", type=int, default=100_000, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--widths", default="64,96", show_default=True, help="denoiser block widths")
@click.option("--threads", type=int, default=2, show_default=True)
def diffusion_cmd(pack_path: Path, out: Path, minutes: float, max_steps: int, batch_size: int, widths: str, threads: int) -> None:
    """Latent diffusion over the trained autoencoder's latents (its scaling factor is set from them first)."""
    from vigface_sdk.models.autoencoder import FaceAutoencoder
    from vigface_sdk.training.diffusion import DiffusionTrainConfig, latent_scaling_factor, train_latent_diffusion

    torch.set_num_threads(threads)
    ctx = init_distributed("cpu")
    train = training_subset(FaceTrainingSet.load(pack_path))
    ae = FaceAutoencoder.from_pretrained(out / "autoencoder")
    scale = latent_scaling_factor(ae, train.images)
    ae.config["scaling_factor"] = scale
    cfg = DiffusionTrainConfig(max_steps=max_steps, max_minutes=minutes, batch_size=batch_size,
                               model={"block_out_channels": [int(c) for c in widths.split(",")]})
    model, ema, scheduler, state = train_latent_diffusion(ae, train.images, train.embeddings, train.labels, cfg, ctx,
                                                          out / "ckpt_diffusion")
    if ctx.is_main:
        ae.save_pretrained(out / "autoencoder_scaled")
        ema.save_pretrained(out / "denoiser_ema")
        (out / "diffusion_log.json").write_text(json.dumps({"command": command_line(), **state}, indent=1) + "\n")
        print(f"diffusion: {state['step']} steps, scaling {scale:.4f}, last {state['history'][-1]}")


@main.command("assemble")
@click.option("--pack", "pack_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--pipeline", "pipeline_dir", type=click.Path(path_type=Path), required=True)
def assemble_cmd(pack_path: Path, out: Path, pipeline_dir: Path) -> None:
    """The shipped pipeline (fp16): autoencoder, EMA denoiser, DPM-Solver++, and a virtual sampler fitted to the
    training prototypes that rejects any draw closer to one of ALL 5,749 LFW identities than the median
    nearest-stranger cosine among those real identities."""
    from vigface_sdk.models.autoencoder import FaceAutoencoder
    from vigface_sdk.models.denoiser import PrototypeDenoiser
    from vigface_sdk.training.autoencoder import identity_prototypes, identity_residuals
    from vigface_sdk.training.diffusion import build_pipeline

    pack = FaceTrainingSet.load(pack_path)
    train = training_subset(pack)
    real_all = identity_prototypes(pack.embeddings, pack.labels)
    train_protos = identity_prototypes(train.embeddings, train.labels)[np.unique(train.labels)]
    log = json.loads((out / "diffusion_log.json").read_text())
    meta = {"training": {"data": f"LFW 64x64, {len(train)} faces of {len(train_protos)} identities outside View-2 folds 6-10",
                         "autoencoder_command": json.loads((out / "autoencoder_log.json").read_text())["command"],
                         "diffusion_command": log["command"], "assemble_command": command_line(),
                         "virtual_prototypes_exclude": f"all {len(real_all)} LFW identities"},
            "training_identities": [train.identities[lab] for lab in np.unique(train.labels)]}
    pipe = build_pipeline(FaceAutoencoder.from_pretrained(out / "autoencoder_scaled"),
                          PrototypeDenoiser.from_pretrained(out / "denoiser_ema"), log["scheduler_config"], train_protos,
                          exclude=real_all, metadata=meta, residuals=identity_residuals(train.embeddings, train.labels))
    pipe.save_pretrained(pipeline_dir, dtype=torch.float16)
    print(f"pipeline {pipe.fingerprint()} -> {pipeline_dir} (virtual prototypes: max cos to a real identity "
          f"{pipe.virtual_sampler.max_similarity:.3f})")


@main.command("report")
@click.option("--out", type=click.Path(exists=True, path_type=Path), required=True, help="The training folder.")
@click.option("--results", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--phase", "phases", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Logs of earlier autoencoder phases (oldest first), each with its 'command'.")
def report_cmd(out: Path, results: Path, phases: tuple[str, ...]) -> None:
    """vigface_training.md/.json/.png: commands, steps, minutes and loss curves of every training phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for path in [*phases, out / "autoencoder_log.json", out / "diffusion_log.json"]:
        log = json.loads(Path(path).read_text())
        runs.append({"stage": "diffusion" if "scheduler_config" in log else "autoencoder", "command": log["command"],
                     "steps": log["step"], "minutes": log["history"][-1]["minutes"], "final": log["history"][-1],
                     "history": log["history"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    offset = 0
    for r in runs:
        steps = [h["step"] + (offset if r["stage"] == "autoencoder" else 0) for h in r["history"]]
        ax = axes[0] if r["stage"] == "autoencoder" else axes[1]
        for key in ([k for k in ("l1", "identity", "swap") if k in r["history"][0]] if r["stage"] == "autoencoder" else ["mse"]):
            ax.plot(steps, [h[key] for h in r["history"]], label=f"{key} ({'GAN' if 'g_adv' in r['history'][0] else 'no GAN'})"
                    if r["stage"] == "autoencoder" else key)
        if r["stage"] == "autoencoder":
            offset = steps[-1]
    axes[0].set_title("face autoencoder (identity terms: 1 - cos through fr128)")
    axes[1].set_title("latent diffusion (noise MSE)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    results.mkdir(parents=True, exist_ok=True)
    fig.savefig(results / "vigface_training.png", dpi=110)
    plt.close(fig)
    (results / "vigface_training.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "history"} for r in runs],
                                                              indent=1) + "\n")
    lines = ["# VIGFace training on a 2-core CPU", "",
             "Every phase, in order, with the command that ran it (from `benchmarks/vigface_train.py`). Data: LFW 64x64, the "
             "identities outside View-2 folds 6-10; conditioning: fr128 identity prototypes.", "",
             "| stage | steps | minutes | final losses | command |", "|---|---|---|---|---|"]
    for r in runs:
        final = ", ".join(f"{k} {v:.4f}" for k, v in r["final"].items() if k not in ("step", "minutes"))
        lines.append(f"| {r['stage']} | {r['steps']} | {r['minutes']:.1f} | {final} | `{r['command']}` |")
    total = sum(r["minutes"] for r in runs)
    lines += ["", f"Total: **{total:.0f} minutes** of training on 2 CPU cores (shared with other work during the run).", "",
              "![training curves](vigface_training.png)", ""]
    (results / "vigface_training.md").write_text("\n".join(lines))
    print(f"wrote {results / 'vigface_training.md'} ({total:.0f} min)")


if __name__ == "__main__":
    main()
