"""vit-embed at scale: images/s and peak resident memory at 1,000 and 10,000 images.

    python benchmarks/bench_embed.py [--counts 1000,10000] [--formats parquet,npy]
                                     [--repeats 3] [--artifact DIR] [--results DIR]

Generates 64x64 PNGs of random shapes over noise in a temp folder (generation time is
reported, not measured), exports the bundled default model with ``vit-export --fmt onnx``
(unless ``--artifact`` is given), then runs the ``vit-embed`` console script once per
(count, format, repeat) as a separate process, under a small wrapper process that
records the child's peak resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, so
nothing of the benchmark itself is counted) and samples its RSS every 50 ms for the plot.

Images/s is what vit-embed reports for its pipeline (decode + model + chunk writes, from
its ``--report``); the wall time of the whole process (interpreter start, imports,
artifact load, merge) is recorded beside it. Writes ``results.json``, ``results.md`` and
``rss.png`` to ``benchmarks/results/embed/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "embed"
IMAGE_SIZE = 64

# Runs in a fresh interpreter: starts the command, samples its RSS, reports its peak.
WRAPPER = r"""
import json, resource, subprocess, sys, time
import psutil
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
watched = psutil.Process(proc.pid)
samples = []
while proc.poll() is None:
    try:
        rss = watched.memory_info().rss
    except psutil.Error:
        rss = 0
    if rss:  # 0: exited, not yet reaped
        samples.append((round(time.perf_counter() - start, 3), rss))
    time.sleep(0.05)
out = proc.stdout.read().decode(errors="replace")
wall = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"returncode": proc.returncode, "wall_s": wall, "peak_rss_kib": peak_kib,
                  "samples": samples, "output": out[-2000:]}))
