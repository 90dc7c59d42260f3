"""vit-bench: latency, throughput and parity across PyTorch, ONNX Runtime and TensorRT.

vit-bench [--model PRESET|CHECKPOINT] [--backends torch,torch-compile,torch-triton,ort,openvino,trt]
          [--precision fp32,fp16,int8,bf16] [--batch-sizes 1,8,32] [--img-size N] [--warmup N]
          [--iters N | --seconds S] [--threads N] [--repeats N] [--out DIR]
          [--artifacts DIR ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vit_deploy.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_model_argument,
    configure_logging,
    model_spec,
    report_error,
)

PROG = "vit-bench"

DESCRIPTION = """\
Benchmark one model on every backend in one run, on the same inputs: latency
(p50/p90/p99, mean ± std), throughput, load time, peak memory, achieved FLOP/s and its
fraction of the matmul peak measured in the same run, and parity against PyTorch fp32
(reference attention): cosine, max and p99 |diff|, top-1 agreement, and accuracy on the
bundled labeled held-out set (default model only; "n/a" for other models).
ONNX artifacts are exported into OUT/artifacts unless given with --artifacts.
Writes OUT/results.json, OUT/results.md and OUT/latency_throughput.png and prints
the table."""

EPILOG = """\
backends: without --backends every backend is tried and those that cannot run here
(TensorRT without a GPU) are listed as skipped, with the reason. A backend named in
--backends that cannot run here is an error (exit 2) before anything is timed.
torch-triton on a CPU runs under the Triton interpreter: skipped by default, and when
named, run once per batch size on 8 parity images as a correctness check, not a timing.
fp16 applies to ort (fp16 ONNX) and trt; PyTorch fp16 needs a GPU (skipped on a CPU).

exit status: 0 all cases ok or skipped; 1 a case failed (the others are still written);
2 bad arguments, unknown or unavailable backend, missing or corrupt artifact.

examples:
  vit-bench                                          # default model, ~30 s on 2 CPU cores
  vit-bench --model vit_base_patch16_224 --backends torch,ort --batch-sizes 1,8 --seconds 5
  vit-bench --backends torch,torch-triton --batch-sizes 1 --out triton_check"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints its usage too)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _split(values: list[str] | None, convert=str, what: str = "") -> tuple | None:
    if values is None:
        return None
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    try:
        return tuple(convert(v) for v in items)
    except ValueError:
        from vit_deploy.errors import ConfigError

        raise ConfigError(f"{what}: expected comma-separated integers, got {values}") from None


def build_parser() -> argparse.ArgumentParser:
    from vit_deploy.bench.backends import REGISTRY
    from vit_deploy.bench.config import DEFAULT_BATCH_SIZES, DEFAULT_SECONDS, DEFAULT_WARMUP

    p = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help=f"comma-separated, some of {','.join(REGISTRY)} (default: all)",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        metavar="P",
        help="fp32,fp16,int8,bf16 (bf16: OpenVINO only; default: all)",
    )
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        metavar="B",
        help=f"comma-separated (default: {','.join(map(str, DEFAULT_BATCH_SIZES))})",
    )
    p.add_argument("--img-size", type=int, default=None, help="run the model at N x N pixels")
    p.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"untimed calls before each case (default: {DEFAULT_WARMUP})",
    )
    p.add_argument("--iters", type=int, default=None, help="timed calls per case")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"or: time each case for S seconds, at least 3 calls (default: {DEFAULT_SECONDS})",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed rounds per case; their p50s give the run-to-run spread (default: 1)",
    )
    p.add_argument(
        "--parity-samples",
        type=int,
        default=None,
        help="images for parity (default: the whole held-out set for the default model)",
    )
    p.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    p.add_argument(
        "--artifacts", nargs="+", default=(), metavar="DIR", help="exported artifacts to use"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace):
    from vit_deploy.bench.config import (
        DEFAULT_BATCH_SIZES,
        DEFAULT_SECONDS,
        PRECISIONS,
        BenchConfig,
    )

    seconds = args.seconds
    if seconds is None and args.iters is None:
        seconds = DEFAULT_SECONDS
    return BenchConfig(
        model=model_spec(args),
        backends=_split(args.backends),
        precisions=_split(args.precision) if args.precision is not None else PRECISIONS,
        batch_sizes=(
            _split(args.batch_sizes, int, "--batch-sizes")
            if args.batch_sizes is not None
            else DEFAULT_BATCH_SIZES
        ),
        img_size=args.img_size,
        warmup=args.warmup,
        iters=args.iters,
        seconds=seconds,
        threads=args.threads,
        repeats=args.repeats,
        out=args.out,
        artifacts=tuple(args.artifacts),
        parity_samples=args.parity_samples,
    )


def main(argv: list[str] | None = None, registry=None) -> int:
    """``registry``: the backends to run (tests inject one that fails)."""
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    if not torch.cuda.is_available():  # the Triton kernel runs under its interpreter
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from vit_deploy.bench import report
    from vit_deploy.bench.backends import REGISTRY
    from vit_deploy.bench.runner import prepare, run_bench
    from vit_deploy.errors import ViTDeployError

    args = build_parser().parse_args(argv)
    registry = registry or REGISTRY
    configure_logging(PROG)
    try:  # everything that can be wrong with the request: exit 2, before anything long
        cfg = config_from_args(args)
        ctx = prepare(cfg, registry)
    except ViTDeployError as exc:
        report_error(PROG, exc)
        return EXIT_USAGE
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("vit_deploy")]):
            results = run_bench(cfg, registry, progress=not args.no_progress, ctx=ctx)
        paths = report.write_all(results, cfg.out)
    except ViTDeployError as exc:
        return report_error(PROG, exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(report.format_table(results))
    print(f"\n{report.headline(results)}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = sum(c["status"] == "failed" for c in results["cases"])
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
