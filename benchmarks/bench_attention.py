"""Benchmark the fused Triton attention kernel against torch SDPA and a naive version.

    python benchmarks/bench_attention.py [--out DIR] [--cases vit-b16-224] [--batches 1,32,256]

At ViT shapes (fp16 by default), per case and batch: our kernel, SDPA with each
backend forced (flash, memory-efficient, math) and a naive matmul-softmax-matmul.
Reports the median time in microseconds and TFLOP/s counting 4*B*H*N*N*d flops,
plus our speed-up over the best SDPA backend, measured in the same run, and each
output's max error against an fp32 reference. Writes results.json and
results.md under --out. Needs a CUDA GPU: without one it measures nothing and
exits with code 3.

Layouts are the model's: ours reads q, k, v as strided views of the packed
(B, N, 3, H, d) qkv and writes (B, N, H, d); SDPA and naive take the
(B, H, N, d) permuted views. SDPA's output still needs a transpose copy in the
model, which is not timed here (the comparison favours SDPA, if anything).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

NO_CUDA_EXIT = 3
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "attention"


@dataclass(frozen=True)
class Case:
    name: str
    heads: int
    seq: int
    head_dim: int


CASES = {
    c.name: c
    for c in (
        Case("vit-b16-224", 12, 197, 64),
        Case("vit-l16-224", 16, 197, 64),
        Case("vit-b16-384", 12, 577, 64),
        Case("vit-b16-448", 12, 785, 64),
        Case("vit-h14-224", 16, 257, 80),
        # FlashAttention papers quote ~N=512+, d=64: the "FA-class TFLOP/s" comparison point.
        Case("seq512-d64", 16, 512, 64),
    )
}
DEFAULT_BATCHES = (1, 8, 32, 64, 128, 256)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
IMPL_OURS = "triton (ours)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument(
        "--batches",
        default=",".join(map(str, DEFAULT_BATCHES)),
        help="comma-separated batch sizes (default %(default)s)",
    )
    p.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}"
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    p.add_argument("--rep", type=int, default=100, help="do_bench measuring time, ms")
    p.add_argument(
        "--timer",
        choices=("events", "cudagraph"),
        default="events",
        help="events: triton.testing.do_bench (CUDA events around each call, L2 flushed "
        "between calls); cudagraph: do_bench_cudagraph (replayed from a CUDA graph, no "
        "launch overhead)",
    )
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; expected some of {list(CASES)}")
    args.cases = [CASES[c] for c in args.cases.split(",")]
    return args


def implementations():
    """name -> fn(qkv): a packed (B, N, 3, H, d) tensor in, a (B, N, H, d) tensor (or
    view) out. Each takes the layout the model gives it."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from vit_deploy.kernels import attention

    def ours(qkv):
        return attention(*qkv.unbind(2))

    def bhnd(qkv):
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def sdpa(backend):
        def fn(qkv):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(*bhnd(qkv)).transpose(1, 2)

        return fn

    def naive(qkv):
        q, k, v = bhnd(qkv)
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)

    return {
        IMPL_OURS: ours,
        "sdpa-flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa-efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa-math": sdpa(SDPBackend.MATH),
        "naive": naive,
    }


def reference(qkv, chunk=16):
    """fp32 softmax(QKᵀ/√d)V as (B, N, H, d), a few batch items at a time (bounded memory)."""
    outs = []
    for part in qkv.split(chunk):
        q, k, v = (t.float().transpose(1, 2) for t in part.unbind(2))
        p = torch.softmax((q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1), dim=-1)
        outs.append((p @ v).transpose(1, 2))
    return torch.cat(outs)


