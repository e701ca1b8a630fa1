"""Detect, align and embed raw photos with an InsightFace model pack; print their cosine similarity matrix.

    python examples/embed_raw_photos.py --pack PACK_DIR photo1.jpg photo2.jpg ...

PACK_DIR holds a detector and a recognizer ONNX (e.g. scrfd_500m_bnkps.onnx and fr_feature.onnx);
the recognizer's preprocessing is recognised for the shared built-ins, else pass --channel-order/--mean/--std.
With $FACEPRIV_SHARED set and no arguments, it builds such a pack from the shared models (symlinks
in a temporary folder) and embeds 3 LFW photos each of 2 people.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from facecore.errors import FacePrivacyError
from facecore.paths import ENV_VAR, shared_path, shared_root
from facecore.recognizers import Preprocessing
from facepriv_plugins.insightface_adapter import InsightFacePack

DEMO_MODELS = ("models/scrfd/scrfd_500m_bnkps.onnx", "models/fr512_faceplugin/fr_feature.onnx")
DEMO_PEOPLE = ("Colin_Powell", "Serena_Williams")


def demo_inputs(tmp: Path) -> tuple[Path, list[Path]]:
    """A pack of symlinks to the shared models and 3 raw LFW photos of each demo person (``DataError`` if the
    shared folder lacks them)."""
    for rel in DEMO_MODELS:
        (tmp / Path(rel).name).symlink_to(shared_path(*Path(rel).parts))
    return tmp, [p for name in DEMO_PEOPLE
                 for p in sorted(shared_path("data", "lfw", "raw250", name).glob("*.jpg"))[:3]]


def similarity_table(names: list[str], embeddings: np.ndarray) -> str:
    """Cosine similarity matrix as aligned text."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sim = unit @ unit.T
    labels = [f"[{i}] {n}" for i, n in enumerate(names)]
    width = max(map(len, labels))
    rows = [" " * width + "".join(f"{f'[{i}]':>7}" for i in range(len(names)))]
    rows += [f"{label:<{width}}" + "".join(f"{v:7.3f}" for v in row) for label, row in zip(labels, sim)]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", nargs="*", type=Path, help="raw photos (any size; the main face is used)")
    parser.add_argument("--pack", type=Path, help="folder with a detector and a recognizer .onnx")
    parser.add_argument("--det-thresh", type=float, default=0.5, help="detection score threshold")
    parser.add_argument("--channel-order", choices=("RGB", "BGR"), help="recognizer input order (with --mean/--std)")
    parser.add_argument("--mean", type=float, default=127.5, help="recognizer input (x - mean) / std")
    parser.add_argument("--std", type=float, default=128.0, help="recognizer input (x - mean) / std")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if (args.pack is None) != (not args.photos):
            parser.error("pass both --pack PACK_DIR and at least one photo")
        try:
            if args.pack is None:  # the demo: shared models and LFW photos
                if shared_root(required=False) is None:
                    print(f"error: pass --pack PACK_DIR and photos, or set {ENV_VAR} to run the demo on shared LFW "
                          "photos", file=sys.stderr)
                    return 2
                args.pack, args.photos = demo_inputs(Path(tmp))
            pre = Preprocessing(args.channel_order, args.mean, args.std) if args.channel_order else None
            pack = InsightFacePack(args.pack, preprocessing=pre, det_thresh=args.det_thresh)
            embeddings = pack.embed_photos(args.photos)
        except FacePrivacyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"{pack.name}: {len(args.photos)} photos, {pack.dim}-d embeddings, cosine similarity:")
    print(similarity_table([p.name for p in args.photos], embeddings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
