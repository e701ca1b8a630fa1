"""Train the VIGFace diffusion model on LFW at 64x64 within a time budget (meant for the GPU machine).

Faces of every LFW identity outside View-2 folds 6-10 (those are kept for evaluation), each
conditioned on its identity's prototype: the stage-1 store's real prototype (--prototypes) or the
L2-normalised mean fr512 embedding (the stage-1 frozen-fr512 space's prototypes match these to
cos 0.997, and share fr512's fingerprint, so that store's virtual prototypes fit the pipeline).

    export FACEPRIV_SHARED=/path/to/shared FACEPRIV_CACHE=/tmp/fpcache
    # 1. here: pack LFW (64px JPEGs + embeddings), AT&T and pairs.txt for the GPU machine
    python benchmarks/vigface_train.py --data-root $FACEPRIV_SHARED/data/lfw/aligned112 --save-pack .carry/vigface
    # 2. there (~8 minutes):
    python benchmarks/vigface_train.py --data-root .carry/vigface/lfw64_train.npz --pairs .carry/vigface/pairs.txt \\
        --out runs/vigface_pipe --minutes 8 --batch-size 256 --device cuda
    # CPU smoke run (tests): --tiny --minutes 0.2 --device cpu

Writes the pipeline folder (fp16 weights) to --out and --out/train_log.json.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from facecore.data import IdentityFolderDataset, read_pairs
from facecore.errors import DataError
from facecore.recognizers import create_recognizer
from facecore.training.distributed import DistContext
from facecore.training.face_pack import FaceTrainingSet
from vigface_sdk.schedulers import DDPMScheduler
from vigface_sdk.train_diffusion import DiffusionData, DiffusionTrainConfig, build_pipeline, train_diffusion
from vigface_sdk.unet import PrototypeUNet, UNetConfig, count_parameters
from vigface_sdk.virtual import load_prototype_store

TINY_UNET = dict(block_out_channels=(8, 16), attention_levels=(False, False), attention_head_dim=8, layers_per_block=1)


def save_packs(data_root: Path, out: Path, size: int) -> None:
    """Two ``FaceTrainingSet`` packs of LFW at ``size`` px (each under the device's transfer limit with the
    repository): ``lfw{size}_train.npz``, the identities outside folds 6-10 with fp16 fr512 embeddings (JPEG
    q95; for training), and ``lfw{size}_eval.npz``, every image with fp16 fr128 embeddings (JPEG q85; for
    evaluation); plus ``att{size}.npz`` and ``pairs.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    ds = IdentityFolderDataset.from_folder(data_root)
    held = read_pairs(data_root.parent / "pairs.txt").identities_in_folds(range(5, 10))
    for name, subset, rec, quality in (("train", ds.subset(set(ds.identities) - held), "fr512", 95), ("eval", ds, "fr128", 85)):
        pack = FaceTrainingSet.build(subset, create_recognizer(rec), size)
        pack.embeddings = pack.embeddings.astype(np.float16)  # loaded back as float32
        pack.save(out / f"lfw{size}_{name}.npz", quality=quality)
    att_root = data_root.parents[1] / "att_faces"
    if att_root.is_dir():
        FaceTrainingSet.build(IdentityFolderDataset.from_folder(att_root), create_recognizer("fr128"), size).save(out / f"att{size}.npz")
    shutil.copy(data_root.parent / "pairs.txt", out / "pairs.txt")
    for f in sorted(out.iterdir()):
        print(f"{f}: {f.stat().st_size / 2**20:.1f} MiB")


def load_data(data_root: Path, pairs: Path | None, size: int, prototypes: Path | None, landmarks: Path | None,
              limit_identities: int | None) -> DiffusionData:
    held = read_pairs(pairs).identities_in_folds(range(5, 10)) if pairs else set()
    store = load_prototype_store(prototypes) if prototypes else None
    if data_root.suffix == ".npz":
        train = FaceTrainingSet.load(data_root)
        keep = sorted(set(train.identities) - held)[:limit_identities]
        train = train.subset(keep)
        from vigface_sdk.landmarks import landmarks_from_json

        marks = landmarks_from_json(landmarks, train.relpaths) if landmarks else None
        return DiffusionData.from_training_set(train, store, marks)
    ds = IdentityFolderDataset.from_folder(data_root)
    exclude = held | set(sorted(set(ds.identities) - held)[limit_identities:]) if limit_identities else held
    return DiffusionData.from_folder(data_root, size, store, None if store else create_recognizer("fr512"), landmarks, exclude)


