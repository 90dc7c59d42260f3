"""vit-deploy doctor: one command that checks the whole GPU path.

Each check is a small function returning ``Check(name, ok, detail, next_step)``
(``ok`` is True, False, or None for "skipped on request"). The doctor prints a
pass/fail table with the next step for every failure and exits non-zero when
anything failed. On a machine without a GPU it says exactly what is missing and
what works there instead.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from vit_deploy.errors import ViTDeployError

PROG = "vit-deploy"
REPO_ROOT = Path(__file__).resolve().parents[2]


class Check(NamedTuple):
    name: str
    ok: bool | None  # None: skipped on request
    detail: str
    next_step: str = ""

    @property
    def status(self) -> str:
        if self.ok is None:
            return "SKIP"
        if not self.ok:
            return "FAIL"
        return "WARN" if self.next_step else "PASS"


# ------------------------------------------------------------------------------ checks


def check_cuda() -> Check:
    try:
        import torch
    except Exception as exc:  # pragma: no cover - torch is a dependency
        return Check(
            "CUDA", False, f"PyTorch does not import: {exc}", "reinstall: pip install -e ."
        )
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = (
            f"torch {torch.__version__} is a CPU-only build"
            if built is None
            else f"torch {torch.__version__} (CUDA {built}) sees no GPU"
        )
        return Check(
            "CUDA",
            False,
            f"no CUDA GPU: torch.cuda.is_available() is False; {why}",
            "run on a machine with an NVIDIA GPU and driver (nvidia-smi must list it), "
            "with a CUDA build of PyTorch",
        )
    return Check(
        "CUDA",
        True,
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{torch.cuda.device_count()} device(s)",
    )


def check_gpu() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("GPU", False, "no GPU visible", "see CUDA above")
    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    return Check("GPU", True, f"{name}, compute capability {major}.{minor}")


def check_tensorrt() -> Check:
    from vit_deploy.runtime.base import version_tuple
    from vit_deploy.runtime.tensorrt.env import MIN_TENSORRT

    wanted = ".".join(map(str, MIN_TENSORRT))
    try:
        import tensorrt as trt
    except ImportError as exc:
        return Check(
            "TensorRT",
            False,
            f"not installed (import tensorrt: {exc})",
            "on a machine with an NVIDIA GPU: pip install 'vit-deploy[trt]'",
        )
    except Exception as exc:
        return Check(
            "TensorRT", False, f"installed but does not load: {exc}", "check libnvinfer / CUDA"
        )
    version = str(getattr(trt, "__version__", "?"))
    if version_tuple(version) < MIN_TENSORRT:
        return Check(
            "TensorRT",
            False,
            f"{version} is too old (expected >= {wanted})",
            f"pip install -U 'tensorrt>={wanted}'",
        )
    return Check("TensorRT", True, f"{version}")


def check_onnxruntime() -> Check:
    try:
        import onnxruntime as ort
    except Exception as exc:
        return Check("ONNX Runtime", False, f"does not import: {exc}", "pip install onnxruntime")
    providers = ort.get_available_providers()
    detail = f"{ort.__version__}; providers: {', '.join(providers)}"
    if "CUDAExecutionProvider" not in providers:
        return Check(
            "ONNX Runtime",
            True,
            detail + " (CPU only)",
            "optional: for ONNX on the GPU, in a separate environment: "
            "pip uninstall onnxruntime && pip install onnxruntime-gpu",
        )
    return Check("ONNX Runtime", True, detail)


def check_triton() -> Check:
    try:
        import triton
    except Exception as exc:
        return Check("Triton", False, f"does not import: {exc}", "pip install triton (Linux)")
    import torch

    version = triton.__version__
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available():
        note = " (TRITON_INTERPRET=1: kernels run on the CPU interpreter)" if interpreting else ""
        return Check(
            "Triton",
            False,
            f"{version} imports, but cannot compile for a GPU: no CUDA GPU{note}",
            "see CUDA above; on this machine Triton kernels run only under TRITON_INTERPRET=1",
        )
    if interpreting:
        return Check(
            "Triton",
            False,
            f"{version}; TRITON_INTERPRET=1 is set, so kernels run on the CPU interpreter",
            "unset TRITON_INTERPRET to compile for the GPU",
        )
    try:
        _triton_smoke_test()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check(
            "Triton",
            False,
            f"{version} cannot compile for this GPU: {first}",
            "check the driver / CUDA toolkit; pip install -U triton",
        )
    return Check("Triton", True, f"{version}; compiled and ran a kernel on the GPU")


def _triton_smoke_test() -> None:
    """Compile and run one tiny Triton kernel on the GPU; raise if anything is off."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _add_one(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)

    x = torch.zeros(100, device="cuda")
    _add_one[(1,)](x, x.numel(), BLOCK=128)
    torch.cuda.synchronize()
    if not bool((x == 1).all()):
        raise RuntimeError("the smoke-test kernel produced wrong values")


def _pytest_counts(output: str) -> dict[str, int]:
    counts = {}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output):
        counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    return counts


