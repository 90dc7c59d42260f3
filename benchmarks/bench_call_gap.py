"""Batch-1 model-call latency with and without an idle gap between calls, one run.

    python benchmarks/bench_call_gap.py [--model vit-s16] [--calls 80] [--rounds 6]
                                        [--gap-ms 7] [--results DIR]

Why: vit-serve's p99 at 1 client on ViT-S/16 is over its bound (offline batch-1 latency +
delay + 5 ms), and its slow requests are slow in the model call itself. A server at 1
client idles between model calls (the client's round trip, the request's decoding) and
its ONNX Runtime threads do not spin; offline ``embed`` calls run back to back, spinning.
This tests whether either explains the tail, without HTTP: ``Embedder.run`` on a fixed
batch-1 input, spinning and not, with no gap and with ``--gap-ms`` of sleep before each
call; the four settings take turns, round by round. Writes ``call_gap.json`` and
``call_gap.md`` to ``benchmarks/results/serve/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import RESULTS, ensure_artifact, write_atomic  # noqa: E402


def calls(emb, pixels, n: int, gap_s: float) -> list[float]:
    out = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        t = time.perf_counter()
        emb.run(pixels)
        out.append(1000 * (time.perf_counter() - t))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit-s16", choices=["default", "vit-s16"])
    p.add_argument("--calls", type=int, default=80, help="per setting and round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--gap-ms", type=float, default=7.0)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    from vit_deploy.embed.embedder import Embedder

    artifact = ensure_artifact(args.model)
    embedders = {spin: Embedder.from_artifact(artifact, spin=spin) for spin in (True, False)}
    cfg = embedders[True].config
    pixels = np.random.default_rng(0).random((1, 3, cfg.img_size, cfg.img_size), np.float32)
    settings = [(spin, gap) for spin in (True, False) for gap in (0.0, args.gap_ms)]
    latencies: dict[tuple, list[float]] = {s: [] for s in settings}
    for emb in embedders.values():
        calls(emb, pixels, 3, 0.0)  # warm-up
    for _ in range(args.rounds):
        for spin, gap in settings:
            latencies[(spin, gap)] += calls(embedders[spin], pixels, args.calls, gap / 1000)
    rows = []
    for (spin, gap), lat in latencies.items():
        lat = np.asarray(lat)
        p50 = float(np.median(lat))
        rows.append({"spin": spin, "gap_ms": gap, "calls": len(lat), "p50_ms": p50,
                     "p99_ms": float(np.percentile(lat, 99)),
                     "slow_calls": int((lat > p50 + 20).sum())})  # fmt: skip
    command = "python benchmarks/bench_call_gap.py " + " ".join(sys.argv[1:])
    lines = [
        "# Batch-1 model calls with and without an idle gap",
        "",
        f"Command: `{command.strip()}`; model: {args.model} ({artifact.name}), "
        f"{args.rounds} rounds of {args.calls} calls per setting, settings taking turns.",
        "",
        "| ORT threads spin | gap before each call | calls | p50 ms | p99 ms | calls over p50 + 20 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {'yes' if r['spin'] else 'no'} | {r['gap_ms']:g} ms | {r['calls']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['slow_calls']} |")  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results / "call_gap.json", json.dumps(
        {"command": command.strip(), "model": args.model, "rows": rows}, indent=2) + "\n")  # fmt: skip
    write_atomic(args.results / "call_gap.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
