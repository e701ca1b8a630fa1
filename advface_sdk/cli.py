"""``advface-cli``: embed faces, train and export AdvFace protectors, protect embeddings, benchmark."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import numpy as np

from facecore import __version__
from facecore._cli import build_recognizer, friendly_errors, plugins_command, recognizer_option

from .gallery.cli import gallery


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advface-cli")
def main() -> None:
    """AdvFace: store adversarial face embeddings that resist reconstruction."""


main.add_command(gallery)
main.add_command(plugins_command({"recognizers": "facecore.recognizers:RECOGNIZERS", "backends": "advface_sdk.backends:BACKENDS",
                                  "protection methods": "advface_sdk.evaluation.methods:METHODS",
                                  "gallery stores": "advface_sdk.gallery:STORES"}))


@main.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@recognizer_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npz.")
@click.option("--flip/--no-flip", default=False, help="Also store embeddings of mirrored crops.")
@friendly_errors
def embed(dataset: Path, recognizer: str, channel_order, mean, std, out: Path, flip: bool) -> None:
    """Embed every aligned crop of an identity-folder DATASET (cached per image)."""
    from facecore.data import IdentityFolderDataset
    from facecore.embeddings import atomic_save_npz, extract_embeddings

    import warnings

    from facecore.errors import DegenerateImageWarning

    rec = build_recognizer(recognizer, channel_order, mean, std)
    ds = IdentityFolderDataset.from_folder(dataset, size=rec.preprocessing.input_size)
    with warnings.catch_warnings(record=True) as caught:  # degenerate images are flagged one line each, the run goes on
        warnings.simplefilter("always", DegenerateImageWarning)
        arrays = {"embeddings": extract_embeddings(rec, ds), "relpaths": np.asarray(ds.relpaths),
                  "labels": ds.labels, "identities": np.asarray(ds.identities),
                  "fingerprint": np.asarray(rec.fingerprint)}
        if flip:
            arrays["embeddings_flip"] = extract_embeddings(rec, ds, flip=True)
    flagged = sorted({str(w.message) for w in caught if issubclass(w.category, DegenerateImageWarning)})
    for message in flagged:
        click.echo(f"warning: {message}", err=True)
    atomic_save_npz(out, **arrays)
    click.echo(f"wrote {len(ds)} embeddings of dim {rec.dim} ({len(ds.identities)} identities) to {out}"
               + (f"; {len(flagged)} degenerate image(s) flagged above" if flagged else ""))


@main.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@recognizer_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output pack (.npz).")
@click.option("--size", type=click.Choice(["64", "112"]), default="64", show_default=True, help="Image size of the pack.")
@click.option("--group", type=click.Choice(["all", "defender", "attacker", "victim", "evaluation"]), default="defender",
              show_default=True, help="Identity group of the LFW protocol (needs --pairs unless 'all').")
@click.option("--pairs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="LFW pairs.txt (default: DATASET/../pairs.txt).")
@friendly_errors
def pack(dataset: Path, recognizer: str, channel_order, mean, std, out: Path, size: str, group: str, pairs) -> None:
    """Pack (face image, embedding) pairs of DATASET for training decoders and generators."""
    from facecore.data import IdentityFolderDataset, read_pairs
    from facecore.training.face_pack import FaceTrainingSet

    from .protocol import lfw_identity_groups

    rec = build_recognizer(recognizer, channel_order, mean, std)
    ds = IdentityFolderDataset.from_folder(dataset, size=rec.preprocessing.input_size)
    if group != "all":
        groups = lfw_identity_groups(read_pairs(pairs or dataset.parent / "pairs.txt"), ds.identities)
        ds = ds.subset(groups[group])
    train = FaceTrainingSet.build(ds, rec, int(size))
    train.save(out)
    click.echo(f"packed {len(train)} faces of {len(ds.identities)} identities ({group}) at {size}x{size} into {out}")


def _trust_options(func):
    func = click.option("--require-signature", is_flag=True, default=False,
                        help="Refuse artifacts not signed by a trusted key (default: warn).")(func)
    return click.option("--trust", multiple=True, metavar="KEY",
                        help="Also trust artifacts signed by this ed25519 public key (PEM file or base64); repeatable.")(func)


def _load(artifact: str, trust, require_signature: bool):
    import warnings

    from facecore.errors import UnsignedArtifactWarning

    from .artifact import load_artifact

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsignedArtifactWarning)
        art = load_artifact(artifact, trust=tuple(trust), require_signature=require_signature or None)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return art


def _refuse_overwriting(out: Path, inputs: dict) -> None:
    """Refuse an output ``out`` that is one of the command's input files (``{what: path}``): it would be lost."""
    from facecore.errors import InvalidInputError

    for what, path in inputs.items():
        if path is not None and out.exists() and path.exists() and os.path.samefile(out, path):
            raise InvalidInputError(f"{out} is the {what}: write the output to a new file (the {what} would be lost)")


