"""Protected 1:N gallery: enroll one LFW photo per person as AdvFace templates, identify other photos.

    FACEPRIV_SHARED=/path/to/shared python examples/gallery_search.py [--store faiss|milvus] [--index flat|hnsw|ivf]
        [--uri http://host:19530 [--collection NAME]] [--key deploy.key] [--gallery DIR]

Builds a FAISS gallery folder (or a Milvus Lite file inside it, or a collection on a Milvus server with
--uri), enrolls the first image of people with at least 5 photos, searches their other photos with clean
probes, and prints rank-1 accuracy and a few top-3 answers. The gallery refuses a foreign recognizer.
With --key (a deployment key from `advface-cli keygen KEY`), the gallery is keyed: it stores keyed templates,
prepares probes with the key, and refuses to open without it. A bucketed key (`advface-cli keygen KEY --buckets 64`,
the 1:N mode that resists the alignment attack) keeps each template in its id's bucket, searches every bucket,
and adds fresh noise to every template it enrolls (``Gallery.fresh_noise``, 0.15 for fr128: leaked enrolment
images then cannot find their templates by exact cosines; --fresh-noise 0 turns it off).
Without --gallery the gallery is temporary: `Gallery.delete` removes it at the end, its templates included (on a
Milvus server they would otherwise outlive the folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from advface_sdk import Gallery
from facecore.data import IdentityFolderDataset
from facecore.embeddings import extract_embeddings
from facecore.errors import FacePrivacyError, IncompatibleError, KeyMismatchError
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="faiss", choices=["faiss", "milvus"])
    ap.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"])
    ap.add_argument("--key", type=Path, default=None, help="deployment key file: a keyed gallery")
    ap.add_argument("--fresh-noise", type=float, default=None,
                    help="keyed galleries: fresh noise per template (default: 0.15 with a bucketed key, else 0)")
    ap.add_argument("--uri", default=None, help="Milvus server URI (default: Milvus Lite file in the gallery folder)")
    ap.add_argument("--collection", default=None, help="Milvus collection (default: advface_gallery)")
    ap.add_argument("--gallery", type=Path, default=None, help="gallery folder (default: a temporary one)")
    args = ap.parse_args()
    try:
        return _main(args)
    except FacePrivacyError as exc:  # a missing data folder or key, a collection of another gallery, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args) -> int:
    root = shared_path("data", "lfw", "aligned112")
    rec = create_recognizer("fr128")
    data = IdentityFolderDataset.from_folder(root, min_images=5)
    emb = extract_embeddings(rec, data)  # cached per image in $FACEPRIV_CACHE
    if args.gallery is not None:
        return _run(args, args.gallery, rec, data, emb)
    with tempfile.TemporaryDirectory() as tmp:  # removed when the run ends, however it ends
        folder = Path(tmp) / "gallery"
        try:
            return _run(args, folder, rec, data, emb)
        finally:
            if folder.exists():
                print(f"deleted the temporary gallery ({Gallery.delete(folder)} templates)")


def _run(args, folder: Path, rec, data, emb: np.ndarray) -> int:
    first = np.unique(data.labels, return_index=True)[1]
    probes = np.setdiff1d(np.arange(len(data)), first)
    names = np.asarray(data.identities)
    options = {"index": args.index, **({"uri": args.uri} if args.uri else {}),
               **({"collection": args.collection} if args.collection else {})}
    with Gallery.create(folder, protector="fr128", store=args.store, key=args.key, fresh_noise=args.fresh_noise,
                        **options) as gallery:
        gallery.enroll(names[data.labels[first]], emb[first], fingerprint=rec.fingerprint)  # stores protected templates
        hits = gallery.search(emb[probes], k=3, fingerprint=rec.fingerprint)  # clean probes
        truth = names[data.labels[probes]]
        noise = f", fresh noise {gallery.fresh_noise:g}" if gallery.fresh_noise else ""
        print(f"{len(gallery)} people enrolled in {folder} ({args.store}/{args.index}{noise}); "
              f"rank-1 over {len(probes)} other photos: {100 * (hits.ids[:, 0] == truth).mean():.2f} %")
        for row in range(0, len(probes), len(probes) // 4):
            print(f"  {data.relpaths[probes[row]]:<40} -> " + ", ".join(
                f"{i} ({s:.2f})" for i, s in zip(hits.ids[row], hits.scores[row])))
        try:
            gallery.search(emb[probes[:1]], fingerprint="another-recognizer")
        except IncompatibleError as exc:
            print(f"refused as expected: {exc}")
    if args.key is not None:
        try:
            Gallery.open(folder)  # without its key
        except KeyMismatchError as exc:
            print(f"refused as expected: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
