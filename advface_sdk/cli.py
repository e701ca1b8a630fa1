"""``advface-cli``: embed faces, train and export AdvFace protectors, protect embeddings, benchmark."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from facecore import __version__
from facecore._cli import build_recognizer, friendly_errors, recognizer_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advface-cli")
def main() -> None:
    """AdvFace: store adversarial face embeddings that resist reconstruction."""


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

    rec = build_recognizer(recognizer, channel_order, mean, std)
    ds = IdentityFolderDataset.from_folder(dataset, size=rec.preprocessing.input_size)
    arrays = {"embeddings": extract_embeddings(rec, ds), "relpaths": np.asarray(ds.relpaths),
              "labels": ds.labels, "identities": np.asarray(ds.identities),
              "fingerprint": np.asarray(rec.fingerprint)}
    if flip:
        arrays["embeddings_flip"] = extract_embeddings(rec, ds, flip=True)
    atomic_save_npz(out, **arrays)
    click.echo(f"wrote {len(ds)} embeddings of dim {rec.dim} ({len(ds.identities)} identities) to {out}")