def _device_option(func):
    return click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto.")(func)


def _originals_option(func):
    return click.option("--originals/--no-originals", default=None,
                        help="Show the victims' own photos in the grid [default: only outside benchmarks/results — "
                             "LFW photos are third-party images of real people, not ours to publish].")(func)


@main.command("train-shadow")
@click.argument("pack_file", metavar="PACK", type=click.Path(dir_okay=False, path_type=Path))
@recognizer_option
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output decoder folder.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--id-weight", default=1.0, show_default=True, help="Identity-loss weight (0: pixel-only decoder).")
@click.option("--arch", type=click.Choice(["upconv", "deconv"]), default="upconv", show_default=True)
@click.option("--width", default=32, show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--max-minutes", type=float, default=None, help="Stop after this many minutes (at an epoch end).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Resume from / save checkpoints here (default: OUT.ckpt).")
@_device_option
@friendly_errors
def train_shadow(pack_file, recognizer, channel_order, mean, std, out, epochs, batch_size, lr, id_weight, arch, width, seed,
                 max_minutes, checkpoint_dir, device) -> None:
    """Train the shadow reconstruction model (embedding → face) on a PACK; runs under torchrun too."""
    from facecore.training.distributed import cleanup, init_distributed
    from facecore.training.face_pack import FaceTrainingSet

    from .training.reconstruction import DecoderTrainConfig, train_decoder

    cfg = DecoderTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, id_weight=id_weight, arch=arch, width=width,
                             seed=seed, max_minutes=max_minutes)  # checked before the pack is decoded
    ctx = init_distributed(device)
    train = FaceTrainingSet.load(pack_file)
    rec = _matching_recognizer(recognizer, channel_order, mean, std, train) if id_weight > 0 else None
    model, state = train_decoder(train, rec.to_torch() if rec else None, cfg, ctx, checkpoint_dir or out.parent / f"{out.name}.ckpt")
    if ctx.is_main:
        model.cpu().save_pretrained(out, {"recognizer": _rec_info(train, rec), "training": {"images": len(train),
                                    "identities": int(len(set(train.labels.tolist()))), **state}})
        click.echo(f"saved shadow decoder to {out} after {_epochs_done(state)}")
    cleanup(ctx)


