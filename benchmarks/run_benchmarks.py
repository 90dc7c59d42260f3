"""The project's published vit-bench numbers: the commands, and the targets read off them.

    python benchmarks/run_benchmarks.py [--only default|vit-b16] [--results DIR]
    python benchmarks/run_benchmarks.py --summarize-only

Runs ``vit-bench`` (every backend: those that cannot run here are listed as skipped,
with the reason) for

- ``bench-default``: the bundled digits model, batch 1, 8, 32, 3 timed rounds per
  case (the rounds' p50s give the in-run spread);
- ``bench-vit-b16``: ViT-B/16 (preset ``vit_base_patch16_224``, random weights: fine
  for timing, and parity against PyTorch fp32 is still meaningful), batch 1, 8, 32,
  run twice in separate processes (``bench-vit-b16/rerun`` reuses the first run's
  ONNX files through ``--artifacts``, so only the timing differs) for the
  run-to-run spread.

Then writes ``bench-targets.md`` beside them: the issue's targets checked against the
measured numbers (run-to-run p50 within 5%; ORT fp32 >= 1.5x PyTorch eager at batch 1
for ViT-B/16; ORT fp32 within 85% of the measured fp32 matmul rate), each with
PASS or MISS. Exported ONNX files are deleted afterwards (hundreds of MB; never
committed). A loaded machine gives noisy numbers, so before each run the script waits
(up to ``--quiet-timeout`` seconds) for the 1-minute load average to fall below
``--quiet-load``; every results.json records the load average and, per case, the CPU
share other processes used while it was timed (``others_cpu_pct``) either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"  # relative to ROOT, so results.json holds no local path
TARGETS = "bench-targets.md"
SPREAD_TARGET_PCT = 5.0
SPEEDUP_TARGET = 1.5
PEAK_TARGET = 0.85

# about 1.1 TFLOP per batch of 32 (several seconds a call on 2 cores): one warm-up call
VIT_B16 = ["--model", "vit_base_patch16_224", "--batch-sizes", "1,8,32"]
VIT_B16 += ["--seconds", "10", "--warmup", "1"]
RUNS = {
    "default": [
        (
            "bench-default",
            ["--batch-sizes", "1,8,32", "--seconds", "3", "--repeats", "3", "--warmup", "3"],
        ),
    ],
    "vit-b16": [("bench-vit-b16", VIT_B16), ("bench-vit-b16/rerun", VIT_B16)],
}
COMMON = ["--no-progress"]


def wait_until_quiet(max_load: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(10)
    print(f"load average {os.getloadavg()}", flush=True)


def run(name: str, args: list[str], results: Path) -> None:
    out = results / name
    extra = []
    if name.endswith("/rerun"):
        first = ROOT / out.parent / "artifacts"
        found = sorted(p.relative_to(ROOT) for p in first.iterdir() if p.is_dir())
        extra = ["--artifacts", *map(str, found)]
    cmd = ["vit-bench", *args, *COMMON, *extra, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code not in (0, 1):  # 1: a case failed, and the results say which
        sys.exit(code)


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ok_cases(results: dict) -> dict[tuple, dict]:
    return {
        (c["backend"], c["precision"], c["batch_size"]): c
        for c in results["cases"]
        if c["status"] == "ok" and c["timing_valid"]
    }


def spread_rows(first: dict, second: dict) -> list[tuple]:
    """Per case: p50 of each run, their spread (max-min)/min, and others_cpu_pct of each."""
    a, b = ok_cases(first), ok_cases(second)
    rows = []
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], k[1], k[2])):
        p = a[key]["latency_ms"]["p50"], b[key]["latency_ms"]["p50"]
        others = a[key]["others_cpu_pct"], b[key]["others_cpu_pct"]
        rows.append((*key, p[0], p[1], (max(p) - min(p)) / min(p) * 100, *others))
    return rows


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarize(results: Path) -> str:
    lines = ["# Targets, read off the committed results", ""]
    results = ROOT / results
    default = load(results / "bench-default" / "results.json")
    if default:
        lines += ["## Default model: spread of the p50 over 3 timed rounds in one run", ""]
        lines += [
            "| backend | precision | batch | round p50s (ms) | spread | within 5% | others% |"
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for (backend, prec, batch), c in sorted(ok_cases(default).items()):
            rounds = ", ".join(f"{v:.3f}" for v in c["p50_rounds_ms"])
            spread = c["p50_spread_pct"]
            lines.append(
                f"| {backend} | {prec} | {batch} | {rounds} | {spread:.1f}% | "
                f"{verdict(spread <= SPREAD_TARGET_PCT)} | {c['others_cpu_pct']} |"
            )
        lines.append("")
    first = load(results / "bench-vit-b16" / "results.json")
    second = load(results / "bench-vit-b16" / "rerun" / "results.json")
    if first and second:
        lines += ["## ViT-B/16: p50 of two separate runs (processes)", ""]
        lines += ["| backend | precision | batch | run 1 p50 (ms) | run 2 p50 (ms) | spread | "]
        lines[-1] += "within 5% | others% (run 1, 2) |"
        lines += ["|---|---|---|---|---|---|---|---|"]
        for backend, prec, batch, p1, p2, spread, o1, o2 in spread_rows(first, second):
            lines.append(
                f"| {backend} | {prec} | {batch} | {p1:.1f} | {p2:.1f} | {spread:.1f}% | "
                f"{verdict(spread <= SPREAD_TARGET_PCT)} | {o1}, {o2} |"
            )
        lines.append("")
    if first:
        cases = ok_cases(first)
        torch1, ort1 = cases.get(("torch", "fp32", 1)), cases.get(("ort", "fp32", 1))
        peak = first["environment"]["matmul_peak"]["cpu_fp32"]["gflops_per_s"]
        lines += ["## ViT-B/16 on the CPU (first run)", ""]
        if torch1 and ort1:
            speedup = torch1["latency_ms"]["p50"] / ort1["latency_ms"]["p50"]
            lines.append(
                f"- ORT fp32 vs PyTorch eager at batch 1: {speedup:.2f}x "
                f"(p50 {ort1['latency_ms']['p50']:.1f} ms vs {torch1['latency_ms']['p50']:.1f} ms)"
                f"; target >= {SPEEDUP_TARGET}x: {verdict(speedup >= SPEEDUP_TARGET)}"
            )
        for (backend, prec, batch), c in sorted(cases.items()):
            if (backend, prec) == ("ort", "fp32"):
                lines.append(
                    f"- ORT fp32 at batch {batch}: {c['gflops_per_s']:.1f} GFLOP/s = "
                    f"{c['frac_of_peak']:.1%} of the measured fp32 matmul rate ({peak:.1f} "
                    f"GFLOP/s); target >= {PEAK_TARGET:.0%}: "
                    f"{verdict(c['frac_of_peak'] >= PEAK_TARGET)}"
                )
        env = first["environment"]
        lines.append(
            f"- Load average during the run: {env['load_average_start']} at the start, "
            f"{env['load_average_end']} at the end"
        )
    text = "\n".join(lines) + "\n"
    (results / TARGETS).write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", choices=sorted(RUNS), action="append", help="run only these")
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help=f"relative to the repo root (default: {RESULTS})",
    )
    p.add_argument("--summarize-only", action="store_true", help=f"only rewrite {TARGETS}")
    p.add_argument("--quiet-load", type=float, default=1.0, help="wait for a load below this")
    p.add_argument("--quiet-timeout", type=float, default=900, help="... at most this long (s)")
    args = p.parse_args(argv)
    if not args.summarize_only:
        for group in args.only or list(RUNS):
            for name, run_args in RUNS[group]:
                wait_until_quiet(args.quiet_load, args.quiet_timeout)
                run(name, run_args, args.results)
            for name, _ in RUNS[group]:  # exported ONNX files are not results
                shutil.rmtree(ROOT / args.results / name / "artifacts", ignore_errors=True)
    print(summarize(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
