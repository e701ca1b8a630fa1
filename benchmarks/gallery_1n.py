"""1:N identification with protected galleries: raw vs AdvFace vs keyed templates, FAISS exact vs HNSW vs IVF vs Milvus.

Protocol (fr128 embeddings of ``data/lfw/aligned112`` and ``data/att_faces``, cached in $FACEPRIV_CACHE):
every LFW identity with >= 2 images enrolls its first image (1,680 mates); its other images are the mated
searches. Distractors: all 4,069 LFW people with a single image and the 400 AT&T images (real faces of
other people), then embeddings drawn from a Gaussian fitted (mean + full covariance) to the unit-length
LFW embeddings, re-normalised, up to 10 k / 100 k / 1 M distractors. Non-mated searches: the same probes
with their own mate left out (the best score among the other enrolled people), so every probe is both a
mated and a non-mated search. Rank-1 = the mate is the top candidate; TPIR at FPIR f = share of mated
searches whose rank-1 mate scores above the threshold that f of the non-mated searches exceed.
Stored templates: raw (unprotected), AdvFace (the shipped fr128 protector) and keyed AdvFace (a fresh
deployment key, probes prepared with it; ``--keyed-backends``) and bucketed keyed AdvFace (a key with
``--buckets`` buckets: each template in its id's bucket, a store partition; each probe prepared for
every bucket and the per-bucket top-k lists merged). The templates of a size and mode are
protected once and enrolled into each index as already-protected templates; build time = that
protection time + enroll (chunked commits) + index build (+ IVF retraining on all templates by
``rebuild``) + checkpoint. Approximate indexes (HNSW, IVF at each ``--ivf-nprobe``) report recall@1 and
recall@10 against exact search of the same templates. Timings run on one thread (OMP/FAISS), gallery code
included (normalisation, id mapping, probe preparation). Milvus: Milvus Lite (a local file, its engine a child
process) and, with ``--milvus-uri``, a Milvus server (``milvus-server-flat``, searched at consistency ``Strong``
and ``Bounded``; its CPU counts when ``--milvus-server-pid`` names its process; each run's collections are
dropped at the end).

    OMP_NUM_THREADS=1 FACEPRIV_SHARED=/path/to/shared python benchmarks/gallery_1n.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from advface_sdk import DeploymentKey, Gallery, Protector
from facecore.data import IdentityFolderDataset
from facecore.embeddings import extract_embeddings, l2_normalize
from facecore.paths import shared_path
from facecore.recognizers import create_recognizer

NAME = "gallery_1n"
BACKENDS = ("faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus-lite-flat", "milvus-server-flat")
#: consistency levels a Milvus server configuration is searched at (one row each)
SERVER_CONSISTENCY = ("Strong", "Bounded")
MODES = ("raw", "advface", "keyed", "bucketed")
FPIRS = (1e-2, 1e-3)
K = 20
CHUNK = 65536


def load_protocol(seed: int) -> dict:
    rec = create_recognizer("fr128")
    lfw = IdentityFolderDataset.from_folder(shared_path("data", "lfw", "aligned112"))
    att = IdentityFolderDataset.from_folder(shared_path("data", "att_faces"))
    emb = extract_embeddings(rec, lfw)
    att_emb = extract_embeddings(rec, att)
    counts = np.bincount(lfw.labels)
    first = {}
    mate_rows, probe_rows, single_rows = [], [], []
    for i, lab in enumerate(lfw.labels.tolist()):
        if counts[lab] == 1:
            single_rows.append(i)
        elif lab not in first:
            first[lab] = i
            mate_rows.append(i)
        else:
            probe_rows.append(i)
    unit = l2_normalize(emb.astype(np.float64))
    return {"recognizer": rec, "mates": emb[mate_rows], "mate_ids": [f"m:{lfw.identities[lfw.labels[i]]}" for i in mate_rows],
            "probes": emb[probe_rows], "probe_mates": np.asarray([f"m:{lfw.identities[lfw.labels[i]]}" for i in probe_rows]),
            "real_distractors": np.concatenate([emb[single_rows], att_emb]), "mean": unit.mean(0), "cov": np.cov(unit.T),
            "n_single": len(single_rows), "n_att": len(att_emb), "seed": seed}


def distractors(p: dict, n: int) -> np.ndarray:
    real = p["real_distractors"][:n]
    rng = np.random.default_rng(p["seed"])
    fake = rng.multivariate_normal(p["mean"], p["cov"], size=max(0, n - len(real)), method="cholesky").astype(np.float32)
    return np.concatenate([real, l2_normalize(fake)])


def metrics(ids: np.ndarray, scores: np.ndarray, mates: np.ndarray) -> dict:
    hit = ids == mates[:, None]
    rank1 = hit[:, 0]
    nonmate = ~hit & (ids != "")
    first_nonmate = nonmate.argmax(1)
    nonmated = scores[np.arange(len(ids)), first_nonmate]
    out = {"rank1": float(rank1.mean()), "cmc": [float(hit[:, :r].any(1).mean()) for r in range(1, K + 1)],
           "n_mated": int(len(ids)), "n_nonmated": int(len(ids))}
    for f in FPIRS:
        t = float(np.quantile(nonmated, 1 - f, method="higher"))
        out[f"tpir@fpir={f:g}"] = float((rank1 & (scores[:, 0] > t)).mean())
        out[f"threshold@fpir={f:g}"] = t
    grid = np.logspace(-4, 0, 60)
    ts = np.quantile(nonmated, 1 - grid)
    out["det"] = {"fpir": grid.tolist(), "fnir": [float(1 - (rank1 & (scores[:, 0] > t)).mean()) for t in ts]}
    return out


def build(path: Path, store: str, options: dict, protector: Protector | None, fingerprint: str, ids: list[str],
          x: np.ndarray) -> tuple[float, float]:
    """Enroll ``x`` (already-protected templates when ``protector``) chunk by chunk; IVF is retrained on all of them.
    Returns wall and CPU seconds."""
    start, cpu = time.perf_counter(), cpu_seconds()
    g = (Gallery.create(path, protector, store=store, **options) if protector is not None
         else Gallery.create(path, None, store=store, dim=x.shape[1], recognizer_fingerprint=fingerprint, **options))
    for s in range(0, len(ids), CHUNK):
        if protector is None:
            g.enroll(ids[s:s + CHUNK], x[s:s + CHUNK])
        else:
            g.enroll(ids[s:s + CHUNK], x[s:s + CHUNK], protected_by=g.protector_id, key_id=g.key_id)
    g.close()
    if options.get("index") == "ivf":  # the first commit trained it on CHUNK rows: retrain on all (gallery rebuild)
        Gallery.open(path, protector=protector, rebuild_index=True).close()
    return time.perf_counter() - start, cpu_seconds() - cpu


def timed_search(g: Gallery, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    ids, scores = [], []
    start, cpu = time.perf_counter(), cpu_seconds()
    for s in range(0, len(probes), 1024):
        hits = g.search(probes[s:s + 1024], k=K)
        ids.append(hits.ids)
        scores.append(hits.scores)
    total, total_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    lat, lat_cpu = [], []
    for i in range(200):
        t, c = time.perf_counter(), cpu_seconds()
        g.search(probes[i:i + 1], k=K)
        lat.append(time.perf_counter() - t)
        lat_cpu.append(cpu_seconds() - c)
    perf = {"throughput_batch1024_per_s": len(probes) / total, "throughput_batch1024_per_cpu_s": len(probes) / total_cpu,
            "latency_batch1_p50_ms": 1e3 * float(np.percentile(lat, 50)), "latency_batch1_p99_ms": 1e3 * float(np.percentile(lat, 99)),
            "cpu_batch1_p50_ms": 1e3 * float(np.percentile(lat_cpu, 50)), "cpu_batch1_p99_ms": 1e3 * float(np.percentile(lat_cpu, 99))}
    return np.concatenate(ids), np.concatenate(scores), perf


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_descendants(kid)]
    return out


#: other processes whose CPU counts as the search's (``--milvus-server-pid``: a Milvus server on this machine)
EXTRA_PIDS: list[int] = []


def cpu_seconds() -> float:
    """CPU seconds of this process, its live child processes (the Milvus Lite server runs as one) and
    :data:`EXTRA_PIDS` with their children."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    pids = [*_descendants(os.getpid()), *(q for pid in EXTRA_PIDS for q in (pid, *_descendants(pid)))]
    for pid in pids if Path("/proc/self/task").is_dir() else []:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def server_description(uri: str, pid: int | None) -> str:
    """The Milvus server's version and where it runs, for the report (no credentials)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""))
    try:
        version = client.get_server_version()
    finally:
        client.close()
    where = f"on this machine (pid {pid}, its CPU counted)" if pid else "its CPU not counted"
    return f"Milvus {version} at {uri.split('@')[-1]}, {where}"


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, exact)]))


def bytes_per_template(g: Gallery) -> float | None:
    """Index file (FAISS) or Milvus Lite data on disk per template; ``None`` where the data is not here (a server)."""
    info = g.store.info()
    size = info.get("index_bytes") or info.get("bytes_on_disk")
    return None if size is None else size / max(1, len(g))


def run(args, report) -> dict:
    faiss.omp_set_num_threads(1)
    p = load_protocol(args.seed)
    fingerprint = p["recognizer"].fingerprint
    configs = [("faiss-flat", "faiss", {"index": "flat"}),
               ("faiss-ivf", "faiss", {"index": "ivf", "nprobe": args.ivf_nprobe[0]}),
               ("faiss-hnsw", "faiss", {"index": "hnsw", "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
                                        "ef_search": args.ef_search}),
               ("milvus-lite-flat", "milvus", {"index": "flat"}),
               ("milvus-server-flat", "milvus", {"index": "flat", "uri": args.milvus_uri})]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="gallery1n-", dir=args.work))
    plain = Protector("fr128")
    key = DeploymentKey.generate(plain.artifact.protector_id)  # a fresh key, never written: the benchmark's own
    bucket_key = DeploymentKey.generate(plain.artifact.protector_id, args.buckets)
    protectors = {"raw": None, "advface": plain, "keyed": Protector("fr128", key=key),
                  "bucketed": Protector("fr128", key=bucket_key)}
    protocol = {"mates": len(p["mate_ids"]), "mated_searches": len(p["probes"]),
                "real_distractors": {"lfw_single_image_people": p["n_single"], "att_images": p["n_att"]},
                "synthetic_distractors": "Gaussian fitted to unit-length fr128 LFW embeddings (mean + full covariance), re-normalised",
                "k": K, "recognizer": "fr128", "fingerprint": fingerprint, "protector": "fr128 (shipped)",
                "key": f"a fresh deployment key ({key.key_id}) for the keyed mode",
                "bucket_key": f"a fresh deployment key with {args.buckets} buckets ({bucket_key.key_id})",
                "ivf": "IVF-Flat, nlist = 4*sqrt(templates), spherical k-means (10 iterations, <= 64 points per list) on "
                       "all templates (`gallery rebuild` after the chunked enroll)",
                "hnsw": {"M": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}}
    if args.milvus_uri:
        protocol["milvus_server"] = server_description(args.milvus_uri, args.milvus_server_pid)
    def todo_for(size: int, mode: str) -> list:
        wanted = args.keyed_backends if mode in ("keyed", "bucketed") else args.backends
        return [c for c in configs if c[0] in wanted and not (c[1] == "milvus" and size > args.milvus_max)]

    def variants(label: str) -> list[tuple[str, dict]]:
        """(row name, options the gallery is opened with) of each row a configuration gives."""
        if label == "faiss-ivf":
            return [(f"{label}(nprobe={n})", {"nprobe": n}) for n in args.ivf_nprobe]
        if label == "milvus-server-flat":
            return [(f"{label}({c})", {"consistency": c}) for c in SERVER_CONSISTENCY]
        return [(label, {})]

    planned = [f"{size:,} {MODE_NAMES[mode]} {name}"
               for size in args.sizes for mode in args.modes for label, _, _ in todo_for(size, mode)
               for name, _ in variants(label)]
    server_galleries: list[Path] = []  # deleted with Gallery.delete: their collections outlive the folders
    try:
        for size in args.sizes:
            d = distractors(p, size)
            ids = p["mate_ids"] + [f"d:{i}" for i in range(len(d))]
            x = np.concatenate([p["mates"], d])
            del d
            for mode in args.modes:
                todo = todo_for(size, mode)
                if not todo:
                    continue
                prot = protectors[mode]
                t, c = time.perf_counter(), cpu_seconds()
                templates = x if prot is None else prot.protect(x, users=ids if mode == "bucketed" else None)
                protect_s, protect_cpu = time.perf_counter() - t, cpu_seconds() - c
                exact = None
                for label, store, options in todo:
                    path = work / f"{size}-{mode}-{label}"
                    if label == "milvus-server-flat":
                        options = {**options, "collection": f"gallery1n_{os.getpid()}_{size}_{mode}"}
                        server_galleries.append(path)
                    seconds, cpu = build(path, store, options, prot, fingerprint, ids, templates)
                    for name, extra in variants(label):
                        g = Gallery.open(path, protector=prot, **extra)
                        found, scores, perf = timed_search(g, p["probes"])
                        row = {"distractors": size, "templates": len(g), "mode": mode, "protected": mode != "raw",
                               "backend": name, "build_s": protect_s + seconds, "build_cpu_s": protect_cpu + cpu,
                               "protect_s": protect_s, "bytes_per_template": bytes_per_template(g), "store_info": portable(g.store.info(), work),
                               **perf, **metrics(found, scores, p["probe_mates"])}
                        if label == "faiss-flat":
                            exact = found
                        elif exact is not None:
                            row["recall@1_vs_exact"] = recall(found, exact, 1)
                            row["recall@10_vs_exact"] = recall(found, exact, 10)
                            row["rank1_agreement_vs_exact"] = float((found[:, 0] == exact[:, 0]).mean())
                        g.close()
                        rows.append(row)
                        print(f"{size:>8} {mode:>7} {name:>22}: rank-1 {100 * row['rank1']:.2f} %  "
                              f"TPIR@1e-3 {100 * row['tpir@fpir=0.001']:.2f} %  {perf['throughput_batch1024_per_cpu_s']:.0f} probes/cpu-s  "
                              f"p50 {perf['cpu_batch1_p50_ms']:.2f} ms cpu  build {row['build_s']:.1f} s ({row['build_cpu_s']:.1f} cpu-s)"
                              + (f"  recall@10 {row['recall@10_vs_exact']:.4f}" if "recall@10_vs_exact" in row else ""), flush=True)
                        report({"rows": rows, "protocol": protocol, "planned": planned})
                    if label == "milvus-server-flat":
                        Gallery.delete(server_galleries.pop())
                    shutil.rmtree(path, ignore_errors=True)
                del templates
    finally:
        for path in server_galleries:
            if path.exists():
                Gallery.delete(path)
        shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows, "protocol": protocol, "planned": planned}


MODE_NAMES = {"raw": "raw", "advface": "AdvFace", "keyed": "keyed AdvFace", "bucketed": "bucketed keyed AdvFace"}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (det, cmc, scale) = plt.subplots(1, 3, figsize=(16, 4.8))
    exact = [r for r in result["rows"] if r["backend"] == "faiss-flat"]
    sizes_with_advface = {r["distractors"] for r in exact if r["mode"] == "advface"}
    for row in exact:
        if row["mode"] in ("keyed", "bucketed") and row["distractors"] in sizes_with_advface:
            continue  # = AdvFace up to rounding
        label = f"{row['distractors']:,} distr., {MODE_NAMES[row['mode']]}"
        style = "-" if row["protected"] else "--"
        det.plot(row["det"]["fpir"], row["det"]["fnir"], style, label=label)
        cmc.plot(range(1, K + 1), row["cmc"], style, marker=".", label=label)
    for mode, color in (("raw", "tab:gray"), ("advface", "tab:blue"), ("keyed", "tab:green"), ("bucketed", "tab:olive")):
        rows = sorted((r for r in exact if r["mode"] == mode), key=lambda r: r["distractors"])
        if not rows:
            continue
        sizes = [r["distractors"] for r in rows]
        for metric, style, name in (("rank1", "-o", "rank-1"), ("tpir@fpir=0.01", "--s", "TPIR@FPIR 1e-2"),
                                    ("tpir@fpir=0.001", ":^", "TPIR@FPIR 1e-3")):
            scale.plot(sizes, [100 * r[metric] for r in rows], style, color=color, label=f"{MODE_NAMES[mode]} {name}",
                       alpha=0.6 if mode in ("keyed", "bucketed") else 1.0)
    det.set_xscale("log")
    det.set_xlabel("FPIR (non-mated searches above threshold)")
    det.set_ylabel("FNIR (mated searches missed at rank 1)")
    det.set_title("DET, exact search (FAISS flat)")
    cmc.set_xlabel("rank")
    cmc.set_ylabel("identification rate")
    cmc.set_title("CMC")
    scale.set_xscale("log")
    scale.set_xlabel("distractors in the gallery")
    scale.set_ylabel("%")
    scale.set_title("rank-1 and TPIR vs gallery size (exact)")
    for ax in (det, cmc, scale):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a keyed-only run draws no raw / AdvFace curves
            ax.legend(fontsize=6)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _partial(result: dict) -> list[str]:
    """A line saying which planned configurations have no row yet (a run still going, or stopped)."""
    done = {f"{r['distractors']:,} {MODE_NAMES[r['mode']]} {r['backend']}" for r in result["rows"] if "mode" in r}
    missing = [c for c in result.get("planned", []) if c not in done]
    if not missing:
        return []
    return [f"**Partial**: {len(result['planned']) - len(missing)} of {len(result['planned'])} planned configurations "
            f"measured so far; not (yet) measured: {'; '.join(missing)}.", ""]


def to_markdown(result: dict, name: str = NAME) -> str:
    p = result["protocol"]
    lines = [
        "# 1:N identification with protected galleries (fr128, LFW + distractors)", "",
        f"Command: `{result['command']}`", "",
        *_partial(result),
        f"{p['mates']:,} LFW people enrolled with one image each; {p['mated_searches']:,} mated searches (their other "
        f"images), each also a non-mated search with its own mate left out. Distractors: "
        f"{p['real_distractors']['lfw_single_image_people']:,} LFW single-image people + {p['real_distractors']['att_images']} "
        f"AT&T images (real), the rest synthetic: {p['synthetic_distractors']}. Stored: raw = unprotected templates; "
        "AdvFace = templates of the shipped fr128 protector, searched with clean probes; keyed = AdvFace under "
        f"{p.get('key', 'a deployment key')}, probes prepared with the key; bucketed = AdvFace under "
        f"{p.get('bucket_key', 'a bucketed key')}, each probe prepared for every bucket, each bucket searched in its partition. IVF: {p.get('ivf', '')}. HNSW: {p.get('hnsw', '')}. "
        "One CPU thread (OMP_NUM_THREADS=1) on a 2-core machine shared with other jobs: throughput and latency are "
        "given per CPU-second of the search process and its children (the Milvus Lite server; the one-core figure; a Milvus "
        f"server's process counts too: {p.get('milvus_server', 'none in this run')}) and, in brackets, in wall time, which counts "
        "the time other processes held the CPU; batch 1 latency over 200 probes, throughput over all probes in batches of "
        "1,024; bytes/template = index file (FAISS) or Milvus Lite data on disk over templates; build = protect + commit "
        "+ index (+ IVF retraining) + checkpoint, wall seconds (CPU seconds). Recall@1 / recall@10 are against exact "
        "FAISS search of the same templates.", "",
        "| distractors | templates | stored | backend | rank-1 | TPIR@FPIR 1e-2 | TPIR@FPIR 1e-3 | probes per CPU-s (wall) "
        "batch 1024 | batch 1 p50 / p99 ms CPU (wall) | bytes/template | build s (CPU s) | recall@1 / @10 vs exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mode = r.get("mode", "advface" if r["protected"] else "raw")
        rec = (f"{r['recall@1_vs_exact']:.4f} / {r['recall@10_vs_exact']:.4f}" if "recall@1_vs_exact" in r
               else f"– / {r['recall@10_vs_exact']:.4f}" if "recall@10_vs_exact" in r else "exact")
        cpu = f" ({r['build_cpu_s']:.0f})" if "build_cpu_s" in r else ""
        lines.append(
            f"| {r['distractors']:,} | {r['templates']:,} | {MODE_NAMES[mode]} | {r['backend']} "
            f"| {100 * r['rank1']:.2f} % | {100 * r['tpir@fpir=0.01']:.2f} % | {100 * r['tpir@fpir=0.001']:.2f} % "
            f"| {r['throughput_batch1024_per_cpu_s']:,.0f} ({r['throughput_batch1024_per_s']:,.0f}) "
            f"| {r['cpu_batch1_p50_ms']:.2f} / {r['cpu_batch1_p99_ms']:.2f} ({r['latency_batch1_p50_ms']:.2f} / {r['latency_batch1_p99_ms']:.2f}) "
            f"| {'–' if r['bytes_per_template'] is None else format(r['bytes_per_template'], '.0f')} | {r['build_s']:.0f}{cpu} | {rec} |")
    summary = []
    for size in sorted({r["distractors"] for r in result["rows"]}):
        by = {r.get("mode", "advface" if r["protected"] else "raw"): r for r in result["rows"]
              if r["distractors"] == size and r["backend"] == "faiss-flat"}
        if "raw" in by and "advface" in by:
            def chain(metric, by=by):
                return " → ".join(f"{100 * by[m][metric]:.2f} %" for m in MODES if m in by)
            summary.append(f"- {size:,} distractors: rank-1 {chain('rank1')} ({100 * (by['advface']['rank1'] - by['raw']['rank1']):+.2f} "
                         f"points AdvFace vs raw); TPIR@FPIR 1e-2 {chain('tpir@fpir=0.01')}; TPIR@FPIR 1e-3 {chain('tpir@fpir=0.001')}")
    if summary:
        lines += ["", "Exact search (FAISS flat), raw → AdvFace (→ keyed → bucketed):", "", *summary]
    costs = []
    for size in sorted({r["distractors"] for r in result["rows"]}):
        for backend in dict.fromkeys(r["backend"] for r in result["rows"]):
            by = {r.get("mode"): r for r in result["rows"] if r["distractors"] == size and r["backend"] == backend}
            if "keyed" in by and "bucketed" in by:
                plain, bucketed = (by[m]["throughput_batch1024_per_cpu_s"] for m in ("keyed", "bucketed"))
                costs.append(f"- {size:,} distractors, {backend}: {bucketed:,.0f} probes per CPU-second bucketed vs "
                             f"{plain:,.0f} with the plain key ({plain / bucketed:.1f}× the CPU per probe); batch-1 latency "
                             f"p50 {by['bucketed']['latency_batch1_p50_ms']:.1f} vs {by['keyed']['latency_batch1_p50_ms']:.1f} ms wall")
    if costs:
        lines += ["", "What the bucketed key costs per backend (same templates, same run):", "", *costs]
    lines += ["", f"Picture: `{name}.png` (DET and CMC of exact search; rank-1 and TPIR vs gallery size). Environment: "
              f"{result['environment']}. Written {result['written']} in {result['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def portable(info: dict, work: Path) -> dict:
    """Store info with paths inside the scratch folder written relative to it (results name no machine paths)."""
    return {k: f"<scratch>/{Path(v).relative_to(work)}" if isinstance(v, str) and v.startswith(f"{work}/") else v
            for k, v in info.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="distractor counts")
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS,
                        help="configurations to run [default: all; milvus-server-flat only with --milvus-uri]")
    parser.add_argument("--name", default=NAME, help="stem of the result files")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="stored templates to compare")
    parser.add_argument("--keyed-backends", nargs="+", default=["faiss-flat"], choices=BACKENDS,
                        help="configurations run with keyed templates (exact search equals AdvFace's up to rounding)")
    parser.add_argument("--buckets", type=int, default=64, help="buckets of the bucketed mode's key")
    parser.add_argument("--ivf-nprobe", type=int, nargs="+", default=[32, 128], help="IVF lists searched (one row each)")
    parser.add_argument("--milvus-max", type=int, default=10_000, help="largest distractor count run on Milvus (Lite or server)")
    parser.add_argument("--milvus-uri", default=None, help="a Milvus server for milvus-server-flat, e.g. http://127.0.0.1:19530")
    parser.add_argument("--milvus-server-pid", type=int, default=None,
                        help="the Milvus server's process on this machine: its CPU counts as the search's")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for the galleries (default: system temp)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: re-write NAME.md and NAME.png from the NAME.json of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((args.out / f"{args.name}.json").read_text())
        plot(result, args.out / f"{args.name}.png")
        (args.out / f"{args.name}.md").write_text(to_markdown(result, args.name))
        print(f"re-wrote {args.out / args.name}.md, .png")
        return 0
    if args.backends is None:
        args.backends = [b for b in BACKENDS if args.milvus_uri or b != "milvus-server-flat"]
    if ("milvus-server-flat" in args.backends or "milvus-server-flat" in args.keyed_backends) and not args.milvus_uri:
        parser.error("milvus-server-flat needs --milvus-uri (a running Milvus server)")
    if args.milvus_server_pid is not None:
        EXTRA_PIDS.append(args.milvus_server_pid)
    import pymilvus

    start = time.perf_counter()
    shown = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    masks = {"--work": "<scratch>", "--milvus-server-pid": "<pid>"}  # no machine paths or process ids
    shown = [masks.get(shown[i - 1], a) if i else a for i, a in enumerate(shown)]
    command = shlex.join(["python", "benchmarks/gallery_1n.py", *shown])
    args.out.mkdir(parents=True, exist_ok=True)

    def report(partial: dict) -> None:
        """(Re)write JSON, Markdown and picture after every configuration: a long run leaves what it measured."""
        result = {"command": command, **partial, "seconds": time.perf_counter() - start,
                  "environment": f"python {platform.python_version()}, faiss {faiss.__version__}, pymilvus "
                                 f"{pymilvus.__version__}, numpy {np.__version__}, {platform.machine()}",
                  "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        plot(result, args.out / f"{args.name}.png")
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{args.name}.md").write_text(to_markdown(result, args.name))

    run(args, report)
    print(f"wrote {args.out / args.name}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
