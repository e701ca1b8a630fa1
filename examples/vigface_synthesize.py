"""VIGFace stage 2 from Python, the diffusers way: sample faces of virtual identities, swap the sampler,
regenerate one image alone, and write a small training set.

    python examples/vigface_synthesize.py --out runs/vigface_demo                 # the shipped CPU-trained pipeline
    python examples/vigface_synthesize.py --pipeline runs/my_pipe --out runs/demo2 # one from `vigface-cli train-diffusion`
    # virtual prototypes learned by stage 1 instead of the pipeline's sampler (same recognizer space):
    python examples/vigface_synthesize.py --prototypes runs/vigface_space_fr128 --out runs/demo3

The same as ``vigface-cli synthesize --identities 8 --per-identity 4 --out OUT/dataset`` plus picture grids,
written step by step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
import torch
from diffusers import DDIMScheduler, UniPCMultistepScheduler

from facecore.errors import FacePrivacyError
from vigface_sdk import VIGFacePipeline, load_pipeline, sample_seed, synthesize
from vigface_sdk.evaluation.synthesis_report import save_grid
from vigface_sdk.models.virtual import load_prototype_store


@click.command()
@click.option("--pipeline", "pipe_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Pipeline folder (default: the shipped vigface64).")
@click.option("--prototypes", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Stage-1 space folder (its prototypes/ store) for learned virtual prototypes.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--identities", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--per-identity", type=click.IntRange(min=1), default=4, show_default=True)
def main(pipe_dir: Path | None, prototypes: Path | None, out: Path, identities: int, per_identity: int) -> None:
    try:
        run(pipe_dir, prototypes, out, identities, per_identity)
    except FacePrivacyError as exc:  # not a pipeline / prototype folder, too few prototypes, another run in --out, ...
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run(pipe_dir: Path | None, prototypes: Path | None, out: Path, identities: int, per_identity: int) -> None:
    # 1. one folder holds every component: autoencoder, denoiser, scheduler, virtual prototype sampler
    pipe: VIGFacePipeline = load_pipeline(pipe_dir)
    # 2. virtual identities: the pipeline's sampler (kept away from every real identity it excludes),
    #    or a stage-1 store checked against the pipeline's recognizer space
    if prototypes is not None:
        store = load_prototype_store(prototypes)
        protos = pipe.check_prototypes(store.virtual[:identities], store.backbone_fingerprint)
    else:
        protos = pipe.virtual_prototypes(identities, seed=0)
    # 3. sample: prototype-major uint8 RGB; seed=s gives image (k, m) the noise seed sample_seed(s, k, m)
    images = pipe(protos, num_images_per_prototype=per_identity, seed=0, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(images, out / "grid.png", columns=per_identity, title=f"{identities} virtual identities (rows)")
    # 4. any image regenerates alone from its seed (diffusers style: one generator per image)
    k, m = identities - 1, per_identity - 1
    again = pipe(protos[k:k + 1], 1, generator=[torch.Generator().manual_seed(sample_seed(0, k, m))])
    print(f"image ({k}, {m}) regenerated alone: max pixel difference {np.abs(again[0].astype(int) - images[-1]).max()}")
    # 5. schedulers are swappable with from_config: UniPC, or DDIM with more steps
    default = pipe.scheduler
    for name, cls, steps in (("unipc", UniPCMultistepScheduler, 10), ("ddim", DDIMScheduler, 30)):
        pipe.scheduler = cls.from_config(default.config)
        save_grid(pipe(protos[:2], per_identity, num_inference_steps=steps, seed=0), out / f"grid_{name}.png",
                  columns=per_identity, title=f"{cls.__name__}, {steps} steps")
    pipe.scheduler = default
    # 6. a dataset on disk: identity folders + InsightFace RecordIO + manifest (resumable, sharded under torchrun)
    res = synthesize(pipe, out / "dataset", identities, per_identity, protos if prototypes else None, seed=0)
    print(f"{res.num_images} images at {res.images_per_second:.1f} img/s -> {out / 'dataset'}; grids in {out}")


if __name__ == "__main__":
    main()