def check_gpu_tests(run: bool = True, tests_dir: Path | None = None) -> Check:
    """``pytest -m gpu`` in a subprocess; passes only if GPU tests ran and none failed."""
    name = "GPU tests (pytest -m gpu)"
    if not run:
        return Check(name, None, "skipped (--no-tests)")
    tests_dir = tests_dir or REPO_ROOT / "tests"
    if not tests_dir.is_dir():
        return Check(
            name,
            False,
            f"no test suite at {tests_dir} (an install without the source tree)",
            "run the doctor from a source checkout: git clone ... && pip install -e '.[test]'",
        )
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*cmd, str(tests_dir)], cwd=tests_dir.parent, capture_output=True, text=True
    )
    output = proc.stdout + proc.stderr
    counts = _pytest_counts(output)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary"
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error"):
        return Check(
            name,
            False,
            f"{summary} (exit {proc.returncode})",
            f"rerun to see the failures: {' '.join(cmd)} {tests_dir}",
        )
    if not counts.get("passed"):
        reasons = sorted(set(re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.+)", output)))
        why = f": {reasons[0]}" if reasons else ""
        return Check(
            name, False, f"no GPU test ran ({summary}){why}", "fix the checks above, then rerun"
        )
    return Check(name, True, summary)


def check_engine(build: bool = True, work_dir: Path | None = None) -> list[Check]:
    """Build a small engine from the default model, then report its parity and fusion."""
    names = ("engine build", "engine parity", "attention fusion")
    if not build:
        return [Check(n, None, "skipped (--no-build)") for n in names]
    from vit_deploy.runtime.tensorrt.env import tensorrt_problems

    problems = tensorrt_problems()
    if problems:
        reason = "not run: " + "; ".join(problems)
        return [Check(names[0], False, reason, "fix CUDA / TensorRT above")] + [
            Check(n, False, "not run (no engine)", "fix the engine build first") for n in names[1:]
        ]
    from vit_deploy.export.tensorrt.export import export_trt

    with tempfile.TemporaryDirectory(prefix="vit-doctor-", dir=work_dir) as tmp:
        out = Path(tmp) / "default_trt"
        try:
            manifest = export_trt(None, out, precision="fp16", batch="1:4:8").manifest
        except ViTDeployError as exc:
            first = str(exc).splitlines()[0]
            return [
                Check("engine build", False, f"{type(exc).__name__}: {first}", _engine_next(exc)),
                Check("engine parity", False, "not run (no engine)", "fix the build first"),
                Check("attention fusion", False, "not run (no engine)", "fix the build first"),
            ]
    engine = manifest["engine"]
    keep = engine.get("fp32_keep", {}).get("name", "?")
    attempts = len(engine.get("attempts", []))
    checks = [
        Check(
            "engine build",
            True,
            f"TensorRT {engine['tensorrt_version']}, {engine['precision']}, profile "
            f"{engine['profile']['min']}:{engine['profile']['opt']}:{engine['profile']['max']}, "
            f"fp32 kept: {keep} ({attempts} attempt(s))",
        )
    ]
    parity = engine.get("parity") or {}
    checks.append(Check("engine parity", bool(parity.get("passed", False)), _parity_detail(parity)))
    fusion = engine.get("fusion") or {}
    fused = fusion.get("status") == "fused"
    checks.append(
        Check(
            "attention fusion",
            True,
            f"{fusion.get('status', 'unknown')} ({fusion.get('fused_blocks', 0)}/"
            f"{fusion.get('depth', '?')} blocks)",
            "" if fused else "slower, still correct: see the fusion report in manifest.json",
        )
    )
    return checks


def _parity_detail(parity: dict) -> str:
    if not parity:
        return "no parity report in the manifest"
    return str(parity.get("summary", parity))[:160]


def _engine_next(exc: Exception) -> str:
    from vit_deploy.errors import ParityError

    if isinstance(exc, ParityError):
        return "every fp32 escalation failed parity: build with --precision fp32 and report it"
    return "rerun by hand to see the full log: vit-export --fmt trt --batch 1:4:8 --out /tmp/trt"


# ------------------------------------------------------------------------------ report


def run_checks(run_tests: bool = True, build: bool = True) -> list[Check]:
    checks: list[Callable[[], Check]] = [
        check_cuda,
        check_gpu,
        check_tensorrt,
        check_onnxruntime,
        check_triton,
    ]
    results = [c() for c in checks]
    results.append(check_gpu_tests(run_tests))
    results.extend(check_engine(build))
    return results


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status:<6}  {c.detail}")
        if c.next_step and c.status in ("FAIL", "WARN"):
            lines.append(f"{'':<{width}}  {'':<6}  next: {c.next_step}")
    return "\n".join(lines)


def summary_line(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.ok is False]
    if not failed:
        return "all checks passed: the GPU path (TensorRT engines, Triton kernels) works here"
    missing = [c.name for c in checks if c.ok is False and c.name in ("CUDA", "GPU", "TensorRT")]
    line = f"{len(failed)} check(s) failed: {', '.join(failed)}."
    if missing:
        line += (
            f" Missing for the GPU path: {', '.join(missing)}. What works here: "
            "vit-export --fmt onnx, the PyTorch and ONNX Runtime backends, and the "
            "Triton kernel under TRITON_INTERPRET=1 (the CPU test suite)."
        )
    return line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="vit-deploy tools.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "doctor",
        help="check CUDA, the GPU, TensorRT, ONNX Runtime and Triton; run the GPU tests; "
        "build and verify a small engine",
        description="Checks the whole GPU path and prints a pass/fail table with the next "
        "step for each failure. Exits 1 if anything failed.",
    )
    d.add_argument("--no-tests", action="store_true", help="do not run `pytest -m gpu`")
    d.add_argument("--no-build", action="store_true", help="do not build the test engine")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        checks = run_checks(run_tests=not args.no_tests, build=not args.no_build)
        print(format_table(checks))
        print()
        print(summary_line(checks))
        return 1 if any(c.ok is False for c in checks) else 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
