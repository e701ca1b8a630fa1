"""``advface-cli gallery …``: enroll, search, inspect and edit a protected gallery from ``.npz`` files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from facecore._cli import friendly_errors
from facecore.embeddings import ZIP_ERRORS, read_npz
from facecore.errors import DataError, IncompatibleError, InvalidInputError

from .._streaming import _npz_member

ID_KEYS = ("ids", "relpaths")


def _read_meta(path: Path, ids_key: str | None) -> tuple[list[str], str | None]:
    """Ids (from ``ids_key`` or the first of :data:`ID_KEYS` present) and the recognizer fingerprint of an ``.npz``."""
    if path.suffix != ".npz" or not path.is_file():
        raise DataError(f"{path}: expected an .npz file of embeddings and ids (as written by `advface-cli embed`)")
    with read_npz(path) as z:
        key = ids_key or next((k for k in ID_KEYS if k in z.files), None)
        if key not in z.files:
            raise DataError(f"{path} has no ids array {key or ID_KEYS} (arrays: {z.files}); use --ids")
        ids = [str(i) for i in z[key].tolist()]
        fingerprint = str(z["fingerprint"]) if "fingerprint" in z.files else None
    return ids, fingerprint


def _chunks(path: Path, key: str, chunk: int):
    """``(shape, iterator of row blocks)`` of array ``key`` of an ``.npz``, read ``chunk`` rows at a time; the member is
    checked whole first (its CRC, its length), so a damaged file is refused before any block is used."""
    zf, fh, shape, dtype = _npz_member(path, key)
    if len(shape) != 2:
        zf.close()
        raise DataError(f"{path}:{key} must be a 2-d (N, D) array, got shape {shape}")
    row = int(shape[1]) * dtype.itemsize
    try:
        size = 0
        with zf.open(f"{key}.npy") as whole:  # zipfile verifies the CRC at the member's end
            while block := whole.read(1 << 20):
                size += len(block)
    except ZIP_ERRORS as exc:
        zf.close()
        raise DataError(f"{path}:{key} is damaged ({exc}); nothing was read") from exc
    if size - fh.tell() < int(shape[0]) * row:
        zf.close()
        raise DataError(f"{path}:{key} is truncated: its header promises shape {shape} {dtype}")

    def blocks():
        with zf:
            for start in range(0, shape[0], chunk):
                n = min(chunk, shape[0] - start)
                yield start, np.frombuffer(fh.read(n * row), dtype).reshape(n, shape[1])
    return shape, blocks()


def _open(gallery: Path, uri: str | None, deployment_key: Path | None = None, model: str | None = None, **options):
    from .gallery import Gallery

    options = {k: v for k, v in {"uri": uri, **options}.items() if v is not None}
    return Gallery.open(gallery, protector=model, key=deployment_key, **options)


@click.group()
def gallery() -> None:
    """Protected galleries: enroll embeddings as AdvFace templates, search them 1:N."""


_uri_option = click.option("--uri", default=None,
                           help="Milvus URI, e.g. http://host:19530 (token from $MILVUS_TOKEN); default: the recorded one.")
_key_option = click.option("--deployment-key", "-K", "deployment_key", default=None,
                           type=click.Path(exists=False, dir_okay=False, path_type=Path),
                           help="Deployment key file (advface-cli keygen): a keyed gallery is created, and opened, only with it.")


@gallery.command()
@click.argument("gallery_dir", metavar="GALLERY", type=click.Path(file_okay=False, path_type=Path))
@click.argument("emb", metavar="EMB.npz", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", default="embeddings", show_default=True, help="Embeddings array inside EMB.npz.")
@click.option("--ids", "ids_key", default=None, help="Ids array inside EMB.npz [default: ids, else relpaths].")
@click.option("--model", "-m", default=None,
              help="Protector of a new gallery (artifact name or folder) [default: fr128]; for an existing gallery it must be "
                   "the recorded one.")
@click.option("--store", type=click.Choice(["faiss", "milvus"]), default=None, help="Store of a new gallery [default: faiss].")
@click.option("--index", type=click.Choice(["flat", "hnsw", "ivf"]), default=None,
              help="Index of a new gallery [default: flat]: flat = exact; hnsw, ivf (FAISS) = approximate.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF lists searched per probe, recorded in a new gallery [default: 32].")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="IVF lists of a new gallery [default: 4*sqrt(N) of the first commit; `gallery rebuild` retrains].")
@_uri_option
@click.option("--collection", default=None, help="Milvus collection of a new gallery [default: advface_gallery].")
@_key_option
@click.option("--fresh-noise", type=click.FloatRange(0.0, 1.0), default=None,
              help="Keyed galleries: relative size of the noise drawn afresh for every template, recorded in a new gallery "
                   "[default: 0.15*sqrt(D/128) with a bucketed key, else 0].")
@click.option("--chunk", default=65536, show_default=True, help="Rows per commit.")
@click.option("--skip-existing", is_flag=True, help="Skip ids already enrolled (resume an interrupted enroll).")
@friendly_errors
def enroll(gallery_dir: Path, emb: Path, key: str, ids_key, model, store, index, nprobe, nlist, uri, collection,
           deployment_key, fresh_noise, chunk: int, skip_existing: bool) -> None:
    """Protect the embeddings of EMB.npz and enroll them into GALLERY (created on first use); each chunk commits atomically.

    An existing gallery keeps its protector, key, store, index and fresh noise: -m, --store, --index, --nlist, --collection
    and --fresh-noise must then be the recorded ones (or left out)."""
    from tqdm.auto import tqdm

    from .gallery import MANIFEST, Gallery

    ids, fingerprint = _read_meta(emb, ids_key)
    shape, blocks = _chunks(emb, key, max(1, chunk))
    if shape[0] != len(ids):
        raise DataError(f"{emb}: {len(ids)} ids for {shape[0]} embeddings")
    if shape[0] == 0:
        raise DataError(f"{emb} holds no embeddings: nothing to enroll (no gallery was created or changed)")
    if (gallery_dir / MANIFEST).exists():
        g = _open(gallery_dir, uri, deployment_key, model, nprobe=nprobe)
        recorded = {"store": g.manifest["store"]["name"], **g.manifest["store"]["options"], "fresh_noise": g.fresh_noise}
        given = {"store": store, "index": index, "nlist": nlist, "collection": collection, "fresh_noise": fresh_noise}
        clash = {k: (v, recorded.get(k)) for k, v in given.items() if v is not None and v != recorded.get(k)}
        if clash:
            g.close()
            raise IncompatibleError(f"{gallery_dir} exists with " + ", ".join(f"{k} {old!r} (not {new!r})" for k, (new, old)
                                                                              in clash.items())
                                    + "; enroll into it without these options, or into a new gallery")
    else:
        options = {k: v for k, v in {"index": index, "uri": uri, "collection": collection, "nprobe": nprobe,
                                     "nlist": nlist}.items() if v is not None}
        g = Gallery.create(gallery_dir, protector=model or "fr128", store=store or "faiss", recognizer_fingerprint=fingerprint,
                           key=deployment_key, fresh_noise=fresh_noise, **options)
    added = 0
    with g, tqdm(total=shape[0], desc="enroll", unit="tmpl", file=sys.stderr, disable=None) as bar:
        for start, block in blocks:
            block_ids = ids[start:start + len(block)]
            keep = ~g.contains(block_ids) if skip_existing else np.ones(len(block), bool)
            if keep.any():
                added += g.enroll([i for i, k in zip(block_ids, keep) if k], block[keep], fingerprint=fingerprint)
            bar.update(len(block))
        total = len(g)
        advise = g.store.info().get("retrain_advised")
    click.echo(f"enrolled {added} templates into {gallery_dir} ({total} in total; protector {g.protector_id}"
               + (f", deployment key {g.key_id}" if g.key_id else "") + ")")
    if advise:
        click.echo(f"note: the IVF index was trained on far fewer templates; retrain it: advface-cli gallery rebuild {gallery_dir}",
                   err=True)


@gallery.command()
@click.argument("gallery_dir", metavar="GALLERY", type=click.Path(file_okay=False, path_type=Path))
@click.argument("probes", metavar="PROBES.npz", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-k", default=5, show_default=True, help="Matches per probe.")
@click.option("--key", default="embeddings", show_default=True, help="Embeddings array inside PROBES.npz.")
@click.option("--ids", "ids_key", default=None, help="Probe ids array [default: ids, else relpaths].")
@click.option("--batch", default=1024, show_default=True, help="Probes per search call.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write results to .tsv or .npz (atomic) instead of printing TSV.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF lists searched per probe [default: the recorded].")
@click.option("--consistency", type=click.Choice(["Strong", "Bounded", "Session", "Eventually"]), default=None,
              help="Milvus: consistency level of the searches [default: the recorded, Strong]; the others answer a server "
                   "without waiting for its time tick (~200 ms) but may miss templates committed in the last seconds.")
@_uri_option
@_key_option
@friendly_errors
def search(gallery_dir: Path, probes: Path, k: int, key: str, ids_key, batch: int, out, nprobe, consistency, uri,
           deployment_key) -> None:
    """Search each probe of PROBES.npz (clean embeddings) in GALLERY: TSV lines probe, rank, id, score."""
    import os

    from tqdm.auto import tqdm

    from facecore.embeddings import atomic_save_npz
    from facecore.tempfiles import describe_os_error, remove_stale, temp_path, terminate_as_interrupt

    from .gallery import Gallery

    if consistency is not None and (name := Gallery._manifest(gallery_dir)["store"]["name"]) != "milvus":
        raise InvalidInputError(f"--consistency applies to Milvus galleries; {gallery_dir} keeps its templates in {name}")
    probe_ids, fingerprint = _read_meta(probes, ids_key)
    shape, blocks = _chunks(probes, key, max(1, batch))
    if out is not None and out.suffix not in (".tsv", ".npz"):
        raise DataError(f"--out must end in .tsv or .npz, got {out}")
    if out is not None and out.exists() and os.path.samefile(out, probes):
        raise InvalidInputError(f"--out {out} is the probes file: write the results to a new file (the probes would be lost)")
    tmp = temp_path(out) if out is not None and out.suffix == ".tsv" else None
    sink = sys.stdout
    all_ids, all_scores = [], []
    try:
        with terminate_as_interrupt():  # SIGTERM too removes the partial .tsv
            if tmp:
                remove_stale(out)
                try:
                    sink = open(tmp, "w")
                except OSError as exc:
                    raise DataError(describe_os_error(exc, str(out))) from exc
            with _open(gallery_dir, uri, deployment_key, nprobe=nprobe, consistency=consistency) as g, tqdm(total=shape[0], desc="search", unit="probe", file=sys.stderr, disable=None) as bar:
                for start, block in blocks:
                    hits = g.search(block, k, fingerprint=fingerprint)
                    if out is not None and out.suffix == ".npz":
                        all_ids.append(hits.ids)
                        all_scores.append(hits.scores)
                    else:
                        sink.writelines(f"{probe_ids[start + r]}\t{c + 1}\t{hits.ids[r, c]}\t{hits.scores[r, c]:.6f}\n"
                                        for r in range(len(block)) for c in range(k) if hits.ids[r, c])
                    bar.update(len(block))
            if tmp:
                sink.close()
                os.replace(tmp, out)
            elif out is not None:
                atomic_save_npz(out, probe_ids=np.asarray(probe_ids), ids=np.concatenate(all_ids), scores=np.concatenate(all_scores))
    finally:
        if tmp:
            if sink is not sys.stdout:
                sink.close()
            tmp.unlink(missing_ok=True)
    if out is not None:
        click.echo(f"wrote top-{k} matches of {shape[0]} probes to {out}")


@gallery.command()
@click.argument("gallery_dir", metavar="GALLERY", type=click.Path(file_okay=False, path_type=Path))
@_uri_option
@_key_option
@friendly_errors
def info(gallery_dir: Path, uri, deployment_key) -> None:
    """Show GALLERY's protector, recognizer, key, store and size."""
    with _open(gallery_dir, uri, deployment_key) as g:
        click.echo(json.dumps(g.info(), indent=2))


