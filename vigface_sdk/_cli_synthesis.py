"""``vigface-cli train-autoencoder | train-diffusion | synthesize | report-synthesis`` (added to the group in cli.py)."""

from __future__ import annotations

from pathlib import Path

import click

from facecore._cli import friendly_errors


def _widths(channels: str) -> list[int]:
    """``--channels`` (comma-separated integers) as a list."""
    from facecore.errors import InvalidInputError

    try:
        return [int(c) for c in channels.split(",")]
    except ValueError:
        raise InvalidInputError(f"--channels must be comma-separated integers, got {channels!r}") from None


def _training_set(data: Path, recognizer: str, size: int, holdout_pairs: Path | None, holdout_folds: str, progress: bool):
    """DATA as a ``FaceTrainingSet``: a ``.npz`` pack, or an identity folder embedded with ``recognizer`` (cached)."""
    from facecore.data import IdentityFolderDataset, parse_folds, read_pairs
    from facecore.errors import IncompatibleError
    from facecore.recognizers import create_recognizer
    from facecore.training.face_pack import FaceTrainingSet

    rec = create_recognizer(recognizer)
    if data.suffix == ".npz":
        train = FaceTrainingSet.load(data)
        if train.fingerprint != rec.fingerprint:
            raise IncompatibleError(f"{data} holds embeddings of recognizer {train.fingerprint}, not of {recognizer} "
                                    f"({rec.fingerprint})")
        if train.size != size:
            raise IncompatibleError(f"{data} holds {train.size}px faces; pass --size {train.size}")
    else:
        train = FaceTrainingSet.build(IdentityFolderDataset.from_folder(data), rec, size)
    if holdout_pairs:
        held = read_pairs(holdout_pairs).identities_in_folds(parse_folds(holdout_folds))
        train = train.subset(set(train.identities) - held)
    return train, rec


def _common(func):
    for opt in reversed([
        click.option("--recognizer", "-r", default="fr128", show_default=True,
                     help="Recognizer whose identity means are the prototypes (and whose identity loss trains the decoder)."),
        click.option("--holdout-pairs", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="LFW-style pairs.txt whose --holdout-folds identities are kept out of training."),
        click.option("--holdout-folds", default="6-10", show_default=True),
        click.option("--steps", default=100_000, show_default=True, help="Maximum optimizer steps."),
        click.option("--max-minutes", type=float, default=None, help="Stop after this many minutes (checkpoint kept)."),
        click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Checkpoint folder (default OUT.checkpoint); training resumes from it."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0)),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto."),
    ]):
        func = opt(func)
    return func