@main.command("train-generator")
@click.argument("pack_file", metavar="PACK", type=click.Path(dir_okay=False, path_type=Path))
@recognizer_option
@click.option("--shadow", required=True, type=click.Path(file_okay=False, path_type=Path), help="Trained shadow decoder folder.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output artifact folder.")
@click.option("--budget", default=0.5, show_default=True, help="L2 noise budget on unit embeddings.")
@click.option("--hidden", default=256, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--utility-weight", default=4.0, show_default=True)
@click.option("--genuine-weight", default=4.0, show_default=True, help="Weight keeping same-person probes matched.")
@click.option("--genuine-margin", default=0.15, show_default=True, help="Required margin above the clean threshold.")
@click.option("--distortion-weight", default=0.0, show_default=True,
              help="Weight keeping the template's cosine scores against other people unchanged (less score noise).")
@click.option("--init", "init_artifact", default=None, help="Protector artifact (name or folder) to fine-tune from.")
@click.option("--face-prior", multiple=True,
              help="A face autoencoder folder to train against as a second shadow ('default': the VIGFace one); "
                   "its embedding space must be the recognizer's. Repeat for an ensemble of priors (terms averaged).")
@click.option("--denoise-prior", type=click.IntRange(min=1), default=None,
              help="With --face-prior: also train against each prior behind a PCA projection onto this many "
                   "principal directions of the pack's clean embeddings (the denoising attacker).")
@click.option("--prior-id-weight", default=4.0, show_default=True, help="With --face-prior: weight of its identity term.")
@click.option("--prior-pixel-weight", default=1.0, show_default=True, help="With --face-prior: weight of its pixel term.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--max-minutes", type=float, default=None)
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@_device_option
@friendly_errors
def train_generator_cmd(pack_file, recognizer, channel_order, mean, std, shadow, out, budget, hidden, epochs, batch_size, lr,
                        utility_weight, genuine_weight, genuine_margin, distortion_weight, init_artifact, face_prior,
                        denoise_prior, prior_id_weight, prior_pixel_weight, seed, max_minutes, checkpoint_dir, device) -> None:
    """Train the noise generator against a frozen shadow model and write a protector artifact."""
    if denoise_prior and not face_prior:
        raise click.UsageError("--denoise-prior needs --face-prior")
    from facecore.training.distributed import cleanup, init_distributed
    from facecore.training.face_pack import FaceTrainingSet

    from .artifact import load_artifact, save_artifact
    from .models.decoders import FaceDecoder
    from .training.generator import GeneratorTrainConfig, train_generator

    cfg = GeneratorTrainConfig(budget=budget, hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                               utility_weight=utility_weight, genuine_weight=genuine_weight, genuine_margin=genuine_margin,
                               distortion_weight=distortion_weight, seed=seed, max_minutes=max_minutes,
                               prior_id_weight=prior_id_weight if face_prior else 0.0,
                               prior_pixel_weight=prior_pixel_weight if face_prior else 0.0)  # checked before the pack
    ctx = init_distributed(device)
    train = FaceTrainingSet.load(pack_file)
    rec = _matching_recognizer(recognizer, channel_order, mean, std, train)
    priors = []
    if face_prior:
        import torch

        from facecore.errors import IncompatibleError

        from .evaluation.denoise import SubspaceDenoiser
        from .evaluation.face_prior import load_face_prior
        from .models.decoders import PriorShadow

        den = SubspaceDenoiser.fit(train.embeddings, k=denoise_prior) if denoise_prior else None
    for name in face_prior:
        ae = load_face_prior(None if name == "default" else name)
        space = ae.config.get("condition", {}).get("fingerprint")
        if space != train.fingerprint:
            raise IncompatibleError(f"the face prior {name} renders prototypes of recognizer {space}, "
                                    f"the pack is embedded by {train.fingerprint}")
        priors.append(PriorShadow(ae, torch.from_numpy(train.images)))
        if den is not None:
            priors.append(PriorShadow(ae, torch.from_numpy(train.images), subspace=(den.mean, den.basis)))
    init = None
    if init_artifact:
        art = load_artifact(init_artifact)
        art.check_recognizer(rec.fingerprint)
        init = art.build_generator()
    gen, state = train_generator(train, FaceDecoder.from_pretrained(shadow), rec.to_torch(), cfg, ctx,
                                 checkpoint_dir or out.parent / f"{out.name}.ckpt", init=init, prior=priors)
    if ctx.is_main:
        save_artifact(gen.cpu(), out, _rec_info(train, rec),
                      {"images": len(train), "identities": int(len(set(train.labels.tolist()))), "shadow": shadow.name,
                       **({"face_prior": list(face_prior)} if face_prior else {}),
                       **({"denoise_prior": den.info} if denoise_prior else {}),
                       **({"init": str(init_artifact)} if init_artifact else {}), **state})
        click.echo(f"saved protector artifact to {out} after {_epochs_done(state)}")
    cleanup(ctx)


def _epochs_done(state: dict) -> str:
    part = state.get("partial_epoch")
    return f"{state['epoch']} epochs" + (f" and {part} of the next (--max-minutes reached)" if part else "")


def _matching_recognizer(recognizer, channel_order, mean, std, train):
    from facecore.errors import IncompatibleError

    rec = build_recognizer(recognizer, channel_order, mean, std)
    if rec.fingerprint != train.fingerprint:
        raise IncompatibleError(f"the pack was embedded by recognizer {train.fingerprint}, not {rec.name} ({rec.fingerprint})")
    return rec


def _rec_info(train, rec) -> dict:
    return {"name": rec.name if rec else None, "fingerprint": train.fingerprint, "dim": train.dim}


def _deployment_key_option(func):
    return click.option("--deployment-key", "-K", "deployment_key", default=None,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="Deployment key file (advface-cli keygen): keyed templates / probes.")(func)


def _stream(src: Path, dst: Path, model: str, key: str, backend: str, device: str, chunk: int, trust, require_signature: bool,
            deployment_key, kind: str, salt: str | None) -> None:
    from facecore.errors import DeploymentKeyError

    from ._streaming import stream_protect
    from .protector import Protector

    if salt is not None and deployment_key is None:
        raise DeploymentKeyError("--salt needs the deployment key: pass -K KEYFILE too")
    if salt == "-":
        salt = sys.stdin.readline()
    _refuse_overwriting(dst, {"deployment key": deployment_key})
    art = _load(model, trust, require_signature)
    protector = Protector(art, backend=backend, device=device, batch_size=chunk, key=deployment_key)
    if deployment_key is not None and dst.resolve().parent == deployment_key.resolve().parent:
        click.echo(f"warning: {dst} is written next to the deployment key; keep keys away from template stores", err=True)
    n = stream_protect(protector, src, dst, key=key, chunk=chunk, kind=kind, salt=salt)
    keyed = f" with deployment key {protector.key_id}" if protector.key_id else ""
    keyed += " and the user's salt" if salt is not None else ""
    click.echo(f"{'protected' if kind == 'templates' else 'prepared'} {n} {'embeddings' if kind == 'templates' else 'probes'}"
               f"{keyed} into {dst}")


def _stream_options(func):
    for option in reversed([
            click.argument("src", type=click.Path(dir_okay=False, path_type=Path)),
            click.argument("dst", type=click.Path(dir_okay=False, path_type=Path)),
            click.option("--model", "-m", default="fr128", show_default=True, help="Default artifact name or artifact folder."),
            click.option("--key", default="embeddings", show_default=True, help="Array name inside an .npz input."),
            click.option("--backend", default="auto", show_default=True),
            click.option("--device", default="cpu", show_default=True),
            click.option("--chunk", default=65536, show_default=True, type=click.IntRange(min=1),
                         help="Rows per chunk (memory bound)."),
            _deployment_key_option,
            click.option("--salt", default=None, metavar="HEX",
                         help="With -K: one user's salt (32 hex digits, advface-cli salt) for every row (1:1 verification); "
                              "'-' reads it from stdin (keeps it out of the process list)."),
            _trust_options]):
        func = option(func)
    return func


@main.command("protect")
@_stream_options
@friendly_errors
def protect_cmd(src: Path, dst: Path, model: str, key: str, backend: str, device: str, chunk: int, deployment_key, salt,
                trust, require_signature: bool) -> None:
    """Protect embeddings from SRC (.npy or .npz) into DST, streaming in chunks (other .npz members are kept)."""
    _stream(src, dst, model, key, backend, device, chunk, trust, require_signature, deployment_key, "templates", salt)


@main.command("prepare-probe")
@_stream_options
@friendly_errors
def prepare_probe_cmd(src: Path, dst: Path, model: str, key: str, backend: str, device: str, chunk: int, deployment_key,
                      salt, trust, require_signature: bool) -> None:
    """Map clean probe embeddings from SRC into the deployment key's space (DST), for cosine matching against keyed templates
    (with --salt: the claimed user's space)."""
    _stream(src, dst, model, key, backend, device, chunk, trust, require_signature, deployment_key, "probes", salt)


@main.command()
@click.argument("keyfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "-m", default="fr128", show_default=True, help="Protector (default name or folder) the key is for.")
@click.option("--buckets", "-b", type=int, default=1, show_default=True,
              help="Spread a 1:N gallery's templates over this many keyed buckets, one secret rotation each "
                   "(64 holds the alignment attack at chance on LFW-sized stores; see README).")
@_trust_options
@friendly_errors
def keygen(keyfile: Path, model: str, buckets: int, trust, require_signature: bool) -> None:
    """Write a new random deployment key for MODEL to KEYFILE (mode 0600; an existing file is never overwritten)."""
    from .keys import DeploymentKey

    art = _load(model, trust, require_signature)
    key = DeploymentKey.generate(art.protector_id, buckets)
    key.save(keyfile)
    spread = f" with {buckets} buckets" if buckets > 1 else ""
    click.echo(f"wrote deployment key {key.key_id}{spread} for protector {art.protector_id} ({art.directory.name}) to "
               f"{keyfile}; keep it away from the template store: whoever holds it can undo the keyed layer")


@main.command()
def salt() -> None:
    """Print a new random user salt (32 hex digits) for 1:1 verification with --salt; give it to the user, never store
    it with the templates."""
    from .keys import new_salt

    click.echo(new_salt().hex())


@main.command("export-onnx")
@click.argument("artifact")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@_deployment_key_option
@click.option("--probe", is_flag=True, help="With --deployment-key: write the probe graph (z -> R z) instead.")
@click.option("--fresh-noise", type=click.FloatRange(0.0, 1.0), default=None,
              help="With --deployment-key: fresh noise of this relative size in the template graph, drawn on every run "
                   "[default: as a bucketed Gallery, 0.15*sqrt(D/128) with a bucketed key, else 0].")
@friendly_errors
def export_onnx(artifact: str, out: Path, precision: str, deployment_key, probe: bool, fresh_noise) -> None:
    """Write the protection graph of ARTIFACT as ONNX (dynamic batch; float32 I/O); keyed with --deployment-key
    (the graph then holds the key's rotation: protect the file like the key). A bucketed key's graph takes a second
    input, `buckets` (int64 per row, DeploymentKey.bucket(ids)); its --probe graph prepares every bucket (batch, K, D).
    Per-user salts are per request and stay outside the graph: multiply the unkeyed graph's output by
    DeploymentKey.salted_rotation(salt, dim).T. A bucketed key's template graph adds fresh noise by default, drawn by the
    runtime on every run (--fresh-noise 0: none, a deterministic graph)."""
    import numpy as np

    from facecore.errors import DataError, InvalidInputError

    from ._onnx_export import generator_to_onnx, probe_to_onnx
    from .artifact import load_artifact
    from .keys import DeploymentKey
    from .protector import default_fresh_noise

    from facecore.tempfiles import describe_os_error, remove_stale, temp_path, terminate_as_interrupt

    art = load_artifact(artifact)
    _refuse_overwriting(out, {"deployment key": deployment_key,
                              **{f"artifact's file {p.name}": p for p in art.directory.iterdir()}})
    rotation = None
    if deployment_key is not None:
        dkey = DeploymentKey.load(deployment_key)
        dkey.check_protector(art.protector_id, f" ({art.directory.name})")
        rotation = (np.stack([dkey.bucket_rotation(b, art.dim) for b in range(dkey.buckets)]) if dkey.buckets > 1
                    else dkey.rotation(art.dim))
    elif probe:
        raise InvalidInputError("--probe needs --deployment-key (without a key, probes are used as they are)")
    if fresh_noise and (rotation is None or probe):
        raise InvalidInputError("--fresh-noise goes into a keyed template graph: pass --deployment-key, without --probe")
    if fresh_noise is None:
        fresh_noise = default_fresh_noise(art.dim) if rotation is not None and dkey.buckets > 1 and not probe else 0.0
    model = (probe_to_onnx(rotation) if probe
             else generator_to_onnx(art.state, art.config, precision, rotation, fresh_noise))
    remove_stale(out)
    tmp = temp_path(out)
    try:
        with terminate_as_interrupt():
            if rotation is not None:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the key's rotation
                with os.fdopen(fd, "wb") as fh:
                    fh.write(model.SerializeToString())
            else:
                tmp.write_bytes(model.SerializeToString())
            os.replace(tmp, out)
    except OSError as exc:  # a missing folder, a full disk: name the output, not the temp file
        raise DataError(describe_os_error(exc, str(out))) from exc
    finally:
        tmp.unlink(missing_ok=True)
    what = "probe" if probe else precision
    keyed = f" keyed with deployment key {dkey.key_id} (file mode 0600)" if rotation is not None else ""
    if rotation is not None and dkey.buckets > 1:
        keyed += f"; {dkey.buckets} buckets: " + ("output (batch, K, D)" if probe else "second input 'buckets' = key.bucket(ids)")
    if fresh_noise:
        keyed += f"; fresh noise {fresh_noise:g} drawn on every run"
    click.echo(f"wrote {what} ONNX for {art.dim}-d embeddings{keyed} to {out}")


@main.command("export-trt")
@click.argument("artifact")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Engine file; its sidecar goes to OUT.json.")
@click.option("--min-batch", default=1, show_default=True)
@click.option("--opt-batch", default=1024, show_default=True, help="Batch size TensorRT tunes for.")
@click.option("--max-batch", default=65536, show_default=True, help="Largest batch per call (larger inputs are chunked).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16 compiles the fp16 ONNX graph (float32 inputs/outputs) as a strongly typed network.")
@click.option("--workspace-mb", default=1024, show_default=True, help="TensorRT workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache file to reuse and update (faster rebuilds).")
@click.option("--device", default="cuda", show_default=True, help="cuda or cuda:N.")
@friendly_errors
def export_trt(artifact: str, out: Path, min_batch: int, opt_batch: int, max_batch: int, precision: str, workspace_mb: int,
               timing_cache, device: str) -> None:
    """Compile ARTIFACT into a TensorRT engine (dynamic batch, one optimisation profile) with a JSON sidecar."""
    from ._tensorrt_build import build_engine, check_batches, cuda_index, require_tensorrt
    from .artifact import load_artifact

    check_batches(min_batch, opt_batch, max_batch)
    cuda_index(device)
    require_tensorrt()  # before any work: one line naming what this machine lacks
    meta = build_engine(load_artifact(artifact), out, min_batch, opt_batch, max_batch, precision, workspace_mb,
                        timing_cache, device)
    click.echo(f"wrote {precision} TensorRT {meta['tensorrt_version']} engine for {meta['gpu']['name']} "
               f"(batch {min_batch}..{max_batch}) to {out}")


@main.command()
@click.argument("artifact")
@_trust_options
@friendly_errors
def info(artifact: str, trust, require_signature: bool) -> None:
    """Show an artifact's signer, verification and configuration (checksums, signature, ONNX graph and config verified)."""
    import json

    art = _load(artifact, trust, require_signature)
    cfg = {k: v for k, v in art.config.items() if k != "training"}
    training = art.config.get("training", {})
    cfg["training"] = {k: v for k, v in training.items() if k != "history"}
    click.echo(f"artifact: {art.directory}")
    click.echo(f"signature: {art.signature.describe()}")
    click.echo("verified: checksums, config ranges, weights, ONNX graph == weights, noise budget on the probe set")
    click.echo(json.dumps(cfg, indent=2, sort_keys=True))


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="ed25519 private key (PEM); keep it outside the repository.")
@click.option("--signer", default=None, help="Name recorded as the signer (default: the key file's name).")
@friendly_errors
def sign(artifact: Path, key: Path, signer) -> None:
    """Sign ARTIFACT's checksum manifest (signature.json) after verifying the artifact; see README, 'Signed artifacts'."""
    import warnings

    from facecore.errors import UnsignedArtifactWarning
    from facecore.signing import check_signature, public_key_raw, sign_artifact

    from .artifact import load_artifact

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsignedArtifactWarning)
        load_artifact(artifact, trust=(str(key),))  # never sign something that does not verify
    record = sign_artifact(artifact, key, signer or key.stem)
    status = check_signature(artifact, {record["signer"]: public_key_raw(str(key))})
    click.echo(f"signed {artifact} as {record['signer']!r} (ed25519 key {record['key_id']}); {status.describe()}")


