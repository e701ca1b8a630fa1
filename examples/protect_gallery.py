"""From aligned face crops to a protected gallery, then verify a clean probe against it.

    FACEPRIV_SHARED=/path/to/shared python examples/protect_gallery.py [--recognizer fr128|fr512]

Enrols the first LFW image of a few people, stores only AdvFace-protected templates, and verifies
a *different* clean photo of each person (and of an impostor) against the stored templates.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from advface_sdk import Protector
from facecore.data import IdentityFolderDataset
from facecore.errors import FacePrivacyError
from facecore.metrics import cosine_scores
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer

THRESHOLD = 0.28  # mean best LFW threshold of both shared recognizers (see benchmarks/results/lfw_verification.md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recognizer", default="fr128", choices=["fr128", "fr512"])
    ap.add_argument("--people", nargs="+", default=["Colin_Powell", "Serena_Williams", "Tony_Blair", "Hugo_Chavez"])
    args = ap.parse_args()
    try:
        root = shared_path("data", "lfw", "aligned112")
    except FacePrivacyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rec = create_recognizer(args.recognizer)
    data = IdentityFolderDataset.from_folder(root).subset(args.people)
    first = [int(np.flatnonzero(data.labels == k)[0]) for k in range(len(data.identities))]
    second = [int(np.flatnonzero(data.labels == k)[1]) for k in range(len(data.identities))]

    enrol = rec.embed(np.stack([data.load(i) for i in first]))
    protector = Protector(args.recognizer, recognizer_fingerprint=rec.fingerprint)  # refuses other recognizers
    gallery = protector.protect(enrol)  # store this, never `enrol`

    probes = rec.embed(np.stack([data.load(i) for i in second]))
    print(f"{'person':<18} {'genuine (raw)':>13} {'genuine (protected)':>20} {'impostor (protected)':>21}")
    for k, name in enumerate(data.identities):
        other = (k + 1) % len(first)
        raw = cosine_scores(enrol[k:k + 1], probes[k:k + 1])[0]
        gen = cosine_scores(gallery[k:k + 1], probes[k:k + 1])[0]
        imp = cosine_scores(gallery[other:other + 1], probes[k:k + 1])[0]
        print(f"{name:<18} {raw:>13.3f} {gen:>20.3f} {imp:>21.3f}   accept={gen > THRESHOLD} / {imp > THRESHOLD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
