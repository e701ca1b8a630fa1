"""Turn pytest-benchmark JSON of the perf suite into ``OUT.md`` + ``OUT.json``: medians, embeddings/s,
per-face cost and its ratio to the recognizer's per-face cost measured in the same run.

    python benchmarks/perf/summarize.py RAW.json [RAW2.json ...] --out benchmarks/results/perf_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

# Acceptance of issue 5, checked on the CPU rows of ONNX Runtime
MIN_THROUGHPUT, MAX_LATENCY_S, MAX_RATIO = 100_000, 100e-6, 0.01
SECTIONS = {
    "protect": "protect() per backend and batch",
    "model": "Generator alone, outside protect() (upper bounds for compiled backends)",
    "recognizer": "Recognizer being protected (per face, same run)",
    "ort-options": "ONNX Runtime session options (protect() unless 'session only')",
    "baseline": "Baseline template-protection methods (protect_gallery, one user per embedding)",
}


def load_rows(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    rows, machines = [], []
    for path in paths:
        data = json.loads(path.read_text())
        machines.append({"file": path.name, "datetime": data.get("datetime"), **data.get("machine_info", {}).get("perf", {})})
        for bench in data["benchmarks"]:
            info, stats = bench["extra_info"], bench["stats"]
            batch = int(info["batch"])
            rows.append({
                "kind": info["kind"], "backend": info["backend"], "batch": batch, "device": info.get("device", "cpu"),
                "median_s": stats["median"], "iqr_s": stats["iqr"], "min_s": stats["min"], "rounds": stats["rounds"],
                "per_face_s": stats["median"] / batch, "embeddings_per_s": batch / stats["median"],
                "loadavg_1m": info.get("loadavg_1m"), "test": bench["name"],
            })
    return rows, machines


def add_ratios(rows: list[dict]) -> dict[str, dict]:
    """Per device, the recognizer row with the lowest per-face cost. Every other row gets its per-face median
    divided by that row's per-face median (``ratio_to_recognizer``) and its fastest call divided by the
    recognizer's fastest call (``ratio_fastest``: both nearest to an idle machine, for a shared CPU)."""
    reference: dict[str, dict] = {}
    for r in rows:
        if r["kind"] == "recognizer" and (r["device"] not in reference or r["per_face_s"] < reference[r["device"]]["per_face_s"]):
            reference[r["device"]] = r
    for r in rows:
        ref = reference.get(r["device"]) if r["kind"] != "recognizer" else None
        r["ratio_to_recognizer"] = r["per_face_s"] / ref["per_face_s"] if ref else None
        r["ratio_fastest"] = (r["min_s"] / r["batch"]) / (ref["min_s"] / ref["batch"]) if ref else None
    return reference


def acceptance(rows: list[dict]) -> list[dict]:
    """The three CPU criteria for each ONNX Runtime thread setting of the protect() rows."""
    out = []
    for backend in sorted({r["backend"] for r in rows if r["kind"] == "protect" and r["backend"].startswith("onnxruntime cpu")}):
        mine = {r["batch"]: r for r in rows if r["kind"] == "protect" and r["backend"] == backend}
        big = [r for b, r in mine.items() if b >= 1024]
        best = max(big, key=lambda r: r["embeddings_per_s"]) if big else None
        one = mine.get(1)
        if best:
            out.append({"backend": backend, "criterion": "throughput at batch >= 1,024", "target": ">= 100,000 embeddings/s",
                        "measured": f"{best['embeddings_per_s']:,.0f} embeddings/s (batch {best['batch']:,})",
                        "pass": best["embeddings_per_s"] >= MIN_THROUGHPUT})
        if one:
            out.append({"backend": backend, "criterion": "median latency at batch 1", "target": "< 100 µs",
                        "measured": _time(one["median_s"]), "pass": one["median_s"] < MAX_LATENCY_S})
        for label, r in (("batch 1", one), (f"batch {best['batch']:,}" if best else "", best)):
            if r and r["ratio_to_recognizer"] is not None:
                out.append({"backend": backend, "criterion": f"added per-face cost vs fr128, {label}", "target": "< 1 %",
                            "measured": f"{100 * r['ratio_to_recognizer']:.3f} % (medians); {100 * r['ratio_fastest']:.3f} % "
                                        "(fastest calls)", "pass": r["ratio_to_recognizer"] < MAX_RATIO})
    return out


