"""vit-embed --ray on one machine: 1 and 2 Ray actors against the local vit-embed.

    python benchmarks/bench_ray.py [--count 5000] [--repeats 2] [--artifact DIR]
                                   [--batch-size 64] [--results DIR]

Generates ``--count`` 128x128 PNGs once, each a 2x2 tile of the bundled held-out digits
(image i: digits i, i+1, i+2, i+3 modulo 360, so no two are equal), exports the bundled
default model with ``vit-export --fmt onnx`` (unless ``--artifact``), then runs, as
separate processes, alternating, ``--repeats`` times each:

    local     vit-embed --artifact A --images D --out O.parquet
    ray x1    vit-embed ... --ray local --actors 1
    ray x2    vit-embed ... --ray local --actors 2

images/s is vit-embed's own figure (``--report``: images over the pipeline's seconds;
for --ray that includes starting the actors and loading the artifact in each, but not
``ray.init``); wall is the whole process (interpreter, imports, Ray start and shutdown,
merge). Every run's output is compared with the first local run's (paths equal, max
|diff| of the embeddings). Writes ``results.json`` and ``results.md`` to
``benchmarks/results/ray/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vit_deploy.assets import heldout_set
from vit_deploy.bench.environment import collect, load_average, package_version
from vit_deploy.embed.pipeline import read_embeddings

RESULTS = Path(__file__).resolve().parent / "results" / "ray"
MODES = {
    "local": [],
    "ray x1": ["--ray", "local", "--actors", "1"],
    "ray x2": ["--ray", "local", "--actors", "2"],
}


def generate_images(folder: Path, count: int) -> float:
    start = time.perf_counter()
    digits = [np.asarray(Image.open(p).convert("RGB")) for p, _ in heldout_set()]
    folder.mkdir(parents=True)
    for i in range(count):
        a, b, c, d = (digits[(i + k) % len(digits)] for k in range(4))
        tile = np.concatenate([np.concatenate([a, b], 1), np.concatenate([c, d], 1)], 0)
        Image.fromarray(tile).save(folder / f"{i:05d}.png")
    return time.perf_counter() - start


def export_default(out: Path) -> float:
    start = time.perf_counter()
    cmd = ["vit-export", "--fmt", "onnx", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def one_run(mode: str, artifact: Path, images: Path, work: Path, args) -> tuple[dict, Path]:
    tag = mode.replace(" ", "")
    out, report = work / f"{tag}.parquet", work / f"{tag}.report.json"
    cmd = ["vit-embed", "--artifact", str(artifact), "--images", str(images), "--out", str(out)]
    cmd += ["--batch-size", str(args.batch_size), "--report", str(report), "--quiet"]
    cmd += ["--no-resume", *MODES[mode]]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    r = json.loads(report.read_text())
    if r["rows"] != args.count or r["failed"] != 0:
        sys.exit(f"{mode}: expected {args.count} rows and 0 failed, got {r['rows']}, {r['failed']}")
    return {
        "mode": mode,
        "images_per_s": r["images_per_s"],
        "pipeline_s": r["seconds"],
        "wall_s": round(wall, 3),
        "load_average": load_average(),
    }, out


def compare(out: Path, reference: tuple[list[str], np.ndarray]) -> float:
    paths, emb = read_embeddings(out)
    if paths != reference[0]:
        sys.exit(f"{out}: rows differ from the local run's (paths or order)")
    return float(np.abs(np.asarray(emb) - reference[1]).max())


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    base = None
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        ips = sorted(r["images_per_s"] for r in mine)
        median = float(np.median(ips))
        base = median if mode == "local" else base
        rows.append({
            "mode": mode,
            "images_per_s_median": round(median, 1),
            "images_per_s_min": ips[0],
            "images_per_s_max": ips[-1],
            "wall_s_median": round(float(np.median([r["wall_s"] for r in mine])), 2),
            "vs_local": round(median / base, 2),
            "max_abs_diff_vs_local": max(r["max_abs_diff_vs_local"] for r in mine),
        })  # fmt: skip
    return rows


def write_markdown(path: Path, result: dict) -> None:
    env = result["environment"]
    lines = [
        "# vit-embed --ray on one machine",
        "",
        f"{result['count']:,} 128x128 PNGs (2x2 tiles of the bundled held-out digits), the "
        "bundled default model as an ONNX artifact on ONNX Runtime (CPU), batch "
        f"{result['batch_size']}, parquet output. Local: vit-embed's defaults (decode threads "
        "one per core, ONNX Runtime's default threads). Ray: a local Ray started by the "
        "command (`--ray local`), actors of one CPU each with one ONNX Runtime thread "
        f"(`--actor-threads` default). Each mode ran {result['repeats']} times, alternating, "
        "each a separate process.",
        "",
        "| mode | images/s, median (min-max) | vs local | wall s, median | max abs diff vs local |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["summary"]:
        lines.append(
            f"| {r['mode']} | {r['images_per_s_median']:,.0f} ({r['images_per_s_min']:,.0f}-"
            f"{r['images_per_s_max']:,.0f}) | {r['vs_local']:.2f} | {r['wall_s_median']:.1f} | "
            f"{r['max_abs_diff_vs_local']:.1e} |"
        )
    lines += [
        "",
        "images/s is vit-embed's own figure (its `--report`): for --ray it counts from "
        "before the actors start (each loads the artifact) to the last chunk written, not "
        "`ray.init`; wall is the whole process, Ray's start and shutdown included. Every "
        "output was checked against the first local run's: the same paths in the same "
        "order, embeddings within the max abs diff shown.",
        "",
        f"Reproduce: `{result['command']}`",
        "",
        f"Environment: {env.get('cpu_model')}, {env.get('cpu_cores_logical')} cores, "
        f"{env.get('memory_total_mb')} MiB; load average before {env['load_average_start']}, "
        f"after {env['load_average_end']} (a shared machine: other people's jobs ran beside "
        "these, so the ratios carry that noise); Python "
        f"{env.get('python')}, onnxruntime {env['versions'].get('onnxruntime')}, ray "
        f"{result['ray_version']}. Image generation ({result['generate_s']:.1f} s) and the "
        f"export ({result['export_s']:.1f} s) are not in the timings. Raw runs: `results.json`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--artifact", type=Path, default=None)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    env = collect()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        generate_s = generate_images(work / "images", args.count)
        artifact, export_s = args.artifact, 0.0
        if artifact is None:
            artifact = work / "artifact"
            export_s = export_default(artifact)
        runs, reference = [], None
        for repeat in range(args.repeats):
            for mode in MODES:
                run, out = one_run(mode, artifact, work / "images", work, args)
                if reference is None:
                    reference = read_embeddings(out)
                    reference = (reference[0], np.array(reference[1]))
                run["repeat"] = repeat
                run["max_abs_diff_vs_local"] = compare(out, reference)
                runs.append(run)
                print(json.dumps(run), flush=True)
                out.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["load_average_end"] = load_average()
    result = {
        "count": args.count,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "command": "python benchmarks/bench_ray.py"
        + (f" --count {args.count}" if args.count != 5000 else "")
        + (f" --repeats {args.repeats}" if args.repeats != 2 else ""),
        "ray_version": package_version("ray"),
        "generate_s": round(generate_s, 2),
        "export_s": round(export_s, 2),
        "environment": env,
        "runs": runs,
        "summary": summarise(runs),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.results / "results.md", result)
    print((args.results / "results.md").read_text())


if __name__ == "__main__":
    main()