@click.command()
@click.option("--data-root", required=True, type=click.Path(exists=True, path_type=Path),
              help="LFW aligned112 folder, or the lfw64_train.npz pack from --save-pack.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Pipeline folder to write.")
@click.option("--save-pack", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Only write the packs (lfw64_train.npz, lfw64_eval.npz, att64.npz, pairs.txt) for another machine.")
@click.option("--pairs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="LFW pairs.txt: identities of folds 6-10 are kept out (default: next to --data-root if there).")
@click.option("--prototypes", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Stage-1 space or prototype store to condition on (default: mean fr512 embeddings).")
@click.option("--landmarks", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="landmarks_scrfd500m.json: add 5-point pose heatmap conditioning.")
@click.option("--minutes", default=8.0, show_default=True, help="Training time budget.")
@click.option("--max-steps", default=1_000_000, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--lr", default=4e-4, show_default=True)
@click.option("--identity-weight", default=0.05, show_default=True, help="Identity loss through fr512 on predicted x0 (0: off).")
@click.option("--size", default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--tiny", is_flag=True, help="A tiny UNet and 20 identities (CPU smoke test).")
@click.option("--seed", default=0, show_default=True)
def main(data_root, out, save_pack, pairs, prototypes, landmarks, minutes, max_steps, batch_size, lr, identity_weight, size,
         device, tiny, seed) -> None:
    torch.set_num_threads(min(torch.get_num_threads(), 16))
    if save_pack:
        save_packs(data_root, save_pack, size)
        return
    if out is None:
        raise click.UsageError("--out is required unless --save-pack is given")
    if pairs is None and data_root.suffix != ".npz" and (data_root.parent / "pairs.txt").is_file():
        pairs = data_root.parent / "pairs.txt"
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    t0 = time.monotonic()
    data = load_data(data_root, pairs, size, prototypes, landmarks, 20 if tiny else None)
    if len(data.images) == 0:
        raise DataError("no training faces")
    unet_cfg = UNetConfig(sample_size=size, cond_dim=data.dim, landmark_channels=5 if landmarks else 0,
                          **(TINY_UNET if tiny else {}))
    cfg = DiffusionTrainConfig(max_steps=max_steps, max_minutes=minutes, batch_size=batch_size, lr=lr,
                               warmup_steps=50 if tiny else 500, identity_weight=identity_weight,
                               identity_max_timestep=500, identity_batch=64,
                               mixed_precision="bf16" if dev.type == "cuda" else "no", checkpoint_every=1000,
                               log_every=10 if tiny else 100, seed=seed)
    id_model = create_recognizer("fr512").to_torch() if identity_weight > 0 else None

    print(f"{len(data.images)} faces of {len(data.identities)} identities, {data.dim}-d prototypes ({data.condition}); "
          f"UNet {count_parameters(PrototypeUNet(unet_cfg)) / 1e6:.2f} M "
          f"params; device {dev}", flush=True)
    load_s = time.monotonic() - t0
    t1 = time.monotonic()
    result = train_diffusion(data, unet_cfg, cfg, DDPMScheduler(), DistContext(device=dev),
                             checkpoint_dir=out.with_name(out.name + ".checkpoint"), identity_model=id_model)
    train_s = time.monotonic() - t1
    pipe = build_pipeline(result, data)
    pipe.save_pretrained(out, dtype=torch.float16)
    log = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "images": len(data.images), "identities": len(data.identities), "condition": data.condition,
           "unet_params": count_parameters(result.ema), "unet_config": result.state["unet_config"],
           "steps": result.state["step"], "load_seconds": round(load_s, 1), "train_seconds": round(train_s, 1),
           "steps_per_second": round(result.state["step"] / max(train_s, 1e-9), 2), "config": result.state["config"],
           "history": result.state["history"],
           "weights_bytes": (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    last = result.state["history"][-1] if result.state["history"] else {}
    print(f"{result.state['step']} steps in {train_s:.0f} s; last {last}; pipeline -> {out}")


if __name__ == "__main__":
    main()
