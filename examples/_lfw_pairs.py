"""Shared by the 1:1 examples: two LFW photos of each named person, embedded by a shared recognizer."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from facecore.data import IdentityFolderDataset
from facecore.errors import FacePrivacyError, InvalidInputError
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer

THRESHOLD = 0.28  # mean best LFW threshold of both shared recognizers (see benchmarks/results/lfw_verification.md)
PEOPLE = ["Colin_Powell", "Serena_Williams", "Tony_Blair", "Hugo_Chavez"]


def setup(description: str):
    """Parse ``--recognizer`` / ``--people`` and return ``(args, *two_photos_each(...))``; without the shared data
    (or with a bad name) print one ``error:`` line and exit with status 2."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--recognizer", default="fr128", choices=["fr128", "fr512"])
    ap.add_argument("--people", nargs="+", default=PEOPLE)
    args = ap.parse_args()
    try:
        return (args, *two_photos_each(args.recognizer, args.people))
    except FacePrivacyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def two_photos_each(recognizer: str, people: list[str]):
    """``(recognizer, names, first-photo embeddings, second-photo embeddings)``; raises ``FacePrivacyError``
    (with what to set) when the shared data is missing."""
    data = IdentityFolderDataset.from_folder(shared_path("data", "lfw", "aligned112")).subset(people)
    rec = create_recognizer(recognizer)
    idx = [np.flatnonzero(data.labels == k)[:2] for k in range(len(data.identities))]
    if any(len(i) < 2 for i in idx):
        raise InvalidInputError("every person named needs at least two LFW photos (one enrolled, one probe)")
    first, second = (rec.embed(np.stack([data.load(int(i[j])) for i in idx])) for j in (0, 1))
    return rec, list(data.identities), first, second