@click.command("train-autoencoder")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Autoencoder folder to write.")
@click.option("--size", default=64, show_default=True, type=click.Choice(["64", "112"]), help="Image size.")
@click.option("--channels", default="16,32,64,128", show_default=True, help="Widths per level (latent at size / 2^(levels-1)).")
@click.option("--batch-size", default=32, show_default=True, help="Per process.")
@_common
@friendly_errors
def train_autoencoder_cmd(data, out, size, channels, batch_size, recognizer, holdout_pairs, holdout_folds, steps, max_minutes,
                          checkpoint, seed, device) -> None:
    """Stage 2a: the identity-conditioned face autoencoder on DATA (identity folder of aligned crops, or a .npz pack)."""
    from facecore.training.distributed import cleanup, init_distributed

    from .training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = AutoencoderTrainConfig(max_steps=steps, max_minutes=max_minutes, batch_size=batch_size,
                                 identity_batch=max(1, batch_size // 2), seed=seed,
                                 model={"block_out_channels": _widths(channels)})
    ctx = init_distributed(device)
    train, rec = _training_set(data, recognizer, int(size), holdout_pairs, holdout_folds, ctx.is_main)
    model, state = train_autoencoder(train.images, train.embeddings, train.labels, rec.to_torch(), cfg, ctx,
                                     checkpoint or out.with_name(out.name + ".checkpoint"),
                                     condition={"recognizer": recognizer, "fingerprint": rec.fingerprint}, progress=ctx.is_main)
    if ctx.is_main:
        model.save_pretrained(out)
        click.echo(f"trained {state['step']} steps on {len(train)} faces; autoencoder saved to {out}")
    cleanup(ctx)


@click.command("train-diffusion")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--autoencoder", "-a", "autoencoder_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder written by train-autoencoder.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Pipeline folder to write.")
@click.option("--channels", default="64,96", show_default=True, help="Denoiser widths per level.")
@click.option("--batch-size", default=128, show_default=True, help="Per process.")
@click.option("--exclude-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Aligned faces (<identity>/<image>) of more real people virtual identities must stay away from "
                   "(the training identities always are).")
@_common
@friendly_errors
def train_diffusion_cmd(data, autoencoder_dir, out, channels, batch_size, exclude_root, recognizer, holdout_pairs,
                        holdout_folds, steps, max_minutes, checkpoint, seed, device) -> None:
    """Stage 2b: the prototype-conditioned latent diffusion model; saves the sampling pipeline to OUT."""
    import numpy as np

    from facecore.data import IdentityFolderDataset
    from facecore.embeddings import extract_embeddings
    from facecore.errors import IncompatibleError
    from facecore.training.distributed import cleanup, init_distributed

    from .models.autoencoder import FaceAutoencoder
    from .training.autoencoder import identity_prototypes, identity_residuals
    from .training.diffusion import DiffusionTrainConfig, build_pipeline, latent_scaling_factor, train_latent_diffusion

    cfg = DiffusionTrainConfig(max_steps=steps, max_minutes=max_minutes, batch_size=batch_size, seed=seed,
                               model={"block_out_channels": _widths(channels)})
    ctx = init_distributed(device)
    ae = FaceAutoencoder.from_pretrained(autoencoder_dir, map_location=ctx.device)
    train, rec = _training_set(data, recognizer, ae.image_size, holdout_pairs, holdout_folds, ctx.is_main)
    if ae.config["condition"].get("fingerprint") not in (None, rec.fingerprint):
        raise IncompatibleError(f"{autoencoder_dir} was trained on prototypes of recognizer "
                                f"{ae.config['condition']['fingerprint']}, not {recognizer} ({rec.fingerprint})")
    ae.config["scaling_factor"] = latent_scaling_factor(ae, train.images)
    _, ema, scheduler, state = train_latent_diffusion(ae, train.images, train.embeddings, train.labels, cfg, ctx,
                                                      checkpoint or out.with_name(out.name + ".checkpoint"), ctx.is_main)
    if ctx.is_main:
        protos = identity_prototypes(train.embeddings, train.labels)[np.unique(train.labels)]
        exclude = protos
        if exclude_root is not None:
            ds = IdentityFolderDataset.from_folder(exclude_root)
            exclude = np.concatenate([protos, identity_prototypes(extract_embeddings(rec, ds), ds.labels)])
        pipe = build_pipeline(ae.cpu(), ema.cpu(), dict(scheduler.config), protos, exclude,
                              {"training": {"faces": len(train), "identities": int(len(protos)), "steps": state["step"]},
                               "training_identities": [train.identities[lab] for lab in np.unique(train.labels)]},
                              residuals=identity_residuals(train.embeddings, train.labels))
        pipe.save_pretrained(out)
        click.echo(f"trained {state['step']} steps; pipeline saved to {out}")
    cleanup(ctx)


@click.command("synthesize")
@click.option("--identities", "-n", required=True, type=int, help="Number of virtual identities.")
@click.option("--per-identity", "-m", required=True, type=int, help="Images per identity.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--pipeline", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Pipeline folder (default: the shipped CPU-trained vigface64).")
@click.option("--format", "fmt", type=click.Choice(["both", "folders", "recordio"]), default="both", show_default=True,
              help="Identity folders of JPEGs, InsightFace RecordIO (train.rec/.idx), or both; always manifest.jsonl.")
@click.option("--prototypes", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Stage-1 space or prototype store whose virtual prototypes to use (default: the pipeline's sampler).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--guidance-scale", default=None, type=float, help="Classifier-free guidance (default: the pipeline's).")
@click.option("--steps", default=None, type=int, help="Sampler steps (default: the pipeline's).")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--shard-size", default=16, show_default=True, help="Identities per shard (the unit of resumption).")
@click.option("--evaluator", default="none", show_default=True,
              help="Recognizer for per-image consistency scores in the manifest (e.g. fr512), or 'none'.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@friendly_errors
def synthesize_cmd(identities, per_identity, out, pipeline, fmt, prototypes, seed, guidance_scale, steps, batch_size,
                   shard_size, evaluator, device, quiet) -> None:
    """Synthesize IDENTITIES x PER-IDENTITY faces of virtual identities into OUT (resumable; shards across torchrun ranks)."""
    from facecore.recognizers import create_recognizer
    from facecore.tempfiles import terminate_as_interrupt
    from facecore.training.distributed import cleanup, init_distributed

    from .models.virtual import load_prototype_store
    from .pipelines.pipeline import load_pipeline
    from .pipelines.synthesize import synthesize

    ctx = init_distributed(device)
    pipe = load_pipeline(pipeline, device=ctx.device)
    protos = None
    if prototypes:
        store = load_prototype_store(prototypes)
        protos = pipe.check_prototypes(store.virtual, store.backbone_fingerprint)
    rec = None if evaluator == "none" else create_recognizer(evaluator)
    kwargs = {k: v for k, v in {"guidance_scale": guidance_scale, "num_inference_steps": steps}.items() if v is not None}
    with terminate_as_interrupt():  # SIGTERM, like Ctrl-C, removes the file being written; finished shards stay
        res = synthesize(pipe, out, identities, per_identity, protos, seed, fmt=fmt, shard_size=shard_size,
                         batch_size=batch_size, evaluator=rec, ctx=ctx, progress=not quiet, **kwargs)
    if ctx.is_main:
        state = "complete" if res.complete else "incomplete (other ranks' shards missing)"
        click.echo(f"{out}: {res.num_images} images made ({res.images_per_second:.1f} img/s on rank 0), "
                   f"{res.shards_skipped} finished shards skipped; {state}")
    cleanup(ctx)


@click.command("report-synthesis")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--pipeline", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The pipeline that made DATASET: its training identities are the real ones checked for leaks.")
@click.option("--real-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Aligned real faces (<identity>/<image>) of the training identities, for the leakage check.")
@click.option("--evaluator", "-r", default="fr512", show_default=True,
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

    from .evaluation.synthesis_report import build_report, embed_faces, load_synthetic, save_grid, write_synthesis_report
    from .pipelines.pipeline import load_pipeline

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
            training = set(load_pipeline(pipeline).metadata.get("training_identities", [])) & training
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


@click.command("demo")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--identities", "-n", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--per-identity", "-m", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@friendly_errors
def demo_cmd(out, identities, per_identity, seed) -> None:
    """Faces of a few virtual identities from the shipped pipeline, as a picture grid (rows = identities)."""
    import time

    from .evaluation.synthesis_report import save_grid
    from .pipelines.pipeline import load_pipeline

    pipe = load_pipeline()
    protos = pipe.virtual_prototypes(identities, seed=seed)
    t = time.perf_counter()
    images = pipe(protos, per_identity, seed=seed, progress=True)
    seconds = time.perf_counter() - t
    path = save_grid(images, Path(out) / "virtual_identities.png", columns=per_identity)  # rows: virtual identities
    click.echo(f"VIGFace: {len(images)} faces of {identities} virtual identities in {seconds:.1f} s "
               f"({len(images) / seconds:.1f} img/s) -> {path}")