@main.command()
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--recognizer", "-r", type=click.Choice(["fr128", "fr512"]), default="fr128", show_default=True)
@click.option("--victims", default=300, show_default=True, help="Number of victims attacked.")
@_originals_option
@friendly_errors
def demo(out: Path, recognizer: str, victims: int, originals: bool | None) -> None:
    """The end-to-end main job on LFW: embed, protect, verify, attack, report (needs $FACEPRIV_SHARED)."""
    import torch

    from facecore.paths import shared_root

    from .demo import run_demo

    shared_root()  # one clear line when the data is not configured
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run_demo(out, recognizer, victims, originals=originals)


def _epochs(value: str, name: str) -> tuple[int, int]:
    from facecore.errors import InvalidInputError

    try:
        pix, ident = (int(v) for v in value.split("+"))
    except ValueError:
        raise InvalidInputError(f"{name} must look like PIXEL+IDENTITY epochs, e.g. 10+3, got {value!r}") from None
    return pix, ident


@main.command()
@click.option("--recognizer", "-r", default="fr128", show_default=True, help="Protected recognizer (fr128, fr512, ...).")
@click.option("--evaluator", default=None, help="Independent recognizer judging type II success (default: the other shared one).")
@click.option("--methods", default=None, help="Comma-separated methods (default: all; 'none' always runs).")
@click.option("--artifact", default=None, help="AdvFace generator artifact (default: the shipped one named like the recognizer).")
@click.option("--shadow", default=None, help="Shadow decoder folder for advface-pgd (default: from the artifact's training record).")
@click.option("--curve-artifact", multiple=True, help="More AdvFace artifacts (other budgets) for the privacy-utility curve.")
@click.option("--quick", is_flag=True, help="CI-sized smoke run: few faces, few victims, short training.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--attacker-epochs", default=None, help="Non-adaptive attacker: PIXEL+IDENTITY epochs [default 10+3; quick 3+1].")
@click.option("--adaptive-epochs", default=None, help="Adaptive attackers (warm start): PIXEL+IDENTITY epochs [default 2+1; quick 1+0].")
@click.option("--adaptive-max-epochs", type=click.IntRange(min=0), default=None,
              help="Adaptive attackers train until early stopping on held-out attacker identities, at most this many "
                   "epochs in all [default 20; quick 3]; 0 = the fixed --adaptive-epochs instead.")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Epochs without improvement of the held-out loss before an adaptive attacker stops [default 2].")