@gallery.command()
@click.argument("gallery_dir", metavar="GALLERY", type=click.Path(file_okay=False, path_type=Path))
@click.argument("ids", nargs=-1)
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="More ids, one per line.")
@_uri_option
@_key_option
@friendly_errors
def remove(gallery_dir: Path, ids: tuple[str, ...], from_file, uri, deployment_key) -> None:
    """Remove templates by id from GALLERY."""
    try:
        listed = from_file.read_text().split() if from_file else []
    except UnicodeDecodeError as exc:
        raise DataError(f"{from_file} is not a text file of ids, one per line ({exc})") from None
    wanted = list(dict.fromkeys([*ids, *listed]))
    with _open(gallery_dir, uri, deployment_key) as g:
        n = g.remove(wanted) if wanted else 0
        total = len(g)
    click.echo(f"removed {n} of {len(wanted)} ids from {gallery_dir} ({total} left)")


@gallery.command()
@click.argument("gallery_dir", metavar="GALLERY", type=click.Path(file_okay=False, path_type=Path))
@_key_option
@friendly_errors
def rebuild(gallery_dir: Path, deployment_key) -> None:
    """Rebuild GALLERY's FAISS index from its committed templates (after a corrupt index file); an IVF index is
    retrained on all of them (after the gallery has grown)."""
    with _open(gallery_dir, None, deployment_key, rebuild_index=True) as g:
        extra = g.store.info()
        click.echo(f"rebuilt the index of {gallery_dir} ({len(g)} templates"
                   + (f"; IVF retrained: {extra['nlist']} lists" if extra.get("nlist") else "") + ")")


@gallery.command()
@click.argument("gallery_dir", metavar="GALLERY", type=click.Path(file_okay=False, path_type=Path))
@_uri_option
@click.option("--missing-ok", is_flag=True,
              help="Remove the folder also when the store's templates are already gone (collection dropped).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def delete(gallery_dir: Path, uri, missing_ok: bool, yes: bool) -> None:
    """Delete GALLERY: every template in its store (a Milvus collection, on a server too), then its folder.

    Needs no key; a store that holds another gallery is refused and nothing is deleted."""
    from .gallery import Gallery

    if not yes:
        click.confirm(f"delete the gallery {gallery_dir} and every template in it?", abort=True, err=True)
    n = Gallery.delete(gallery_dir, missing_ok=missing_ok, **({"uri": uri} if uri else {}))
    click.echo(f"deleted {gallery_dir} ({n} templates)")
