"""``vigface-cli``: build a virtual-identity face space and synthesize privacy-free datasets."""

from __future__ import annotations

from pathlib import Path

import click

from facecore import __version__
from facecore._cli import build_recognizer, friendly_errors, plugins_command, recognizer_option
from facecore.data.lfw import parse_folds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vigface-cli")
def main() -> None:
    """VIGFace: virtual identities for face-recognition training sets."""


main.add_command(plugins_command({"recognizers": "facecore.recognizers:RECOGNIZERS",
                                  "schedulers (besides diffusers' own)": "vigface_sdk.pipelines.pipeline:SCHEDULERS"}))


@main.command("train-space")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--virtual", "-k", "num_virtual", required=True, type=int, help="Number of virtual identity prototypes.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: prototypes/, backbone/, checkpoint/, training.json.")
@click.option("--backbone", type=click.Choice(["recognizer", "iresnet", "checkpoint"]), default="recognizer", show_default=True,
              help="Start from --recognizer (ONNX converted to torch), train an IResNet from scratch, or load --checkpoint.")
@recognizer_option
@click.option("--checkpoint", "arcface_checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="arcface_torch backbone weights (.pth/.pt weights-only, or .safetensors) for --backbone checkpoint.")
@click.option("--arch", type=click.Choice(["r18", "r34", "r50", "r100"]), default="r18", show_default=True,
              help="IResNet depth for --backbone iresnet.")
@click.option("--dim", default=512, show_default=True, help="Embedding size for --backbone iresnet.")
@click.option("--finetune/--frozen", default=False, show_default=True,
              help="Train the recognizer/checkpoint backbone too (frozen: head only, on cached embeddings).")
@click.option("--margin-type", type=click.Choice(["arcface", "cosface"]), default="arcface", show_default=True)
@click.option("--margin", type=float, default=None, help="Margin (default 0.5 ArcFace, 0.35 CosFace).")
@click.option("--scale", default=64.0, show_default=True)
@click.option("--epochs", default=20, show_default=True)
@click.option("--steps", type=int, default=None, help="Train this many steps instead of --epochs.")
@click.option("--batch-size", default=256, show_default=True, help="Per process.")
@click.option("--lr", default=0.1, show_default=True, help="Learning rate of the prototype head.")
@click.option("--backbone-lr", default=0.01, show_default=True)
@click.option("--min-images", default=2, show_default=True, help="Images every identity needs.")
@click.option("--drop-small", is_flag=True, help="Leave out identities with fewer than --min-images images instead of failing.")
@click.option("--init-from", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Start from this prototype store (e.g. a --frozen run before --finetune); same identities and K.")
@click.option("--holdout-pairs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="LFW-style pairs.txt whose --holdout-folds identities are kept out of training.")
@click.option("--holdout-folds", default="6-10", show_default=True, help="1-based folds of --holdout-pairs to hold out.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto.")
@friendly_errors
def train_space_cmd(dataset, num_virtual, out, backbone, recognizer, channel_order, mean, std, arcface_checkpoint, arch, dim,
                    finetune, margin_type, margin, scale, epochs, steps, batch_size, lr, backbone_lr, min_images, drop_small,
                    init_from, holdout_pairs, holdout_folds, seed, device) -> None:
    """Train the identity space of DATASET (<identity>/<image> aligned crops): real + K virtual prototypes.

    Resumes from OUT/checkpoint when present. Runs under torchrun (DistributedDataParallel), e.g.
    ``torchrun --nproc_per_node 2 -m vigface_sdk train-space DATASET -k K -o OUT`` (write ``-k``:
    torchrun takes ``--virtual`` for its own ``--virtual-local-rank``).
    """
    import json

    from facecore.training.distributed import cleanup, init_distributed
    from facecore.data import read_pairs
    from facecore.errors import InvalidInputError

    from .models.backbones import arcface_backbone, iresnet_backbone, recognizer_backbone
    from .models.prototypes import PrototypeStore
    from .training.space import EmbeddingSet, SpaceTrainConfig, check_images, load_training_dataset, train_space

    ctx = init_distributed(device)
    cfg = SpaceTrainConfig(num_virtual=num_virtual, margin_type=margin_type, margin=margin, scale=scale, epochs=epochs,
                           max_steps=steps, batch_size=batch_size, lr=lr, backbone_lr=backbone_lr, seed=seed)
    if backbone == "iresnet":
        net = iresnet_backbone(arch, dim=dim)
    elif backbone == "checkpoint":
        if arcface_checkpoint is None:
            raise InvalidInputError("--backbone checkpoint needs --checkpoint PATH")
        net = arcface_backbone(arcface_checkpoint, trainable=finetune)
    else:
        rec = build_recognizer(recognizer, channel_order, mean, std)
        net = recognizer_backbone(rec, trainable=finetune)
    ds = load_training_dataset(dataset, min_images=min_images, drop_small=drop_small, size=net.preprocessing.input_size)
    if holdout_pairs is not None:
        held = read_pairs(holdout_pairs).identities_in_folds(parse_folds(holdout_folds))
        ds = ds.subset(set(ds.identities) - held)
    if backbone == "recognizer" and not finetune:
        data = EmbeddingSet.from_recognizer(rec, ds)  # cached; mirrored crops as augmentation
    else:
        check_images(ds, progress=ctx.is_main)
        data = ds
    init = None
    if init_from is not None:
        init = PrototypeStore.from_pretrained(init_from)
        if backbone != "iresnet":  # a pretrained start: the store must come from the same starting backbone
            init.check_backbone(net.spec.get("recognizer_fingerprint") or net.fingerprint)
    space = train_space(data, cfg, net, ctx, checkpoint_dir=out / "checkpoint", init=init)
    if ctx.is_main:
        space.save(out)
        summary = {"dataset": str(dataset), "images": len(ds), "identities": len(ds.identities), "backbone": net.spec,
                   "fingerprint": space.fingerprint, "world_size": ctx.world_size, **space.state}
        (out / "training.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        click.echo(f"saved {len(ds.identities)} real + {num_virtual} virtual prototypes ({space.head.dim}-d, "
                   f"backbone {space.fingerprint}) to {out}")
    cleanup(ctx)


@main.command("report-space")
@click.argument("prototypes", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for separability.json/.md/.png (default: PROTOTYPES/../report).")
@click.option("--name", default="separability", show_default=True, help="File name stem.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random-vector baseline.")
@friendly_errors
def report_space_cmd(prototypes: Path, out, name: str, seed: int) -> None:
    """Separability of the virtual prototypes in PROTOTYPES (a prototype store folder) from the real ones."""
    from .models.prototypes import PrototypeStore
    from .evaluation.space_report import separability_report, write_report

    report = separability_report(PrototypeStore.from_pretrained(prototypes), seed=seed)
    paths = write_report(report, out or prototypes.parent / "report", name)
    crit = report["criterion"]
    click.echo(f"p99 max cos(virtual, real) = {crit['virtual_vs_real_max_p99']:.4f}; median real nearest negative = "
               f"{crit['real_nearest_negative_median']:.4f} -> {'PASS' if crit['passed'] else 'FAIL'}")
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


from ._cli_synthesis import (demo_cmd, report_synthesis_cmd, synthesize_cmd, train_autoencoder_cmd,  # noqa: E402
                             train_diffusion_cmd)

main.add_command(train_autoencoder_cmd)
main.add_command(train_diffusion_cmd)
main.add_command(synthesize_cmd)
main.add_command(report_synthesis_cmd)
main.add_command(demo_cmd)
