"""Evaluate a VIGFace pipeline as its users would: face-ness, identity control, variation, privacy,
speed, and train-on-synthetic — judged by a recognizer (fr512) and a detector (YuNet) that the model
was not trained with (it was conditioned on and trained through fr128; LFW was aligned with SCRFD).

    export FACEPRIV_SHARED=/path/to/shared FACEPRIV_CACHE=~/.cache/face-privacy
    python benchmarks/vigface_eval.py --pack runs/vigface/lfw64_fr128.npz --out benchmarks/results

(``--pack``: every LFW image at 64 px, from ``benchmarks/vigface_train.py pack``.) Real faces go through
the generated faces' path (64 px, resized for the evaluator and the detector). Writes
``vigface_synthesis.json`` / ``.md``, ``vigface_synthesis_grid.png`` and ``vigface_privacy.png``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from facecore.data import IdentityFolderDataset, read_pairs
from facecore.metrics import cosine_scores, kfold_accuracy, tar_at_far
from facecore.paths import originals_allowed, shared_path
from facecore.recognizers import create_recognizer
from facecore.training.face_pack import FaceTrainingSet
from vigface_sdk.evaluation.synthesis_report import embed_faces, identity_control, save_grid
from vigface_sdk.pipelines.pipeline import DEFAULT_GUIDANCE, DEFAULT_PIPELINE, DEFAULT_STEPS, load_pipeline
from vigface_sdk.training.recognizer import RecognizerTrainConfig, embed_images, train_recognizer

RESULT = "vigface_synthesis"
HELD_OUT_FOLDS = range(5, 10)
RECIPES = ("mirror", "augmented")  # train-on-X recipes: mirroring only; + augment_batch


# --- face-ness -----------------------------------------------------------------------------------
def face_found(images_rgb: np.ndarray, scale: int = 2, pad: int = 32, score: float = 0.5) -> np.ndarray:
    """YuNet (OpenCV) on each face, upscaled ``scale``× and padded by ``pad`` repeated border pixels."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    s = images_rgb.shape[1] * scale + 2 * pad
    det = cv2.FaceDetectorYN.create(str(shared_path("models", "yunet", "face_detection_yunet_2026may.onnx")), "", (s, s),
                                    score, 0.3, 50)
    found = np.zeros(len(images_rgb), bool)
    for i, im in enumerate(images_rgb):
        big = cv2.resize(np.ascontiguousarray(im[..., ::-1]), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        _, faces = det.detect(cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
        found[i] = faces is not None and len(faces) > 0
    return found


# --- variation -----------------------------------------------------------------------------------
def same_identity_pairs(labels: np.ndarray, max_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    pairs = [(a, b) for g in groups if len(g) > 1 for i, a in enumerate(g) for b in g[i + 1:]]
    pick = rng.choice(len(pairs), min(max_pairs, len(pairs)), replace=False)
    return np.asarray([pairs[k][0] for k in pick]), np.asarray([pairs[k][1] for k in pick])


def pixel_ssim(images: np.ndarray, left: np.ndarray, right: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(images[a], images[b], channel_axis=2) for a, b in zip(left, right)]))


# --- privacy -------------------------------------------------------------------------------------
def nearest_other(queries: np.ndarray, q_labels: np.ndarray | None, gallery: np.ndarray, g_labels: np.ndarray,
                  chunk: int = 1024) -> np.ndarray:
    """Each query's highest cosine to a gallery row of *another* identity (all rows when ``q_labels`` is None)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = np.empty(len(q), np.float32)
    for lo in range(0, len(q), chunk):
        sims = q[lo:lo + chunk] @ g.T
        if q_labels is not None:
            sims[q_labels[lo:lo + chunk, None] == g_labels[None]] = -1
        out[lo:lo + chunk] = sims.max(1)
    return out


def templates(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    names = np.unique(labels)
    t = np.stack([e[labels == n].mean(0) for n in names])
    return t / np.linalg.norm(t, axis=1, keepdims=True), names


def quantiles(x: np.ndarray) -> dict:
    return {f"q{int(q * 1000):03d}" if q < 0.1 or q > 0.9 else f"q{int(q * 100):02d}": float(np.quantile(x, q))
            for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999)} | {"mean": float(x.mean()), "max": float(x.max())}


def privacy_plot(synthetic: np.ndarray, strangers: np.ndarray, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(min(synthetic.min(), strangers.min()), max(synthetic.max(), strangers.max(), threshold) + 0.02, 60)
    ax.hist(strangers, bins, density=True, alpha=0.55, label="real LFW image → nearest other real identity")
    ax.hist(synthetic, bins, density=True, alpha=0.55, label="virtual sample → nearest real identity")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"99.9th percentile of real strangers ({threshold:.3f})")
    ax.set_xlabel("cosine similarity (fr512, not the conditioning recognizer)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- speed ---------------------------------------------------------------------------------------
def images_per_second(fn, n: int) -> float:
    fn(1)  # warm-up
    t = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t)


@torch.no_grad()
def pixel_baseline_speed(n: int, steps: int = 25) -> dict:
    """The replaced design: a 5.9 M-parameter pixel-space UNet at 64×64 (diffusers' UNet2DModel with the old default
    widths 32/64/96/128, attention at the two lowest resolutions), DDIM 25 steps with classifier-free guidance."""
    from diffusers import DDIMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(32, 64, 96, 128),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=2,
                       attention_head_dim=32, norm_num_groups=8, class_embed_type="identity").eval()
    sched = DDIMScheduler(num_train_timesteps=1000)

    def run(k: int) -> None:
        sched.set_timesteps(steps)
        x = torch.randn(k, 3, 64, 64)
        cond = torch.randn(2 * k, 128)
        for t in sched.timesteps:
            eps = unet(torch.cat([x, x]), t, class_labels=cond).sample.chunk(2)
            x = sched.step(eps[1] + 2 * (eps[1] - eps[0]), t, x).prev_sample

    return {"images_per_second": images_per_second(run, n), "params": sum(p.numel() for p in unet.parameters()),
            "steps": steps, "images": n}


# --- the autoencoder alone ------------------------------------------------------------------------
@torch.no_grad()
def autoencoder_quality(pipe, pack: FaceTrainingSet, real_emb: np.ndarray, n: int = 1000) -> dict:
    """Reconstruction of faces of the held-out identities (LFW View-2 folds 6-10): the encoder's latent and the
    face's own fr128 embedding as the prototype. PSNR / SSIM against the 64 px face, and the evaluator's (fr512)
    cosine between the face and its reconstruction."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    held = read_pairs(shared_path("data", "lfw", "pairs.txt")).identities_in_folds(HELD_OUT_FOLDS)
    rows = np.flatnonzero(np.isin(np.asarray(pack.identities)[pack.labels], sorted(held)))
    rows = np.random.default_rng(0).choice(rows, min(n, len(rows)), replace=False)
    x = torch.from_numpy(pack.images[rows]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    ae = pipe.autoencoder
    rec = torch.cat([ae.decode(ae.encode(x[i:i + 128])[0], torch.from_numpy(pack.embeddings[rows[i:i + 128]]))
                     for i in range(0, len(x), 128)])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    orig = pack.images[rows]
    emb = embed_faces(create_recognizer("fr512"), rec)
    return {"faces": int(len(rows)), "identities_held_out": int(len(held)),
            "psnr": float(np.mean([peak_signal_noise_ratio(a, b) for a, b in zip(orig, rec)])),
            "ssim": float(np.mean([structural_similarity(a, b, channel_axis=2) for a, b in zip(orig, rec)])),
            "identity_cosine_fr512": float(cosine_scores(emb, real_emb[rows]).mean()), "examples": (orig[:8], rec[:8])}


# --- train-on-synthetic --------------------------------------------------------------------------
def verification(net, lfw: FaceTrainingSet, att: FaceTrainingSet) -> dict:
    pairs = read_pairs(shared_path("data", "lfw", "pairs.txt")).select(HELD_OUT_FOLDS)
    index = {r: i for i, r in enumerate(lfw.relpaths)}
    left = np.asarray([index[p] for p in pairs.left])
    right = np.asarray([index[p] for p in pairs.right])
    used = np.unique(np.r_[left, right])
    emb = np.zeros((len(lfw), 128), np.float32)
    emb[used] = embed_images(net, lfw.images[used])
    out = {"lfw_folds_6_10": kfold_accuracy(cosine_scores(emb[left], emb[right]), pairs.issame, pairs.folds).to_dict()}
    e = embed_images(net, att.images)
    i, j = np.triu_indices(len(att), 1)
    s, same = cosine_scores(e[i], e[j]), att.labels[i] == att.labels[j]
    pick = np.r_[np.flatnonzero(same), np.random.default_rng(0).choice(np.flatnonzero(~same), same.sum(), replace=False)]
    out["att"] = {**kfold_accuracy(s[pick], same[pick], np.arange(len(pick)) % 10).to_dict(), "pairs": int(len(pick)),
                  **tar_at_far(s, same, (1e-3,))}
    return out


def synthetic_like(pipe, labels: np.ndarray, start: int, guidance_scale: float, steps: int, seed: int = 1,
                   batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic set with the identity sizes of ``labels``: identity ``start + k`` gets as many images as the
    k-th real identity; image ``m`` of identity ``i`` is drawn from ``sample_seed(seed, i, m)``."""
    from vigface_sdk.pipelines.pipeline import sample_seed

    _, counts = np.unique(labels, return_counts=True)
    ids = np.arange(start, start + len(counts))
    protos = pipe.virtual_prototypes(len(counts), seed=0, start=start)
    images, out_labels = [], []
    for c in np.unique(counts):
        group = np.flatnonzero(counts == c)
        gens = [torch.Generator().manual_seed(sample_seed(seed, int(ids[k]), m)) for k in group for m in range(c)]
        images.append(pipe(protos[group], int(c), guidance_scale, steps, generator=gens, batch_size=batch_size))
        out_labels.append(np.repeat(ids[group], c))
    return np.concatenate(images), np.concatenate(out_labels)


def real_training_subset(pack: FaceTrainingSet, n: int, per_identity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``n`` LFW training images (identities outside folds 6-10) shaped like the synthetic set: at most
    ``per_identity`` images of each identity, the most populous identities first."""
    held = read_pairs(shared_path("data", "lfw", "pairs.txt")).identities_in_folds(HELD_OUT_FOLDS)
    train = pack.subset(set(pack.identities) - held)
    labels, counts = np.unique(train.labels, return_counts=True)
    idx = np.concatenate([np.flatnonzero(train.labels == lab)[:per_identity]
                          for lab in labels[np.argsort(-counts, kind="stable")]])[:n]
    return train.images[idx], train.labels[idx], len(np.unique(train.labels[idx]))


# --- report --------------------------------------------------------------------------------------
def markdown(r: dict) -> str:
    p, a = r["pipeline"], r["acceptance"]
    ok = lambda flag: "**pass**" if flag else "**FAIL**"  # noqa: E731
    v, pr, sp, t = r["variation"], r["privacy"], r["speed"], r["train_on_synthetic"]
    lines = ["# VIGFace on a CPU: the shipped pipeline, judged by models it was not trained with", "",
             "Command:", "", "```", r["command"], "```", "",
             f"Pipeline `{p['name']}` ({p['fingerprint']}): autoencoder {p['autoencoder_params'] / 1e6:.2f} M + denoiser "
             f"{p['denoiser_params'] / 1e6:.2f} M parameters, {p['bytes'] / 1e6:.1f} MB on disk (fp16), {p['scheduler']} "
             f"{r['settings']['steps']} steps, guidance {r['settings']['guidance_scale']}; conditioned on fr128 identity "
             f"prototypes. {r['settings']['identities']} virtual identities × {r['settings']['per_identity']} images from the "
             "pipeline's sampler (seed 0). Evaluator: **fr512**; detector: **YuNet** (neither seen in training). "
             f"Machine: {r['machine']}.", "",
             "| criterion | measured | target | |", "|---|---|---|---|",
             f"| face-ness: YuNet finds a face | {100 * r['faceness']['synthetic']:.1f} % (real LFW 64 px, same protocol: "
             f"{100 * r['faceness']['real']:.1f} %) | ≥ 95 % | {ok(a['faceness'])} |",
             f"| identity control: same vs different virtual identity, 10-fold | "
             f"{100 * r['identity_control']['accuracy']:.2f} % ± {100 * r['identity_control']['std']:.2f} | ≥ 90 % | "
             f"{ok(a['identity_control'])} |",
             f"| variation: mean same-identity cosine | {v['synthetic_same_mean']:.3f} (real LFW same person: "
             f"{v['real_same_mean']:.3f}) | ≤ {v['bound']:.3f} | {ok(a['variation'])} |",
             f"| privacy: samples with no real LFW image above the 1:N threshold | {100 * pr['clean_rate']:.2f} % | ≥ 99 % | "
             f"{ok(a['privacy'])} |",
             f"| speed at 64×64, default steps (2 CPU cores) | {sp['images_per_second']:.1f} img/s (old pixel UNet design "
             f"{sp['pixel_baseline']['images_per_second']:.3f} img/s: {sp['speedup']:.0f}×) | ≥ 20 img/s | {ok(a['speed'])} |",
             f"| train-on-synthetic / train-on-real, LFW folds 6-10, same recipe (augmented) | "
             f"{100 * t['ratio_augmented']['lfw']:.1f} % | ≥ 90 % | {ok(a['train_on_synthetic'])} |",
             f"| the same, each set with its best recipe | {100 * t['ratio_best']['lfw']:.1f} % | ≥ 90 % | "
             f"{ok(a['train_on_synthetic_best_vs_best'])} |", "",
             "## The face autoencoder", "",
             f"{r['autoencoder']['faces']} faces of the {r['autoencoder']['identities_held_out']:,} identities of LFW View-2 folds "
             "6-10 (never seen in training), encoded and decoded with their own fr128 embedding as the prototype: PSNR "
             f"**{r['autoencoder']['psnr']:.2f} dB**, SSIM **{r['autoencoder']['ssim']:.3f}**, fr512 cosine between face and "
             f"reconstruction **{r['autoencoder']['identity_cosine_fr512']:.3f}** (real photos of one person: "
             f"{v['real_same_mean']:.3f}). " + ("Top row: faces; bottom row: reconstructions." if r['autoencoder'].get('grid_shows_faces', True)
                                     else "Reconstructions only (the LFW photos are not ours to publish)."), "",
             "![autoencoder](vigface_autoencoder.png)", "",
             "## Variation", "",
             "| | mean same-identity cosine (fr512) | mean pixel SSIM of same-identity pairs |", "|---|---|---|",
             f"| virtual identities | {v['synthetic_same_mean']:.3f} | {v['synthetic_ssim']:.3f} |",
             f"| real LFW (64 px) | {v['real_same_mean']:.3f} | {v['real_ssim']:.3f} |", "",
             "## Privacy", "",
             f"1:N threshold: the 99.9th percentile of real non-mated searches (each of the {pr['real_images']:,} LFW images "
             f"against every image of the other {pr['real_identities'] - 1:,} identities) = **{pr['threshold']:.4f}** "
             "(FPIR 1e-3). Each virtual sample is searched against all real images.", "",
             f"Samples with a real image above it: {pr['leaks']} of {pr['samples']}. Nearest real *identity* (mean "
             "template) similarity, virtual samples vs real strangers (the picture: `vigface_privacy.png`):", "",
             "| | " + " | ".join(k for k in pr["nearest_identity_synthetic"]) + " |",
             "|---|" + "---|" * len(pr["nearest_identity_synthetic"]),
             "| virtual sample → nearest real identity | " + " | ".join(f"{x:.3f}" for x in pr["nearest_identity_synthetic"].values()) + " |",
             "| real image → nearest other real identity | " + " | ".join(f"{x:.3f}" for x in pr["nearest_identity_real"].values()) + " |",
             "", "![privacy](vigface_privacy.png)", "",
             "## Train on synthetic vs real", "",
             f"The same recognizer ({t['recognizer']}) trained from scratch with the same budget, {t['steps']} SGD steps of "
             f"{t['batch_size']} images, on {t['images']} images each: real = LFW training identities (outside folds 6-10), most "
             f"populous first, at most {r['settings']['per_identity']} images each ({t['identities']} identities); synthetic = "
             "as many virtual identities, each with as many images as its real counterpart (sampled at guidance "
             f"{t['guidance_scale']}). Two training recipes, each applied to both sets: *mirror* (random horizontal flip) and "
             "*augmented* (flip + `vigface_sdk.training.recognizer.augment_faces`: random similarity warp ±10°/±8 %, "
             "brightness/contrast ±25 %, grayscale p 0.2). Evaluated on "
             "LFW View-2 folds 6-10 (3,000 pairs) and AT&T (every genuine pair and as many impostor pairs, 10 folds).", "",
             "| training set | recipe | epochs | final loss | LFW folds 6-10 | AT&T | AT&T TAR@FAR=1e-3 (all pairs) |",
             "|---|---|---|---|---|---|---|"]
    for name, x in t["runs"].items():
        data, recipe = name.split("|")
        lines.append(f"| {data} | {recipe} | {x['training']['epochs']:.1f} | {x['training']['final_loss']:.2f} | "
                     f"{100 * x['lfw_folds_6_10']['accuracy']:.2f} % ± {100 * x['lfw_folds_6_10']['std']:.2f} | "
                     f"{100 * x['att']['accuracy']:.2f} % | {x['att']['tar@far=0.001']:.3f} |")
    rb = t["ratio_best"]
    lines += ["", "| synthetic / real | LFW folds 6-10 | AT&T |", "|---|---|---|",
              f"| same recipe: mirror | {100 * t['ratio_mirror']['lfw']:.1f} % | {100 * t['ratio_mirror']['att']:.1f} % |",
              f"| same recipe: augmented (the acceptance row) | {100 * t['ratio_augmented']['lfw']:.1f} % | "
              f"{100 * t['ratio_augmented']['att']:.1f} % |",
              f"| each set's best recipe (synthetic: {rb['synthetic_recipe']}, real: {rb['real_recipe']}) | "
              f"{100 * rb['lfw']:.1f} % | {100 * rb['att']:.1f} % |", "",
              "## Speed", "", f"{sp['images']} images in {sp['seconds']:.1f} s = **{sp['images_per_second']:.1f} img/s** "
              f"(batch {sp['batch_size']}); the replaced pixel-space design (UNet2DModel, "
              f"{sp['pixel_baseline']['params'] / 1e6:.2f} M params, 64×64, DDIM {sp['pixel_baseline']['steps']} steps with "
              f"guidance) in the same run: {sp['pixel_baseline']['images_per_second']:.3f} img/s.", "",
              "## Samples", "", "Rows: virtual identities; columns: samples of that identity.", "",
              "![grid](vigface_synthesis_grid.png)", ""]
    return "\n".join(lines)


@click.command()
@click.option("--pack", "pack_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--pipeline", "pipe_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Default: the shipped pipeline.")
@click.option("--identities", "-n", default=200, show_default=True)
@click.option("--per-identity", "-m", default=20, show_default=True)
@click.option("--guidance-scale", default=DEFAULT_GUIDANCE, show_default=True)
@click.option("--steps", default=DEFAULT_STEPS, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--train-steps", default=400, show_default=True, help="CPU budget of each train-on-X run, in SGD steps of 128 images.")
@click.option("--train-guidance", default=DEFAULT_GUIDANCE, show_default=True, help="Guidance scale for the train-on-synthetic set.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("benchmarks/results"), show_default=True)
def main(pack_path, pipe_dir, identities, per_identity, guidance_scale, steps, batch_size, train_steps, train_guidance, out) -> None:
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(pipe_dir)
    name = pipe_dir.name if pipe_dir else "vigface64 (shipped default)"
    folder = pipe_dir or DEFAULT_PIPELINE
    protos = pipe.virtual_prototypes(identities, seed=0)
    labels = np.repeat(np.arange(identities), per_identity)
    print("1/6 synthesize", flush=True)
    pipe(protos[:1], 1, guidance_scale, steps, seed=0)
    t0 = time.perf_counter()
    images = pipe(protos, per_identity, guidance_scale, steps, seed=0, batch_size=batch_size, progress=True)
    seconds = time.perf_counter() - t0
    baseline = pixel_baseline_speed(2)
    print("2/6 evaluator embeddings", flush=True)
    fr512 = create_recognizer("fr512")
    pack = FaceTrainingSet.load(pack_path)
    real_emb = embed_faces(fr512, pack.images)
    syn_emb = embed_faces(fr512, images)
    print("3/6 face-ness", flush=True)
    rng = np.random.default_rng(0)
    real_pick = rng.choice(len(pack), 2000, replace=False)
    faceness = {"synthetic": float(face_found(images).mean()), "real": float(face_found(pack.images[real_pick]).mean()),
                "detector": "YuNet face_detection_yunet_2026may.onnx, score 0.5, face upscaled 2x + 32 px border"}
    print("4/6 identity control, variation, privacy", flush=True)
    control = identity_control(syn_emb, labels)
    sl, sr = same_identity_pairs(labels, 3000)
    rl, rr = same_identity_pairs(pack.labels, 3000)
    syn_same = float(cosine_scores(syn_emb[sl], syn_emb[sr]).mean())
    real_same = float(cosine_scores(real_emb[rl], real_emb[rr]).mean())
    variation = {"synthetic_same_mean": syn_same, "real_same_mean": real_same, "bound": (real_same + 1) / 2,
                 "synthetic_ssim": pixel_ssim(images, sl[:1000], sr[:1000]), "real_ssim": pixel_ssim(pack.images, rl[:1000], rr[:1000])}
    real_nonmated = nearest_other(real_emb, pack.labels, real_emb, pack.labels)
    threshold = float(np.quantile(real_nonmated, 1 - 1e-3))
    syn_nearest_image = nearest_other(syn_emb, None, real_emb, pack.labels)
    tmpl, names = templates(real_emb, pack.labels)
    syn_nearest_id = nearest_other(syn_emb, None, tmpl, names)
    real_nearest_id = nearest_other(real_emb, pack.labels, tmpl, names)
    privacy = {"threshold": threshold, "fpir": 1e-3, "real_images": int(len(pack)), "real_identities": int(len(names)),
               "samples": int(len(images)), "leaks": int((syn_nearest_image > threshold).sum()),
               "clean_rate": float((syn_nearest_image <= threshold).mean()),
               "nearest_image_synthetic": quantiles(syn_nearest_image),
               "nearest_identity_synthetic": quantiles(syn_nearest_id), "nearest_identity_real": quantiles(real_nearest_id)}
    privacy["identity_threshold"] = float(np.quantile(real_nearest_id, 1 - 1e-3))
    privacy_plot(syn_nearest_id, real_nearest_id, privacy["identity_threshold"], out / "vigface_privacy.png")
    ae_quality = autoencoder_quality(pipe, pack, real_emb)
    originals, recons = ae_quality.pop("examples")
    shown = originals_allowed(out)  # LFW photos are not ours to publish: committed results show reconstructions only
    ae_quality["grid_shows_faces"] = shown
    save_grid(np.concatenate([originals, recons]) if shown else recons, out / "vigface_autoencoder.png", columns=8)
    print("5/6 train on synthetic vs real", flush=True)
    att = FaceTrainingSet.build(IdentityFolderDataset.from_folder(shared_path("data", "att_faces")), create_recognizer("fr128"), 64)
    real_imgs, real_labels, real_ids = real_training_subset(pack, len(images), per_identity)
    like_imgs, like_labels = synthetic_like(pipe, real_labels, start=identities, guidance_scale=train_guidance, steps=steps)
    tos = {"recognizer": "IResNet r18 layout, width 32, 128-d, ArcFace (m 0.5, s 32), SGD one-cycle", "steps": train_steps,
           "batch_size": 128, "images": int(len(real_imgs)), "identities": int(real_ids), "guidance_scale": train_guidance, "runs": {}}
    for data, (imgs, labs) in {"synthetic": (like_imgs, like_labels), "real": (real_imgs, real_labels)}.items():
        for recipe in RECIPES:
            net, info = train_recognizer(imgs, labs, RecognizerTrainConfig(steps=train_steps, augment=recipe == "augmented"))
            print(f"  recognizer on {data}, {recipe}: {info['epochs']:.1f} epochs, final loss {info['final_loss']:.3f}, "
                  f"{info['minutes']:.1f} min", flush=True)
            tos["runs"][f"{data}|{recipe}"] = {**verification(net, pack, att), "training": info}
    acc = {k: (v["lfw_folds_6_10"]["accuracy"], v["att"]["accuracy"]) for k, v in tos["runs"].items()}
    for recipe in RECIPES:
        tos[f"ratio_{recipe}"] = {"lfw": acc[f"synthetic|{recipe}"][0] / acc[f"real|{recipe}"][0],
                                 "att": acc[f"synthetic|{recipe}"][1] / acc[f"real|{recipe}"][1]}
    best = {d: max(RECIPES, key=lambda r: acc[f"{d}|{r}"][0]) for d in ("synthetic", "real")}
    tos["ratio_best"] = {"synthetic_recipe": best["synthetic"], "real_recipe": best["real"],
                         "lfw": acc[f"synthetic|{best['synthetic']}"][0] / acc[f"real|{best['real']}"][0],
                         "att": acc[f"synthetic|{best['synthetic']}"][1] / acc[f"real|{best['real']}"][1]}
    print("6/6 report", flush=True)
    grid_ids = 8
    save_grid(images[: grid_ids * per_identity].reshape(grid_ids, per_identity, *images.shape[1:])[:, :10].reshape(-1, *images.shape[1:]),
              out / "vigface_synthesis_grid.png", columns=10)
    speed = {"images": int(len(images)), "seconds": seconds, "images_per_second": len(images) / seconds, "batch_size": batch_size,
             "pixel_baseline": baseline, "speedup": len(images) / seconds / baseline["images_per_second"]}
    res = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "machine": f"CPU, {torch.get_num_threads()} threads",
           "pipeline": {"name": name, "fingerprint": pipe.fingerprint(), "scheduler": type(pipe.scheduler).__name__,
                        "autoencoder_params": sum(p.numel() for p in pipe.autoencoder.parameters()),
                        "denoiser_params": sum(p.numel() for p in pipe.denoiser.parameters()),
                        "bytes": sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()),
                        "training": pipe.metadata.get("training", {})},
           "settings": {"identities": identities, "per_identity": per_identity, "guidance_scale": guidance_scale, "steps": steps},
           "autoencoder": ae_quality, "faceness": faceness, "identity_control": control, "variation": variation, "privacy": privacy, "speed": speed,
           "train_on_synthetic": tos}
    res["acceptance"] = {"faceness": faceness["synthetic"] >= 0.95, "identity_control": control["accuracy"] >= 0.90,
                         "variation": syn_same <= variation["bound"], "privacy": privacy["clean_rate"] >= 0.99,
                         "speed": speed["images_per_second"] >= 20, "train_on_synthetic": tos["ratio_augmented"]["lfw"] >= 0.90,
                         "train_on_synthetic_best_vs_best": tos["ratio_best"]["lfw"] >= 0.90}
    (out / f"{RESULT}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out / f"{RESULT}.md").write_text(markdown(res))
    print(json.dumps(res["acceptance"]), flush=True)


if __name__ == "__main__":
    main()