def measure(fn, qkv, want, args):
    """(median microseconds, max abs error vs want) or (None, reason)."""
    from triton.testing import do_bench, do_bench_cudagraph

    try:
        out = fn(qkv)  # the first call also autotunes our kernel for this shape
        err = (out.float() - want).abs().max().item()
        if not math.isfinite(err):
            return None, "non-finite output"
        if args.timer == "cudagraph":  # no CPU launch overhead: kernel time only
            ms = do_bench_cudagraph(lambda: fn(qkv), rep=args.rep, return_mode="median")
        else:
            ms = do_bench(lambda: fn(qkv), warmup=args.warmup, rep=args.rep, return_mode="median")
        return ms * 1e3, err
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, "out of memory"
    except RuntimeError as exc:  # e.g. an SDPA backend that refuses the shape
        return None, f"unsupported: {str(exc).splitlines()[0][:120]}"


def environment():
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "compute_capability": list(torch.cuda.get_device_capability(0)),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(args) -> dict:
    from tqdm import tqdm
    from vit_deploy.kernels.flash_attention import autotuned_config

    impls = implementations()
    dtype = DTYPES[args.dtype]
    rows = []
    jobs = [(c, b) for c in args.cases for b in args.batches]
    for case, batch in tqdm(jobs, desc="attention", unit="shape"):
        torch.manual_seed(0)
        qkv = torch.randn(batch, case.seq, 3, case.heads, case.head_dim, device="cuda", dtype=dtype)
        with torch.no_grad():
            want = reference(qkv)
            flops = 4 * batch * case.heads * case.seq * case.seq * case.head_dim
            for name, fn in impls.items():
                us, info = measure(fn, qkv, want, args)
                rows.append(
                    {
                        "case": case.name,
                        "batch": batch,
                        "heads": case.heads,
                        "seq": case.seq,
                        "head_dim": case.head_dim,
                        "impl": name,
                        "us": us,
                        "tflops": flops / (us * 1e-6) / 1e12 if us else None,
                        "max_abs_err": info if us else None,
                        "note": None if us else info,
                        "config": autotuned_config() if name == IMPL_OURS and us else None,
                    }
                )
        del qkv, want
        torch.cuda.empty_cache()
    add_ratios(rows)
    return {"env": environment(), "dtype": args.dtype, "timer": args.timer, "rows": rows}


def add_ratios(rows):
    """ours / best SDPA backend time, per (case, batch), from this run only."""
    groups = {}
    for r in rows:
        groups.setdefault((r["case"], r["batch"]), []).append(r)
    for group in groups.values():
        sdpa = [r["us"] for r in group if r["impl"].startswith("sdpa") and r["us"]]
        for r in group:
            if r["impl"] == IMPL_OURS:
                r["vs_best_sdpa"] = min(sdpa) / r["us"] if sdpa and r["us"] else None


def markdown(result) -> str:
    """One row per (case, batch), one column per implementation: µs (TFLOP/s)."""
    env = result["env"]
    impls = list(dict.fromkeys(r["impl"] for r in result["rows"]))
    lines = [
        f"# Attention benchmark ({result['dtype']})",
        "",
        f"{env['gpu']} (compute capability {env['compute_capability'][0]}."
        f"{env['compute_capability'][1]}), torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}, {env['time']}",
        "",
        f"Cells: median µs (TFLOP/s = 4·B·H·N²·d / time), timer: {result['timer']}. "
        "Speed-up: best SDPA backend's time / ours, same run (> 1: ours faster).",
        "",
        "| case | B | H | N | d | " + " | ".join(impls) + " | speed-up |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(impls) + "---:|",
    ]
    groups = {}
    for r in result["rows"]:
        groups.setdefault((r["case"], r["batch"]), {})[r["impl"]] = r
    for (case, batch), by_impl in groups.items():
        first = next(iter(by_impl.values()))
        cells = []
        for name in impls:
            r = by_impl.get(name)
            if r is None or r["us"] is None:
                cells.append(r["note"] if r else "-")
            else:
                cells.append(f"{r['us']:.1f} ({r['tflops']:.0f})")
        ratio = by_impl.get(IMPL_OURS, {}).get("vs_best_sdpa")
        lines.append(
            f"| {case} | {batch} | {first['heads']} | {first['seq']} | {first['head_dim']} | "
            + " | ".join(cells)
            + f" | {f'{ratio:.2f}x' if ratio else '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return NO_CUDA_EXIT
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "results.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
