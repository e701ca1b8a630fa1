"""``vigface-cli train-diffusion | synthesize | report-synthesis`` (registered on the group in cli.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from facecore._cli import friendly_errors

from .virtual import load_prototype_store


def _identity_module(spec: str):
    """A stage-1 backbone folder (or a space folder holding ``backbone/``), or a recognizer name/path."""
    from facecore.recognizers import create_recognizer

    from .backbones import load_backbone

    path = Path(spec)
    if path.is_dir():
        return load_backbone(path / "backbone" if (path / "backbone").is_dir() else path).module
    return create_recognizer(spec).to_torch()


def _folds(text: str) -> list[int]:
    from .cli import _folds as parse

    return parse(text)


@click.command("train-diffusion")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Pipeline folder to write.")
@click.option("--prototypes", "-p", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Stage-1 space or prototype store: condition on its real prototypes (default: mean --recognizer embeddings).")
@click.option("--recognizer", "-r", default="fr512", show_default=True,
              help="Recognizer whose mean embeddings are the prototypes when no --prototypes are given.")
@click.option("--size", default=64, show_default=True, type=click.Choice(["64", "112"]), help="Image size.")
@click.option("--channels", default="32,64,96,128", show_default=True, help="UNet widths per level.")
@click.option("--landmarks", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Detections JSON ({'faces': {relpath: {'kps': ...}}}) to condition on 5-point pose heatmaps.")
@click.option("--holdout-pairs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="LFW-style pairs.txt whose --holdout-folds identities are kept out of training.")
@click.option("--holdout-folds", default="6-10", show_default=True)
@click.option("--steps", default=100_000, show_default=True, help="Maximum optimizer steps.")
@click.option("--max-minutes", type=float, default=None, help="Stop after this many minutes (checkpoint kept).")
@click.option("--batch-size", default=64, show_default=True, help="Per process.")
@click.option("--lr", default=3e-4, show_default=True)
@click.option("--identity-weight", default=0.0, show_default=True, help="Weight of the identity loss on the predicted x0.")
@click.option("--identity-model", default=None,
              help="Backbone for the identity loss: stage-1 space/backbone folder or recognizer name (default: --prototypes' "
                   "backbone, else --recognizer).")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint folder (default OUT.checkpoint); training resumes from it.")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16"]), default="no", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto.")
@friendly_errors
def train_diffusion_cmd(data, out, prototypes, recognizer, size, channels, landmarks, holdout_pairs, holdout_folds, steps,
                        max_minutes, batch_size, lr, identity_weight, identity_model, checkpoint, mixed_precision, seed,
                        device) -> None:
    """Train the prototype-conditioned diffusion model on DATA (identity folder of aligned crops, or a
    FaceTrainingSet .npz pack) and save a sampling pipeline to OUT. Runs under torchrun (DDP)."""
    from facecore.training.distributed import cleanup, init_distributed
    from facecore.training.face_pack import FaceTrainingSet
    from facecore.data import read_pairs
    from facecore.errors import InvalidInputError
    from facecore.recognizers import create_recognizer

    from .landmarks import landmarks_from_json
    from .train_diffusion import DiffusionData, DiffusionTrainConfig, build_pipeline, train_diffusion
    from .unet import UNetConfig

    ctx = init_distributed(device)
    size = int(size)
    store = load_prototype_store(prototypes) if prototypes else None
    held = read_pairs(holdout_pairs).identities_in_folds(_folds(holdout_folds)) if holdout_pairs else set()
    if data.suffix == ".npz":
        train = FaceTrainingSet.load(data)
        if train.size != size:
            raise InvalidInputError(f"{data} holds {train.size}px faces; pass --size {train.size}")
        train = train.subset(set(train.identities) - held)
        marks = landmarks_from_json(landmarks, train.relpaths) if landmarks else None
        ddata = DiffusionData.from_training_set(train, store, marks)
    else:
        rec = None if store else create_recognizer(recognizer)
        ddata = DiffusionData.from_folder(data, size, store, rec, landmarks, exclude=held, progress=ctx.is_main)
    try:
        widths = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise InvalidInputError(f"--channels must be comma-separated integers, got {channels!r}") from None
    attention = tuple(size >> i <= size // 4 for i in range(len(widths)))  # attention at 1/4 resolution and below
    ucfg = UNetConfig(sample_size=size, block_out_channels=widths, attention_levels=attention,
                      attention_head_dim=math.gcd(32, *(w for w, a in zip(widths, attention) if a)), norm_groups=math.gcd(8, *widths),
                      cond_dim=ddata.dim, landmark_channels=5 if landmarks else 0)
    cfg = DiffusionTrainConfig(max_steps=steps, max_minutes=max_minutes, batch_size=batch_size, lr=lr,
                               identity_weight=identity_weight, mixed_precision=mixed_precision, seed=seed)
    id_model = None
    if identity_weight > 0:
        id_model = _identity_module(identity_model or (str(prototypes) if prototypes and (prototypes / "backbone").is_dir()
                                                       else recognizer))
    result = train_diffusion(ddata, ucfg, cfg, ctx=ctx, checkpoint_dir=checkpoint or out.with_name(out.name + ".checkpoint"),
                             identity_model=id_model, progress=ctx.is_main)
    if ctx.is_main:
        build_pipeline(result, ddata).save_pretrained(out)
        click.echo(f"trained {result.state['step']} steps on {len(ddata.images)} faces of {len(ddata.identities)} identities; "
                   f"pipeline saved to {out}")
    cleanup(ctx)


@click.command("synthesize")
@click.argument("pipeline", type=click.Path(file_okay=False, path_type=Path))
@click.option("--identities", "-n", required=True, type=int, help="Number of virtual identities.")
@click.option("--per-identity", "-m", required=True, type=int, help="Images per identity.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["folders", "recordio"]), default="folders", show_default=True)
@click.option("--prototypes", "-p", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Stage-1 space or prototype store whose virtual prototypes to use (default: the pipeline's sampler).")
@click.option("--seed", default=0, show_default=True)
@click.option("--guidance-scale", default=2.0, show_default=True)
@click.option("--steps", default=25, show_default=True, help="DDIM steps.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--shard-size", default=16, show_default=True, help="Identities per shard (the unit of resumption).")
@click.option("--evaluator", default="fr128", show_default=True, help="Recognizer for per-image scores, or 'none'.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@friendly_errors
def synthesize_cmd(pipeline, identities, per_identity, out, fmt, prototypes, seed, guidance_scale, steps, batch_size,
                   shard_size, evaluator, device, quiet) -> None:
    """Synthesize IDENTITIES x PER-IDENTITY faces with PIPELINE into OUT (resumable; shards across torchrun ranks)."""
    from facecore.training.distributed import cleanup, init_distributed
    from facecore.recognizers import create_recognizer

    from .pipeline import VIGFacePipeline
    from .synthesize import synthesize

    ctx = init_distributed(device)
    pipe = VIGFacePipeline.from_pretrained(pipeline, device=ctx.device)
    protos = None
    if prototypes:
        store = load_prototype_store(prototypes)
        protos = pipe.check_prototypes(store.virtual, store.backbone_fingerprint)
    rec = None if evaluator == "none" else create_recognizer(evaluator)
    res = synthesize(pipe, out, identities, per_identity, protos, seed, guidance_scale, steps, fmt, shard_size, batch_size,
                     rec, ctx, progress=not quiet)
    if ctx.is_main:
        state = "complete" if res.complete else "incomplete (other ranks' shards missing)"
        click.echo(f"{out}: {res.num_images} images made ({res.images_per_second:.2f} img/s on rank 0), "
                   f"{res.shards_skipped} finished shards skipped; {state}")
    cleanup(ctx)


@click.command("report-synthesis")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--pipeline", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The pipeline that made DATASET: its training identities are the real ones checked for leaks.")
@click.option("--real-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Aligned real faces (<identity>/<image>) of the training identities, for the leakage check.")
@click.option("--evaluator", "-r", default="fr128", show_default=True,
              help="Recognizer that judges the images (not the one the prototypes came from).")
@click.option("--far", default=1e-3, show_default=True)
@click.option("--grids", default=16, show_default=True, help="Identities to draw a picture grid for.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Default: DATASET/report.")
@friendly_errors
def report_synthesis_cmd(dataset, pipeline, real_root, evaluator, far, grids, out) -> None:
    """Identity consistency, identity control, leakage against real training identities, picture grids."""
    import numpy as np

    from facecore.data import IdentityFolderDataset
    from facecore.embeddings import extract_embeddings
    from facecore.errors import InvalidInputError
    from facecore.recognizers import create_recognizer

    from .synthesis_report import build_report, embed_faces, load_synthetic, save_grid, write_synthesis_report

    out = out or dataset / "report"
    rec = create_recognizer(evaluator)
    images, labels, rows = load_synthetic(dataset)
    emb = embed_faces(rec, images)
    real = impostors = heldout = None
    if real_root is not None:
        ds = IdentityFolderDataset.from_folder(real_root)
        all_emb = extract_embeddings(rec, ds)
        training = set(ds.identities)
        if pipeline is not None:
            index = json.loads((pipeline / "model_index.json").read_text())
            training = set(index.get("training_identities", [])) & training
            if not training:
                raise InvalidInputError(f"none of the pipeline's training identities is in {real_root}")
        is_train = np.asarray([ds.identities[lab] in training for lab in ds.labels])
        real = (all_emb[is_train], ds.labels[is_train], ds.identities)
        impostors = (all_emb, ds.labels)
        heldout = all_emb[~is_train] if (~is_train).any() else None
    report = {"dataset": str(dataset), **build_report(emb, labels, f"{evaluator} ({rec.fingerprint})", real, impostors, heldout, far)}
    grid_paths = []
    for lab in np.unique(labels)[:grids]:
        name = rows[int(np.flatnonzero(labels == lab)[0])]["identity"]
        save_grid(images[labels == lab], out / "grids" / f"{name}.png", title=name)
        grid_paths.append(f"grids/{name}.png")
    report["grids"] = grid_paths
    paths = write_synthesis_report(report, out)
    ctl = report["identity_control"]
    msg = f"identity control {100 * ctl['accuracy']:.2f} %"
    if "leakage" in report:
        msg += f"; {100 * report['leakage']['clean_rate']:.2f} % of samples without a real identity above FAR={far:g}"
    click.echo(f"{msg}; wrote {paths['json']}, {paths['md']} and {len(grid_paths)} grids")
