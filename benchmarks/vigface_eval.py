"""Evaluate a trained VIGFace pipeline: identity control, leakage, throughput, and train-on-synthetic.

1. Synthesize N virtual identities x M images (64x64, DDIM) from each prototype source (the
   pipeline's sampler fitted to real prototypes; isotropic random unit vectors, which is where the
   stage-1 frozen-fr512 space's learned virtual prototypes lie) at each guidance scale; time it.
2. Judge them with the evaluator fr128 (not fr512, the prototypes' backbone): same-vs-different
   virtual identity 10-fold accuracy (facecore.metrics), consistency, and leakage against the
   pipeline's real training identities at fr128's FAR=1e-3 threshold on LFW impostor pairs (all
   real faces go through the same 64px -> 112px path as generated ones).
3. Train the same small recognizer (stage 1's IResNet, ArcFace loss) on the synthetic set and on as
   many real LFW training images; compare on LFW View-2 folds 6-10 and AT&T (every genuine pair and as many impostor pairs).

    # GPU machine, with the packs from benchmarks/vigface_train.py --save-pack and its pipeline
    # (results merge into the repository's benchmarks/results/vigface_synthesis.json; copy them back):
    python benchmarks/vigface_eval.py --pipeline runs/vigface_pipe --lfw .carry/vigface/lfw64_eval.npz \\
        --att .carry/vigface/att64.npz --pairs .carry/vigface/pairs.txt --device cuda
    # CPU throughput (2 cores) of the same architecture:
    python benchmarks/vigface_eval.py --pipeline runs/vigface_pipe --throughput-only --device cpu

Writes RESULTS/vigface_synthesis.json/.md (merged with what is there) and vigface_synthesis_grid.png.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from facecore.data import IdentityFolderDataset, read_pairs
from facecore.metrics import cosine_scores, kfold_accuracy, tar_at_far
from facecore.recognizers import create_recognizer
from facecore.training.face_pack import FaceTrainingSet
from vigface_sdk.backbones import iresnet_backbone
from vigface_sdk.heads import margin_logits
from vigface_sdk.pipeline import VIGFacePipeline
from vigface_sdk.synthesis_report import build_report, embed_faces, save_grid

RESULT = "vigface_synthesis"


def load_pack(path: Path, size: int) -> FaceTrainingSet:
    """A ``FaceTrainingSet`` pack, or a face folder packed on the fly (fr128 embeddings, cached)."""
    if path.suffix == ".npz":
        return FaceTrainingSet.load(path)
    return FaceTrainingSet.build(IdentityFolderDataset.from_folder(path), create_recognizer("fr128"), size)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def generate(pipe: VIGFacePipeline, protos: np.ndarray, per_identity: int, guidance: float, steps: int, seed: int,
             batch_size: int) -> tuple[np.ndarray, float]:
    """Images (prototype-major) and images/second (after a warm-up call)."""
    pipe(protos[:1], 1, guidance, steps, seed=seed, batch_size=batch_size)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    images = pipe(protos, per_identity, guidance, steps, seed=seed, batch_size=batch_size, progress=True)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return images, len(images) / (time.perf_counter() - t)


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


# --- train-on-synthetic ------------------------------------------------------------------------
def train_recognizer(images: np.ndarray, labels: np.ndarray, dev: torch.device, minutes: float, epochs: int,
                     batch_size: int, tiny: bool, seed: int = 0) -> torch.nn.Module:
    """Stage 1's IResNet (r18 layout, narrow) with an ArcFace head, trained from scratch (SGD, cosine lr)."""
    torch.manual_seed(seed)
    size = images.shape[1]
    net = iresnet_backbone(layers=(1, 1, 1, 1) if tiny else (2, 2, 2, 2), dim=128, width=8 if tiny else 32, input_size=size).to(dev)
    _, labels = np.unique(labels, return_inverse=True)
    n_cls = int(labels.max()) + 1
    head = torch.nn.Parameter(torch.randn(n_cls, 128, device=dev) * 0.01)
    opt = torch.optim.SGD([{"params": net.parameters(), "weight_decay": 5e-4}, {"params": [head]}], lr=0.1, momentum=0.9)
    x_all = torch.from_numpy(images).to(dev)
    y_all = torch.from_numpy(labels).to(dev)
    steps_per_epoch = max(1, len(images) // batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=total, pct_start=0.1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    start, step = time.monotonic(), 0
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).to(dev)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = x_all[idx].permute(0, 3, 1, 2).contiguous().float().div(255)  # channels-last conv backward crashes on CPU (torch 2.13)
            flip = torch.rand(len(idx), device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            with autocast:
                emb = net(x)
                cos = F.normalize(emb.float(), dim=1) @ F.normalize(head, dim=1).t()
                loss = F.cross_entropy(margin_logits(cos, y_all[idx], "arcface", 0.5, 32.0), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if (time.monotonic() - start) / 60 > minutes:
            break
    print(f"  recognizer: {step} steps, {epoch + 1} epochs, last loss {loss.item():.3f}, {time.monotonic() - start:.0f} s",
          flush=True)
    return net.eval()


@torch.no_grad()
def embed_with(net: torch.nn.Module, images: np.ndarray, dev: torch.device, batch_size: int = 512) -> np.ndarray:
    """Embedding of each image plus its mirror (the arcface_torch evaluation habit)."""
    out = []
    for lo in range(0, len(images), batch_size):
        x = torch.from_numpy(images[lo:lo + batch_size]).to(dev).permute(0, 3, 1, 2).contiguous().float().div(255)
        out.append((net(x) + net(x.flip(3))).float().cpu().numpy())
    return np.concatenate(out)


def verification(net, lfw: FaceTrainingSet, pairs_path: Path, att: FaceTrainingSet | None, dev) -> dict:
    pairs = read_pairs(pairs_path).select(range(5, 10))
    index = {r: i for i, r in enumerate(lfw.relpaths)}
    left = np.asarray([index[p] for p in pairs.left])
    right = np.asarray([index[p] for p in pairs.right])
    used = np.unique(np.r_[left, right])
    emb = np.zeros((len(lfw), 128), np.float32)
    emb[used] = embed_with(net, lfw.images[used], dev)
    s = cosine_scores(emb[left], emb[right])
    out = {"lfw_folds_6_10": {**kfold_accuracy(s, pairs.issame, pairs.folds).to_dict(), "pairs": int(len(s))}}
    if att is not None:
        e = embed_with(net, att.images, dev)
        i, j = np.triu_indices(len(att), 1)
        s, same = cosine_scores(e[i], e[j]), att.labels[i] == att.labels[j]
        # accuracy on every genuine pair and as many seeded impostor pairs (all pairs are 98 % impostors)
        pick = np.r_[np.flatnonzero(same), np.random.default_rng(0).choice(np.flatnonzero(~same), same.sum(), replace=False)]
        out["att"] = {**kfold_accuracy(s[pick], same[pick], np.arange(len(pick)) % 10).to_dict(), "pairs": int(len(pick)),
                      "all_pairs": int(len(s)), **tar_at_far(s, same, (1e-3,))}
    return out


def markdown(res: dict) -> str:
    lines = ["# VIGFace stage 2: synthetic dataset evaluation", ""]
    if "command" in res:
        lines += ["Command:", "", "```", res["command"], "```", ""]
    if "pipeline" in res:
        p = res["pipeline"]
        lines += [f"Pipeline `{p['path']}`: UNet {p['unet_params'] / 1e6:.2f} M params, {p['image_size']}px, trained "
                  f"{p.get('training', {}).get('steps')} steps on {p.get('training', {}).get('images')} faces of "
                  f"{p['training_identities']} identities; evaluator fr128.", ""]
    if res.get("synthesis"):
        lines += ["## Identity control and leakage", "",
                  "| prototypes | guidance | identities x images | identity control (10-fold acc.) | consistency | "
                  "no real identity above FAR=1e-3 | reference (real non-training faces) | img/s |", "|---|---|---|---|---|---|---|---|"]
        for r in res["synthesis"]:
            lk = r["leakage"]
            lines.append(f"| {r['source']} | {r['guidance_scale']} | {r['identities']} x {r['per_identity']} | "
                         f"{100 * r['identity_control']['accuracy']:.2f} % ± {100 * r['identity_control']['std']:.2f} | "
                         f"{r['consistency']['mean']:.3f} | {100 * lk['clean_rate']:.2f} % ({lk['leaks']} leaks) | "
                         f"{100 * lk['reference']['clean_rate']:.2f} % | {r['images_per_second']:.1f} |")
        lines += ["", f"FAR=1e-3 threshold (fr128, {res['synthesis'][0]['leakage']['impostor_pairs']} LFW impostor pairs): "
                      f"{res['synthesis'][0]['leakage']['threshold']:.4f}.", ""]
    if res.get("train_on_synthetic"):
        t = res["train_on_synthetic"]
        lines += ["## Train on synthetic vs real", "",
                  f"Same recognizer ({t['recognizer']}), same number of images ({t['images']}).", "",
                  "| training set | identities | LFW folds 6-10 | AT&T (genuine + as many impostor pairs) | AT&T TAR@FAR=1e-3 (all pairs) |", "|---|---|---|---|---|"]
        for name in ("synthetic", "real"):
            r = t[name]
            att = r.get("att")
            lines.append(f"| {name} | {r['identities']} | {100 * r['lfw_folds_6_10']['accuracy']:.2f} % ± "
                         f"{100 * r['lfw_folds_6_10']['std']:.2f} | " +
                         (f"{100 * att['accuracy']:.2f} % | {att['tar@far=0.001']:.3f}" if att else "- | -") + " |")
        lines += ["", f"Synthetic / real on LFW folds 6-10: **{100 * t['ratio_lfw']:.1f} %** (target >= 90 %).", ""]
    if res.get("throughput"):
        lines += ["## Throughput (64x64, 25 DDIM steps, classifier-free guidance)", "",
                  "| device | images/s | batch | command | note |", "|---|---|---|---|---|"]
        for dev, r in sorted(res["throughput"].items()):
            lines.append(f"| {dev} | {r['images_per_second']:.2f} | {r['batch_size']} | `{r['command']}` | {r.get('note', '')} |")
        lines.append("")
    if res.get("grid"):
        lines += [f"![grid]({res['grid']})", ""]
    return "\n".join(lines)


@click.command()
@click.option("--pipeline", "pipe_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--lfw", type=click.Path(exists=True, path_type=Path), default=None, help="lfw64_eval.npz pack or aligned112 folder.")
@click.option("--att", type=click.Path(exists=True, path_type=Path), default=None, help="att64.npz pack or att_faces folder.")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--identities", "-n", default=692, show_default=True)
@click.option("--per-identity", "-m", default=10, show_default=True)
@click.option("--guidance-scales", default="1.5,3,5", show_default=True)
@click.option("--train-guidance", default=3.0, show_default=True, help="Guidance of the train-on-synthetic set.")
@click.option("--sources", default="sampler,random", show_default=True)
@click.option("--steps", default=25, show_default=True)
@click.option("--batch-size", default=512, show_default=True)
@click.option("--recognizer-minutes", default=2.0, show_default=True, help="Budget of each train-on-X run.")
@click.option("--recognizer-epochs", default=40, show_default=True)
@click.option("--throughput-only", is_flag=True)
@click.option("--throughput-images", default=16, show_default=True)
@click.option("--tiny", is_flag=True, help="Small counts and recognizer (CPU smoke run).")
@click.option("--device", default="auto", show_default=True)
@click.option("--results", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
def main(pipe_dir, lfw, att, pairs, identities, per_identity, guidance_scales, train_guidance, sources, steps, batch_size,
         recognizer_minutes, recognizer_epochs, throughput_only, throughput_images, tiny, device, results, seed) -> None:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dev.type == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 16))
    pipe = VIGFacePipeline.from_pretrained(pipe_dir, device=dev)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{RESULT}.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    protos = pipe.virtual_prototypes(max(identities, throughput_images), seed)
    _, ips = generate(pipe, protos[:throughput_images], 1, 3.0, 25, seed, batch_size)
    res.setdefault("throughput", {})[device_name(dev)] = {"images_per_second": ips, "batch_size": min(batch_size, throughput_images),
                                                         "images": throughput_images, "command": command}
    print(f"throughput on {device_name(dev)}: {ips:.2f} img/s", flush=True)
    if not throughput_only:
        if lfw is None or pairs is None:
            raise click.UsageError("--lfw and --pairs are needed unless --throughput-only")
        res["command"] = command
        size = pipe.image_size
        real = load_pack(lfw, size)
        names = real.identities
        training = set(pipe.metadata.get("training_identities", [])) & set(names)
        if not training:
            raise click.UsageError("none of the pipeline's training identities is in --lfw")
        is_train = np.asarray([names[lab] in training for lab in real.labels])
        fr128 = create_recognizer("fr128")
        emb_dev = dev if dev.type == "cuda" else None
        real_emb = embed_faces(fr128, real.images, device=emb_dev)
        real_args = ((real_emb[is_train], real.labels[is_train], names), (real_emb, real.labels), real_emb[~is_train])
        info = json.loads((pipe_dir / "model_index.json").read_text())
        res["pipeline"] = {"path": str(pipe_dir), "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
                           "image_size": size, "training": info.get("training", {}), "training_identities": len(training),
                           "fingerprint": pipe.fingerprint(), "device": device_name(dev)}
        res["synthesis"], keep = [], None
        for source in sources.split(","):
            p = protos[:identities] if source == "sampler" else random_unit(identities, pipe.unet.cond_dim, seed + 1)
            for g in (float(v) for v in guidance_scales.split(",")):
                images, ips = generate(pipe, p, per_identity, g, steps, seed, batch_size)
                labels = np.repeat(np.arange(identities), per_identity)
                rep = build_report(embed_faces(fr128, images, device=emb_dev), labels, "fr128", *real_args,
                                   n_pairs=600 if tiny else 6000, seed=seed)
                rep["leakage"]["listed"] = rep["leakage"]["listed"][:10]
                res["synthesis"].append({"source": source, "guidance_scale": g, "images_per_second": ips, **rep})
                print(f"{source} g={g}: control {100 * rep['identity_control']['accuracy']:.2f} %, clean "
                      f"{100 * rep['leakage']['clean_rate']:.2f} %, {ips:.1f} img/s", flush=True)
                if source == "sampler" and (keep is None or g == train_guidance):
                    keep = images
        grid_ids = min(8, identities)
        grid = np.concatenate([keep[i * per_identity:i * per_identity + min(8, per_identity)] for i in range(grid_ids)])
        save_grid(grid, results / f"{RESULT}_grid.png", columns=min(8, per_identity),
                  title=f"virtual identities (rows), sampler prototypes, guidance {train_guidance}")
        res["grid"] = f"{RESULT}_grid.png"
        # train on synthetic vs the same number of real training images
        att_set = load_pack(att, size) if att is not None else None
        train_idx = np.flatnonzero(is_train)
        n = min(len(keep), len(train_idx))
        real_pick = np.sort(np.random.default_rng(seed).permutation(train_idx)[:n])
        syn_labels = np.repeat(np.arange(identities), per_identity)[:n]
        bs, minutes, epochs = (64, recognizer_minutes, 2) if tiny else (256, recognizer_minutes, recognizer_epochs)
        tos = {"recognizer": "IResNet r18-layout, width 32, 128-d, ArcFace m=0.5 s=32" if not tiny else "tiny IResNet",
               "images": int(n)}
        for name, imgs, labs in (("synthetic", keep[:n], syn_labels), ("real", real.images[real_pick], real.labels[real_pick])):
            print(f"train on {name}: {len(imgs)} images, {len(np.unique(labs))} identities", flush=True)
            net = train_recognizer(imgs, labs, dev, minutes, epochs, bs, tiny, seed)
            tos[name] = {"identities": int(len(np.unique(labs))), **verification(net, real, pairs, att_set, dev)}
        tos["ratio_lfw"] = tos["synthetic"]["lfw_folds_6_10"]["accuracy"] / tos["real"]["lfw_folds_6_10"]["accuracy"]
        res["train_on_synthetic"] = tos
        print(f"train-on-synthetic LFW 6-10: {100 * tos['synthetic']['lfw_folds_6_10']['accuracy']:.2f} % vs real "
              f"{100 * tos['real']['lfw_folds_6_10']['accuracy']:.2f} % (ratio {100 * tos['ratio_lfw']:.1f} %)", flush=True)
    path.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (results / f"{RESULT}.md").write_text(markdown(res))
    print(f"wrote {path} and {results / f'{RESULT}.md'}")


if __name__ == "__main__":
    main()