def _time(s: float) -> str:
    return f"{s * 1e6:,.1f} µs" if s < 1e-3 else f"{s * 1e3:,.2f} ms" if s < 1 else f"{s:,.2f} s"


def _ratio(r: dict) -> str:
    if r["ratio_to_recognizer"] is None:
        return ""
    return f"{100 * r['ratio_to_recognizer']:.3f} % ({100 * r['ratio_fastest']:.3f} %)"


def markdown(rows: list[dict], machines: list[dict], reference: dict, checks: list[dict], command: str, title: str,
             notes: list[str]) -> str:
    lines = [f"# {title}", "", *[f"{n}  " for n in notes], f"Summary: `{command}`", ""]
    for m in machines:
        lines += [f"- **{m['file']}** ({m.get('datetime')}): `{m.get('command')}`",
                  f"  - CPU: {m.get('cpu')} ({m.get('cpu_count')} logical CPUs, load average at start "
                  f"{m.get('loadavg_at_start')}); GPU: {m.get('gpu') or 'none'}",
                  f"  - torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')} ({', '.join(m.get('onnxruntime_providers', []))}), "
                  f"TensorRT {m.get('tensorrt') or 'not installed'}, numpy {m.get('numpy')}, Python {m.get('python')}"]
    lines += ["", "Medians over the rounds pytest-benchmark ran (IQR beside them). The CPU is shared with other "
              "jobs, so tails are long; the load average is recorded per benchmark in the JSON.", ""]
    if checks:
        lines += ["## Acceptance (issue 5, ONNX Runtime on the CPU)", "", "| backend | criterion | measured | target | pass |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['backend']} | {c['criterion']} | {c['measured']} | {c['target']} | {'yes' if c['pass'] else '**no**'} |"
                  for c in checks]
        lines.append("")
    if reference:
        lines += ["Recognizer per-face reference: " + "; ".join(
            f"{dev}: {_time(r['per_face_s'])} median, {_time(r['min_s'] / r['batch'])} fastest ({r['backend']}, batch {r['batch']})"
            for dev, r in reference.items()) + ". The last column divides a row's per-face median by the recognizer's "
            "per-face median, and in brackets a row's fastest call by the recognizer's fastest call (both nearest to "
            "an idle machine).", ""]
    for kind, heading in SECTIONS.items():
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        lines += [f"## {heading}", "", "| backend | device | batch | median | IQR | per face | embeddings/s | per face vs recognizer |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(mine, key=lambda r: (r["backend"], r["batch"])):
            lines.append(f"| {r['backend']} | {r['device']} | {r['batch']:,} | {_time(r['median_s'])} | {_time(r['iqr_s'])} | "
                         f"{_time(r['per_face_s'])} | {r['embeddings_per_s']:,.0f} | {_ratio(r)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", nargs="+", type=Path, help="pytest-benchmark JSON file(s)")
    parser.add_argument("--out", required=True, type=Path, help="output stem: writes OUT.md and OUT.json")
    parser.add_argument("--title", default="protect() performance")
    parser.add_argument("--note", action="append", default=[], help="a line to print under the title (repeatable)")
    args = parser.parse_args(argv)
    rows, machines = load_rows(args.raw)
    reference = add_ratios(rows)
    checks = acceptance(rows)
    command = shlex.join(["python", "benchmarks/perf/summarize.py", *(argv if argv is not None else sys.argv[1:])])
    summary = {"command": command, "notes": args.note, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machines": machines, "acceptance": checks,
               "recognizer_reference": {d: {"backend": r["backend"], "batch": r["batch"], "per_face_s": r["per_face_s"]}
                                        for d, r in reference.items()},
               "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(summary, indent=2) + "\n"),
                         (".md", markdown(rows, machines, reference, checks, command, args.title, args.note) + "\n")):
        path = args.out.with_name(args.out.name + suffix)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(f"wrote {args.out}.md and {args.out}.json ({len(rows)} benchmarks)")


if __name__ == "__main__":
    main()