@click.option("--no-face-prior", is_flag=True, help="Skip (e), the face-prior attacker (VIGFace face autoencoder).")
@click.option("--curve-budgets", default=None, help="Comma-separated gaussian budgets of the privacy-utility curve "
                                                    "[default 0.25,0.5,0.8,1.2,1.6]; 'none' for no curve points.")
@click.option("--max-victims", type=int, default=None, help="Cap the number of victims (default: all of folds 9-10).")
@click.option("--cache-dir", default=None, help="Where trained attackers are cached (default: $FACEPRIV_CACHE/benchmark).")
@click.option("--out", "-o", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="Device for attacker training (cpu, cuda).")
@_originals_option
@friendly_errors
def benchmark(recognizer, evaluator, methods, artifact, shadow, curve_artifact, quick, seed, attacker_epochs, adaptive_epochs,
              adaptive_max_epochs, patience, no_face_prior, curve_budgets, max_victims, cache_dir, out, device,
              originals) -> None:
    """Compare template-protection methods on LFW: utility, reconstruction and re-identification attacks, storage, cost."""
    import dataclasses
    import shlex
    import sys

    from .evaluation.harness import DEFAULT_METHODS, BenchmarkConfig, run_benchmark
    from .evaluation.report import write_report

    kw = dict(recognizer=recognizer, evaluator=evaluator, artifact=artifact, shadow=shadow, seed=seed,
              curve_artifacts=tuple(curve_artifact), cache_dir=cache_dir, device=device,
              methods=tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else DEFAULT_METHODS)
    if max_victims is not None:
        kw["max_victims"] = max_victims
    if no_face_prior:
        kw["face_prior"] = False
    if curve_budgets is not None:
        try:
            kw["curve_budgets"] = () if curve_budgets.strip() == "none" else tuple(float(b) for b in curve_budgets.split(","))
        except ValueError:
            raise click.BadParameter(f"expected comma-separated numbers or 'none', got {curve_budgets!r}",
                                     param_hint="--curve-budgets") from None
    cfg = BenchmarkConfig.quick_preset(**kw) if quick else BenchmarkConfig(**kw)
    changes = {}
    if attacker_epochs:
        changes["pixel_epochs"], changes["id_epochs"] = _epochs(attacker_epochs, "--attacker-epochs")
    if adaptive_epochs:
        changes["adaptive_pixel_epochs"], changes["adaptive_id_epochs"] = _epochs(adaptive_epochs, "--adaptive-epochs")
    if adaptive_max_epochs is not None:
        changes["adaptive_max_epochs"] = adaptive_max_epochs
    if patience is not None:
        changes["patience"] = patience
    cfg.attacker = dataclasses.replace(cfg.attacker, **changes)
    result, pictures = run_benchmark(cfg)
    result = {"command": shlex.join(["advface-cli", *sys.argv[1:]]), **result}
    paths = write_report(result, pictures, out, f"benchmark_{recognizer}{'_quick' if quick else ''}", originals)
    click.echo((out / paths["md"].name).read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
