"""vit-serve under two (or more) sets of server flags, taking turns, one run.

    python benchmarks/bench_serve_ab.py --setting "spin=--ort-spin" --setting "no-spin="
                                        [--model vit-s16] [--clients 1] [--requests 256]
                                        [--rounds 4] [--beside CMD] [--results DIR]

Each ``--setting NAME=FLAGS`` is a vit-serve started with FLAGS added to bench_serve's
server flags. Round by round, each setting in turn gets a fresh server process, a warm-up
and ``--requests`` single-image requests from ``--clients`` aiohttp clients (bench_serve's
load). This machine's speed drifts by tens of percent within minutes, so a difference
between settings counts only if it holds round after round: the table lists every
round's numbers beside the medians. Nothing else runs meanwhile (no offline model in this
process), unless ``--beside CMD`` starts a process that runs through all rounds (e.g. a
busy loop, to see a setting on a machine it shares). Writes ``ab-<name>.json`` and
``ab-<name>.md`` to ``benchmarks/results/serve/``.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (  # noqa: E402
    Served,
    add_server_flags,
    ensure_artifact,
    make_images,
    serve_run,
    write_atomic,
)

FIELDS = ("images_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_image")


def setting(text: str) -> tuple[str, tuple[str, ...]]:
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS (FLAGS may be empty), got {text!r}")
    return name, tuple(shlex.split(flags))


def one_round(artifact, args, flags, payloads) -> dict:
    server = Served(artifact, args, flags)
    try:
        row = serve_run(server, payloads, args.clients, args.requests)
    finally:
        exit_code = server.stop()
    if exit_code != 0 or row["errors"]:
        raise RuntimeError(f"server {flags}: exit code {exit_code}, {row['errors']} errors")
    return row


def run_rounds(artifact, args) -> dict[str, list[dict]]:
    """Round by round, each setting in turn: setting name -> its rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.model)
        payloads = ["data:image/png;base64," + base64.b64encode(q.read_bytes()).decode()
                    for q in paths]  # fmt: skip
        rounds = {n: [] for n, _ in args.setting}
        for r in range(args.rounds):
            for n, flags in args.setting:
                rounds[n].append(one_round(artifact, args, flags, payloads))
                print(f"round {r + 1} {n}:", {k: round(rounds[n][-1][k], 2) for k in FIELDS},
                      flush=True)  # fmt: skip
    return rounds


def markdown(result: dict) -> str:
    flags = ", ".join(f"{n}: `{f}`" if f else f"{n}: none" for n, f in result["flags"].items())
    lines = [
        f"# vit-serve A/B: {result['name']}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Model {result['model']}, {result['clients']} client(s), {result['requests']} "
        f"requests per round, {result['rounds']} rounds, settings taking turns; server flags "
        f"besides bench_serve's: {flags}."
        + (
            f" Running beside the server all along: `{result['beside']}`."
            if result["beside"]
            else ""
        ),
        "",
        "| setting | img/s | p50 ms | p99 ms | server CPU ms/img | p99 ms, round by round |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, rows in result["rounds_by_setting"].items():
        med = {k: statistics.median(r[k] for r in rows) for k in FIELDS}
        each = ", ".join(f"{r['p99_ms']:.1f}" for r in rows)
        lines.append(
            f"| {name} | {med['images_per_s']:.1f} | {med['p50_ms']:.1f} | {med['p99_ms']:.1f} | "
            f"{med['server_cpu_ms_per_image']:.2f} | {each} |"
        )
    lines += ["", "Medians over the rounds."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", type=setting, action="append", required=True)
    p.add_argument("--name", default=None, help="results file name (default: the settings)")
    p.add_argument("--model", default="vit-s16", choices=["default", "vit-s16"])
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--beside", default=None, metavar="CMD", help="a process run all along")
    add_server_flags(p)
    args = p.parse_args()
    if len({n for n, _ in args.setting}) != len(args.setting):
        p.error("expected distinct setting names")
    name = args.name or "-vs-".join(n for n, _ in args.setting)
    artifact = ensure_artifact(args.model)
    beside = subprocess.Popen(shlex.split(args.beside)) if args.beside else None
    try:
        rounds = run_rounds(artifact, args)
        if beside is not None and beside.poll() is not None:
            raise RuntimeError(f"--beside {args.beside!r} ended early (exit {beside.returncode})")
    finally:
        if beside is not None:
            beside.kill()
            beside.wait()
    result = {
        "name": name,
        "command": ("python benchmarks/bench_serve_ab.py " + shlex.join(sys.argv[1:])).strip(),
        "model": args.model,
        "clients": args.clients,
        "requests": args.requests,
        "rounds": args.rounds,
        "beside": args.beside,
        "flags": {n: shlex.join(f) for n, f in args.setting},
        "rounds_by_setting": rounds,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results / f"ab-{name}.json", json.dumps(result, indent=2) + "\n")
    write_atomic(args.results / f"ab-{name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
