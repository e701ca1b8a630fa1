"""VIGFace stage 2 from Python: sample faces of virtual identities and write a small training set.

    # a pipeline from `vigface-cli train-diffusion` or benchmarks/vigface_train.py
    python examples/vigface_synthesize.py --pipeline runs/vigface_pipe --out runs/vigface_demo
    # virtual prototypes learned by stage 1 instead of the pipeline's sampler:
    python examples/vigface_synthesize.py --pipeline runs/vigface_pipe --prototypes runs/vigface_space_fr512 --out runs/demo2

The same as ``vigface-cli synthesize PIPELINE --identities 8 --per-identity 4 --out OUT/dataset`` plus a
picture grid, written step by step.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from facecore.recognizers import create_recognizer
from vigface_sdk.pipeline import VIGFacePipeline, sample_seed
from vigface_sdk.schedulers import DDIMScheduler, DDPMScheduler
from vigface_sdk.synthesis_report import embed_faces, identity_consistency, save_grid
from vigface_sdk.synthesize import synthesize
from vigface_sdk.virtual import load_prototype_store


@click.command()
@click.option("--pipeline", "pipe_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--prototypes", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Stage-1 space folder (its prototypes/ store) for learned virtual prototypes.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--identities", default=8, show_default=True)
@click.option("--per-identity", default=4, show_default=True)
@click.option("--guidance-scale", default=3.0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def main(pipe_dir: Path, prototypes: Path | None, out: Path, identities: int, per_identity: int, guidance_scale: float,
         device: str) -> None:
    # 1. load the components (unet, scheduler, virtual prototype sampler) from one folder
    pipe = VIGFacePipeline.from_pretrained(pipe_dir, device=device)
    # 2. virtual identities: the pipeline's sampler, or a stage-1 store checked against the pipeline's space
    if prototypes is not None:
        store = load_prototype_store(prototypes)
        protos = pipe.check_prototypes(store.virtual[:identities], store.backbone_fingerprint)
    else:
        protos = pipe.virtual_prototypes(identities, seed=0)
    # 3. sample: images are prototype-major, uint8 RGB; seed=s gives image (k, m) the noise seed sample_seed(s, k, m)
    images = pipe(protos, num_images_per_prototype=per_identity, guidance_scale=guidance_scale,
                  num_inference_steps=25, seed=0, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(images, out / "grid.png", columns=per_identity, title=f"{identities} virtual identities (rows)")
    labels = np.repeat(np.arange(identities), per_identity)
    cons = identity_consistency(embed_faces(create_recognizer("fr128"), images), labels)
    print(f"mean identity consistency (fr128): {np.nanmean(cons):.3f}; grid -> {out / 'grid.png'}")
    # 4. any image regenerates alone from its seed
    k, m = identities - 1, per_identity - 1
    again = pipe(protos[k:k + 1], 1, guidance_scale, 25, generator=[torch.Generator().manual_seed(sample_seed(0, k, m))])
    print(f"image ({k}, {m}) regenerated alone: max pixel difference {np.abs(again[0].astype(int) - images[-1]).max()}")
    # 5. schedulers are swappable: ancestral DDPM sampling on the same model
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    ddpm = pipe(protos[:1], 2, guidance_scale, 50, seed=0)
    save_grid(ddpm, out / "grid_ddpm.png", columns=2, title="DDPM sampler, 50 steps")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    # 6. a dataset on disk: identity folders + manifest (resumable, sharded under torchrun)
    res = synthesize(pipe, out / "dataset", identities, per_identity, protos if prototypes else None, seed=0,
                     guidance_scale=guidance_scale, evaluator=create_recognizer("fr128"))
    print(f"{res.num_images} images at {res.images_per_second:.2f} img/s -> {out / 'dataset'}")


if __name__ == "__main__":
    main()
