"""VIGFace stage 1 on LFW: train the identity space, check verification and separability.

Protocol: train on every LFW identity that appears in View-2 folds 1-5 or in no fold; evaluate
verification on the folds 6-10 pairs (each fold's threshold chosen on the other four folds) and on
all AT&T pairs; report how far the virtual prototypes sit from the real ones.

    export FACEPRIV_SHARED=/path/to/shared
    # head only on a frozen recognizer (cached embeddings; a few minutes on a CPU)
    python examples/vigface_train_space.py --recognizer fr512 --out runs/vigface_space_fr512
    # then fine-tune the recognizer for a few steps, starting from that head-only space
    python examples/vigface_train_space.py --recognizer fr512 --finetune --steps 40 --batch-size 16 \\
        --init-from runs/vigface_space_fr512/prototypes --out runs/vigface_space_fr512_ft \\
        --name lfw_fr512_arcface_finetune_from_head
    # a quick look: the 128-d recognizer, 200 of the training identities, 20 steps (the evaluation is unchanged)
    python examples/vigface_train_space.py --recognizer fr128 --identities 200 --steps 20 --out runs/space_quick \\
        --results runs/space_quick/results

Writes the space (prototypes/, backbone/) under --out and NAME.json/.md/.png under --results.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from facecore.data import IdentityFolderDataset, pair_indices, read_pairs
from facecore.embeddings import extract_embeddings
from facecore.errors import FacePrivacyError
from facecore.metrics import cosine_scores, verification_report
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer
from vigface_sdk.models.backbones import embed_dataset, load_backbone, recognizer_backbone
from vigface_sdk.models.prototypes import PrototypeStore
from vigface_sdk.evaluation.space_report import separability_report, write_report
from vigface_sdk.training.space import EmbeddingSet, SpaceTrainConfig, load_training_dataset, train_space


def pair_report(emb: np.ndarray, left: np.ndarray, right: np.ndarray, issame: np.ndarray, folds: np.ndarray) -> dict:
    return {**verification_report(cosine_scores(emb[left], emb[right]), issame, folds), "pairs": int(len(issame))}


def embed_subset(module, dataset, indices: np.ndarray) -> np.ndarray:
    """Embeddings of ``indices`` placed in a full-size array (other rows zero)."""
    out = np.zeros((len(dataset), module.dim), np.float32)
    out[indices] = embed_dataset(module, dataset, indices, batch_size=32)
    return out


@click.command()
@click.option("--recognizer", "-r", default="fr512", show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--results", default="benchmarks/results/vigface_space", show_default=True, type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Result file stem (default lfw_<recognizer>_<margin>).")
@click.option("--virtual-ratio", default=1.0, show_default=True, help="k = ratio x number of real identities.")
@click.option("--margin-type", type=click.Choice(["arcface", "cosface"]), default="arcface", show_default=True)
@click.option("--epochs", default=20, show_default=True)
@click.option("--steps", type=int, default=None)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--finetune", is_flag=True, help="Train the recognizer too (from images) instead of the head only.")
@click.option("--backbone-lr", default=0.001, show_default=True)
@click.option("--init-from", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --finetune: start from this head-only space's prototypes (else from class means).")
@click.option("--check-images", default=300, show_default=True,
              help="Frozen mode: LFW evaluation images also embedded by the saved torch backbone, to compare with ONNX.")
@click.option("--identities", type=click.IntRange(min=2), default=None,
              help="Train on only the first N training identities (a quick run; default: all of them).")
@click.option("--seed", default=0, show_default=True)
def main(**options):
    try:
        run(**options)
    except FacePrivacyError as exc:  # no shared data, a wrong --init-from folder, ...
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run(recognizer, out, results, name, virtual_ratio, margin_type, epochs, steps, batch_size, finetune, backbone_lr,
        init_from, check_images, identities, seed):
    torch.set_num_threads(1)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lfw_root = shared_path("data", "lfw", "aligned112")
    protocol = read_pairs(shared_path("data", "lfw", "pairs.txt"))
    rec = create_recognizer(recognizer)
    held_out = protocol.identities_in_folds(range(5, 10))

    # ---- train: identities of folds 1-5 or of no fold; all of them, single-image ones included
    train_ds = load_training_dataset(lfw_root, min_images=1)
    train_ds = train_ds.subset(sorted(set(train_ds.identities) - held_out)[:identities])
    data = EmbeddingSet.from_recognizer(rec, train_ds)  # cached; mirrored crops augment
    counts = np.bincount(data.labels)
    k = int(round(virtual_ratio * len(data.identities)))
    cfg = SpaceTrainConfig(num_virtual=k, margin_type=margin_type, epochs=epochs, max_steps=steps, batch_size=batch_size,
                           backbone_lr=backbone_lr, seed=seed)
    t0 = time.time()
    if finetune:
        init = PrototypeStore.from_pretrained(init_from, backbone_fingerprint=rec.fingerprint) if init_from else None
        space = train_space(train_ds, cfg, recognizer_backbone(rec, trainable=True), checkpoint_dir=out / "checkpoint",
                            init=init)
    else:
        space = train_space(data, cfg, recognizer_backbone(rec), checkpoint_dir=out / "checkpoint")
    train_seconds = time.time() - t0
    space.save(out)

    # ---- reload what was saved, as stage 2 will
    module, fingerprint = load_backbone(out / "backbone")
    store = PrototypeStore.from_pretrained(out / "prototypes", backbone_fingerprint=fingerprint)

    # ---- LFW folds 6-10 (threshold of each fold chosen on the other four)
    lfw = IdentityFolderDataset.from_folder(lfw_root)
    test = protocol.select(range(5, 10))
    left, right = pair_indices(lfw, test)
    ref = extract_embeddings(rec, lfw)
    verification = {f"LFW folds 6-10, {recognizer} (ONNX)": pair_report(ref, left, right, test.issame, test.folds)}
    notes = []
    images = np.unique(np.concatenate([left, right]))
    if finetune:
        tuned = embed_subset(module, lfw, images)
        verification[f"LFW folds 6-10, space backbone ({recognizer} fine-tuned {space.state['step']} steps)"] = \
            pair_report(tuned, left, right, test.issame, test.folds)
    else:
        if fingerprint != rec.fingerprint:
            raise SystemExit(f"frozen backbone fingerprint {fingerprint} != recognizer {rec.fingerprint}")
        check = np.random.default_rng(seed).choice(images, min(check_images, len(images)), replace=False)
        diff = float(np.abs(embed_subset(module, lfw, check)[check] - ref[check]).max())
        verification[f"LFW folds 6-10, space backbone (frozen {recognizer}, saved torch module)"] = \
            pair_report(ref, left, right, test.issame, test.folds)
        notes.append(f"The space's backbone is {recognizer} frozen (same fingerprint {fingerprint}); the saved torch module "
                     f"reproduces the ONNX embeddings of {len(check)} random evaluation images within {diff:.2e} (max abs), "
                     "so its accuracy is the recognizer's by construction.")
    verification[f"LFW all 10 folds, {recognizer} (ONNX, reference)"] = pair_report(
        ref, *pair_indices(lfw, protocol), protocol.issame, protocol.folds)

    # ---- AT&T: every pair of its 400 images, 10 random folds
    att = IdentityFolderDataset.from_folder(shared_path("data", "att_faces"), size=rec.preprocessing.input_size)
    i, j = np.triu_indices(len(att), 1)
    same = att.labels[i] == att.labels[j]
    att_folds = np.random.default_rng(seed).integers(0, 10, len(i))
    verification[f"AT&T all pairs, {recognizer} (ONNX)"] = pair_report(extract_embeddings(rec, att), i, j, same, att_folds)
    verification["AT&T all pairs, space backbone (saved torch module)"] = pair_report(
        embed_dataset(module, att, batch_size=32), i, j, same, att_folds)
    notes.append("AT&T crops are not aligned to the ArcFace template (92x112 grey, resized to the input size).")

    # ---- separability of the prototypes
    report = separability_report(store, seed=seed)
    report.update({
        "title": f"VIGFace identity space on LFW ({recognizer}, {margin_type}{', fine-tuned' if finetune else ', head only'})",
        "command": command, "verification": verification, "train_seconds": round(train_seconds, 1),
        "training": {"identities": len(data.identities), "images": len(train_ds),
                     "single_image_identities": int((counts == 1).sum()), "steps": space.state["step"],
                     "final": space.state["history"][-1] if space.state["history"] else None,
                     "protocol": "LFW identities in View-2 folds 1-5 or in no fold; folds 6-10 held out"},
        "notes": notes + [
            f"{int((counts == 1).sum())} of the {len(data.identities)} training identities have one image "
            "(their mirrored crop is the second view).",
            f"The fake-sample (virtual) loss ends at {space.state['history'][-1]['virtual']:.1e}: in {store.dim} dimensions "
            "randomly initialised virtual prototypes already sit farther from every real prototype than real prototypes "
            "sit from each other (compare the random-vector row), so the margin loss holds them there rather than having "
            "to move them. The pushing-apart itself is exercised in low dimension by "
            "tests/test_vigface_space.py::test_training_pushes_virtual_prototypes_away_from_real."],
    })
    paths = write_report(report, results, name or f"lfw_{recognizer}_{margin_type}{'_finetune' if finetune else ''}")
    crit = report["criterion"]
    for key, res in verification.items():
        click.echo(f"{key}: {100 * res['accuracy']:.2f} % ± {100 * res['std']:.2f}")
    click.echo(f"separability: p99 max cos(virtual, real) {crit['virtual_vs_real_max_p99']:.4f} <= median real nearest "
               f"negative {crit['real_nearest_negative_median']:.4f}: {crit['passed']}")
    click.echo(f"wrote {', '.join(map(str, paths.values()))}")


if __name__ == "__main__":
    main()
