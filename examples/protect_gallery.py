"""From aligned face crops to a protected gallery, then verify a clean probe against it.

    FACEPRIV_SHARED=/path/to/shared python examples/protect_gallery.py [--recognizer fr128|fr512]

Enrols the first LFW image of a few people, stores only AdvFace-protected templates, and verifies
a *different* clean photo of each person (and of an impostor) against the stored templates.
"""

from __future__ import annotations

import sys

from _lfw_pairs import THRESHOLD, setup
from advface_sdk import Protector
from facecore.metrics import cosine_scores


def main() -> int:
    args, rec, names, enrol, probes = setup(__doc__.splitlines()[0])
    protector = Protector(args.recognizer, recognizer_fingerprint=rec.fingerprint)  # refuses other recognizers
    gallery = protector.protect(enrol)  # store this, never `enrol`

    print(f"{'person':<18} {'genuine (raw)':>13} {'genuine (protected)':>20} {'impostor (protected)':>21}")
    for k, name in enumerate(names):
        other = (k + 1) % len(names)
        raw = cosine_scores(enrol[k:k + 1], probes[k:k + 1])[0]
        gen = cosine_scores(gallery[k:k + 1], probes[k:k + 1])[0]
        imp = cosine_scores(gallery[other:other + 1], probes[k:k + 1])[0]
        print(f"{name:<18} {raw:>13.3f} {gen:>20.3f} {imp:>21.3f}   accept={gen > THRESHOLD} / {imp > THRESHOLD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