"""


def generate_images(folder: Path, count: int, seed: int = 0) -> float:
    """``count`` PNGs: a noisy background and 1-4 random ellipses, boxes or triangles."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(count):
        base = rng.integers(0, 256, 3)
        noise = rng.normal(0, 25, (IMAGE_SIZE, IMAGE_SIZE, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = rng.integers(0, IMAGE_SIZE - 8, 2)
            x1, y1 = x0 + rng.integers(6, 40), y0 + rng.integers(6, 40)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = int(rng.integers(0, 3))
            if shape == 0:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            elif shape == 1:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
            else:
                draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
        img.save(folder / f"{i:06d}.png")
    return time.perf_counter() - start


def subset(source: Path, folder: Path, count: int) -> None:
    """The first ``count`` images of ``source``, hard-linked (no copy, same bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(source))[:count]:
        os.link(source / name, folder / name)


def export_default(out: Path) -> float:
    start = time.perf_counter()
    cmd = ["vit-export", "--fmt", "onnx", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def measure(cmd: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def one_run(artifact: Path, images: Path, count: int, fmt: str, work: Path, args) -> dict:
    out = work / f"emb-{count}.{fmt}"
    report = work / f"report-{count}-{fmt}.json"
    cmd = ["vit-embed", "--artifact", str(artifact), "--images", str(images), "--out", str(out)]
    cmd += ["--batch-size", str(args.batch_size), "--report", str(report), "--quiet"]
    cmd += ["--no-resume"] + (["--workers", str(args.workers)] if args.workers is not None else [])
    cmd += ["--threads", str(args.threads)] if args.threads is not None else []
    m = measure(cmd)
    if m["returncode"] != 0:
        sys.exit(f"vit-embed exited {m['returncode']}:\n{m['output']}")
    r = json.loads(report.read_text())
    if r["rows"] != count or r["failed"] != 0:
        sys.exit(f"expected {count} rows and 0 failed, got {r['rows']} and {r['failed']}")
    size = out.stat().st_size
    for leftover in (out, report, work / f"emb-{count}.{fmt}.errors.jsonl"):
        leftover.unlink(missing_ok=True)
    (work / f"emb-{count}.{fmt}.paths.txt").unlink(missing_ok=True)
    return {
        "count": count,
        "format": fmt,
        "images_per_s": r["images_per_s"],
        "pipeline_s": r["seconds"],
        "wall_s": round(m["wall_s"], 3),
        "peak_rss_mib": round(m["peak_rss_kib"] / 1024, 1),
        "output_bytes": size,
        "rss_samples": [(t, round(b / 2**20, 1)) for t, b in m["samples"]],
        "command": " ".join(cmd[:7] + ["..."]),
    }


def environment() -> dict:
    import onnxruntime
    import PIL
    import psutil
    import pyarrow

    import vit_deploy

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "vit_deploy": vit_deploy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "pyarrow": pyarrow.__version__,
    }


def summarise(runs: list[dict], counts: list[int], formats: list[str]) -> list[dict]:
    """Per (count, format): median and range of images/s over the repeats, worst peak RSS."""
    rows = []
    for fmt in formats:
        for c in counts:
            mine = [r for r in runs if r["count"] == c and r["format"] == fmt]
            rate = sorted(r["images_per_s"] for r in mine)
            rows.append(
                {
                    "count": c,
                    "format": fmt,
                    "runs": len(mine),
                    "images_per_s_median": round(float(np.median(rate)), 1),
                    "images_per_s_min": rate[0],
                    "images_per_s_max": rate[-1],
                    "wall_s_median": round(float(np.median([r["wall_s"] for r in mine])), 2),
                    "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
                }
            )
    return rows


def write_markdown(path: Path, result: dict) -> None:
    env = result["environment"]
    lines = [
        "# vit-embed at scale",
        "",
        f"The bundled default model ({result['model']}) as an ONNX artifact on ONNX Runtime "
        f"(CPU), {IMAGE_SIZE}x{IMAGE_SIZE} PNGs of random shapes over noise, batch "
        f"{result['batch_size']}, decode workers: {result['workers']}, ORT threads: "
        f"{result['threads']}. Every run is a separate `vit-embed` process; each (count, format) "
        f"ran {result['repeats']} times, counts alternating.",
        "",
        "| images | format | images/s, median (min-max) | wall s, median | peak RSS MiB, max |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in result["summary"]:
        lines.append(
            f"| {r['count']:,} | {r['format']} | {r['images_per_s_median']:,.0f} "
            f"({r['images_per_s_min']:,.0f}-{r['images_per_s_max']:,.0f}) "
            f"| {r['wall_s_median']:.1f} | {r['peak_rss_mib_max']:.0f} |"
        )
    lines += ["", "Peak RSS, largest count over smallest, same format (1.00 = flat):", ""]
    for fmt, ratio in result["peak_rss_ratio"].items():
        lines.append(f"- {fmt}: {ratio:.2f}")
    lines += [
        "",
        "images/s is vit-embed's own figure for its pipeline (decode, model, chunk writes); "
        "wall is the whole process (interpreter start, imports, artifact load, merge, exit). "
        "vit-embed on an ONNX artifact never imports torch; the resident memory is the "
        "interpreter, ONNX Runtime with its session, the decode workers and one chunk.",
        "",
        "![RSS over time](rss.png)",
        "",
        f"Reproduce: `{result['command']}`",
        "",
        f"Environment: {env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB; "
        f"load average before {env['load_average_before']}, after "
        f"{env['load_average_after']} (a shared machine: other work ran beside this, hence "
        f"the spread); Python {env['python']}, onnxruntime {env['onnxruntime']}, numpy "
        f"{env['numpy']}, Pillow {env['pillow']}, pyarrow {env['pyarrow']}. Image generation "
        f"({result['generation_s']:.1f} s) and the export ({result['export_s']:.1f} s) are "
        "not in the timings. Raw runs, with RSS sampled every 50 ms: `results.json`.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for r in runs:
        if r.get("repeat", 0) == 0 and r["rss_samples"]:
            t, mib = zip(*r["rss_samples"], strict=True)
            ax.plot(t, mib, label=f"{r['count']:,} images, {r['format']}")
    ax.set_xlabel("seconds since the process started")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("vit-embed resident memory: flat in the number of images")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1000,10000")
    p.add_argument("--formats", default="parquet,npy")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--artifact", default=None, help="default: export the bundled default model")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    counts = sorted(int(c) for c in args.counts.split(","))
    formats = args.formats.split(",")

    env = environment()
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        artifact, export_s = Path(args.artifact or work / "artifact"), 0.0
        if args.artifact is None:
            print("exporting the default model ...", flush=True)
            export_s = export_default(artifact)
        manifest = json.loads((artifact / "manifest.json").read_text())
        cfg = manifest["model"]
        print(f"generating {counts[-1]:,} images ...", flush=True)
        generation_s = generate_images(work / f"images-{counts[-1]}", counts[-1])
        for c in counts[:-1]:
            subset(work / f"images-{counts[-1]}", work / f"images-{c}", c)
        runs = []
        for repeat in range(args.repeats):
            for fmt in formats:
                for c in counts:  # alternate counts, so drift in machine load hits both
                    r = one_run(artifact, work / f"images-{c}", c, fmt, work, args)
                    r["repeat"] = repeat
                    runs.append(r)
                    print(
                        f"{c:>6,} {fmt:<8} {r['images_per_s']:>8,.0f} img/s  "
                        f"wall {r['wall_s']:5.1f} s  peak RSS {r['peak_rss_mib']:6.1f} MiB",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

    ratio = {}
    for fmt in formats:
        peak = {c: max(r["peak_rss_mib"] for r in runs if r["count"] == c and r["format"] == fmt)
                for c in counts}  # fmt: skip
        ratio[fmt] = round(peak[counts[-1]] / peak[counts[0]], 3)
    result = {
        "model": (
            f"img {cfg['img_size']}, patch {cfg['patch_size']}, width {cfg['embed_dim']}, "
            f"depth {cfg['depth']}, {cfg['num_heads']} heads"
        ),
        "artifact_sha256": manifest["artifact"]["sha256"],
        "batch_size": args.batch_size,
        "workers": args.workers if args.workers is not None else "default (one per core, <= 8)",
        "threads": args.threads if args.threads is not None else "ONNX Runtime's default",
        "repeats": args.repeats,
        "generation_s": round(generation_s, 2),
        "export_s": round(export_s, 2),
        "peak_rss_ratio": ratio,
        "command": " ".join(
            ["python benchmarks/bench_embed.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "environment": env,
        "summary": summarise(runs, counts, formats),
        "runs": runs,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(out / "results.md", result)
    plot(out / "rss.png", runs)
    print(f"peak RSS ratio {counts[-1]:,} / {counts[0]:,} images: {ratio}")
    print(f"wrote {out}/results.json, results.md, rss.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
