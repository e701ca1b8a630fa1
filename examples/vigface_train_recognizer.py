"""Train a face recognizer on virtual identities only, with the recipe of VIGFace's train-on-synthetic
benchmark (augmentation matters for synthetic faces: benchmarks/results/vigface_synthesis.md), and check
it on real faces it never saw (AT&T, when FACEPRIV_SHARED points at the shared data).

    python examples/vigface_train_recognizer.py                       # 300 identities x 10, 200 steps
    python examples/vigface_train_recognizer.py --steps 400 --identities 1000 --per-identity 4
    python examples/vigface_train_recognizer.py --identities 16 --per-identity 4 --steps 30 --batch-size 16  # a quick look

Without a GPU a step of 128 images takes seconds; --batch-size makes small runs possible (the set needs at least
one batch of images).
"""

from __future__ import annotations

import os
import sys

import click
import numpy as np
import torch

from facecore.errors import FacePrivacyError
from facecore.metrics import cosine_scores, kfold_accuracy
from vigface_sdk import load_pipeline
from vigface_sdk.training.recognizer import RecognizerTrainConfig, embed_images, train_recognizer


def load_att():
    """The AT&T faces as a training set: 64x64 uint8 RGB images and their identity labels."""
    from facecore.data import IdentityFolderDataset
    from facecore.paths import shared_path
    from facecore.recognizers import create_recognizer
    from facecore.training.face_pack import FaceTrainingSet

    return FaceTrainingSet.build(IdentityFolderDataset.from_folder(shared_path("data", "att_faces")), create_recognizer("fr128"), 64)


def att_accuracy(net: torch.nn.Module, att) -> float:
    """10-fold verification accuracy on AT&T: every genuine pair and as many impostor pairs."""
    e = embed_images(net, att.images)
    i, j = np.triu_indices(len(att), 1)
    same = att.labels[i] == att.labels[j]
    pick = np.r_[np.flatnonzero(same), np.random.default_rng(0).choice(np.flatnonzero(~same), same.sum(), replace=False)]
    return kfold_accuracy(cosine_scores(e[i[pick]], e[j[pick]]), same[pick], np.arange(len(pick)) % 10).accuracy


@click.command()
@click.option("--identities", default=300, show_default=True)
@click.option("--per-identity", default=10, show_default=True)
@click.option("--steps", default=200, show_default=True, help="SGD steps of --batch-size images.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True,
              help="Images per step (at most identities x per-identity).")
@click.option("--no-augment", is_flag=True, help="Mirroring only (to see what augmentation buys).")
def main(identities: int, per_identity: int, steps: int, batch_size: int, no_augment: bool) -> None:
    try:
        run(identities, per_identity, steps, batch_size, no_augment)
    except FacePrivacyError as exc:  # shared data missing, a bad training setting, ...
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run(identities: int, per_identity: int, steps: int, batch_size: int, no_augment: bool) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))  # at most 2, fewer with OMP_NUM_THREADS
    # checked before minutes of sampling: the settings, and the real faces the recognizer is judged on
    config = RecognizerTrainConfig(steps=steps, batch_size=batch_size, augment=not no_augment)
    if identities < 2 or identities * per_identity < batch_size:
        raise click.UsageError(f"need at least 2 identities and one batch of images: {identities} x {per_identity} "
                               f"< --batch-size {batch_size}")
    att = load_att() if os.environ.get("FACEPRIV_SHARED") else None
    # 1. a synthetic training set: virtual identities (none close to a real LFW person), several faces each
    pipe = load_pipeline()
    protos = pipe.virtual_prototypes(identities, seed=0)
    images = pipe(protos, per_identity, seed=0, progress=True)
    labels = np.repeat(np.arange(identities), per_identity)
    # 2. the recognizer, from scratch, on synthetic faces only
    net, info = train_recognizer(images, labels, config)
    click.echo(f"trained {info['epochs']:.1f} epochs in {info['minutes']:.1f} min, loss {info['first_loss']:.2f} -> "
               f"{info['final_loss']:.2f}")
    # 3. judged on real people
    if att is not None:
        click.echo(f"AT&T verification accuracy (real faces, never seen): {100 * att_accuracy(net, att):.2f} %")
    else:
        click.echo("set FACEPRIV_SHARED to check the recognizer on real AT&T faces")


if __name__ == "__main__":
    main()
