"""The one-shot GPU check: everything this project can only learn on an NVIDIA GPU, in one run.

    scripts/gpu_check.sh [--dry-run] [OUT_DIR]        (OUT_DIR default: gpu_results/)

For a machine with an NVIDIA GPU, PyTorch and Triton installed and no network (TensorRT
optional). The package is made importable without pip: a throw-away directory on
PYTHONPATH holds ``vit_deploy/`` as links to the repository's modules plus
``vit_deploy/kernels`` -> ``kernels/`` (the mapping pyproject.toml's ``package-dir`` makes
when pip installs it).

Parts, in order, each in its own process with its own timeout (a failed, skipped or timed
out part never stops the next; the whole run stays under ``TOTAL_BUDGET_S``):

1. environment: GPU, versions, which optional packages import;
2. gpu tests: ``pytest -m gpu`` on the kernel, TensorRT and doctor tests (without pytest: a
   built-in kernel-vs-reference check);
3. attention fp16 / bf16: ``benchmarks/bench_attention.py`` at ViT shapes (N = 197, 577, 785;
   d = 64; batches 1..256);
4. vit-bench: ViT-B/16 fp16, batch 1, 32, 256, backends torch (SDPA), torch-triton and,
   where TensorRT imports, trt; parity on;
5. trt engine: where TensorRT imports, one engine build of the bundled model with its
   engine-inspector JSON saved (the real JSON the fusion report has never seen).

OUT_DIR receives at most ``MAX_FILES`` files: ``summary.md``, ``gpu_check.json`` (every
part's status, time and reason, and the environment), ``gpu_check.log`` (every part's
output), ``pytest_gpu.xml``, ``attention.json``, ``vit_bench.json``, ``vit_bench.md``,
``trt_inspector.json``. Intermediate files stay in a temporary directory.

``--dry-run`` checks the environment, the import path and the plan, prints the plan and
writes nothing (it runs on a CPU machine; CI runs it).

Exit status: 0 every part passed or was skipped with a reason; 1 a part failed or timed
out; 2 unusable environment (no CUDA GPU for a real run, or the package does not import).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "gpu_results"
TOTAL_BUDGET_S = 470  # under 8 minutes on an H100 / H200, startup and copies included
MAX_FILES = 8
OUT_FILES = (
    "summary.md",
    "gpu_check.json",
    "gpu_check.log",
    "pytest_gpu.xml",
    "attention.json",
    "vit_bench.json",
    "vit_bench.md",
    "trt_inspector.json",
)
assert len(OUT_FILES) <= MAX_FILES

GPU_TEST_FILES = ("tests/test_kernel.py", "tests/test_trt.py", "tests/test_doctor.py")
ATTENTION_CASES = "vit-b16-224,vit-b16-384,vit-b16-448"  # N = 197, 577, 785; d = 64
ATTENTION_BATCHES = "1,32,256"
VIT_BENCH_MODEL = "vit_base_patch16_224"
VIT_BENCH_BATCHES = "1,32,256"
OPTIONAL_MODULES = (
    "triton",
    "onnx",
    "onnxruntime",
    "onnxconverter_common",
    "onnxscript",
    "pytest",
    "tensorrt",
    "polygraphy",
)
EXIT_OK, EXIT_FAILED, EXIT_ENV = 0, 1, 2


@dataclass
class Part:
    """One step of the check: a command run with a timeout, or skipped with the reason."""

    name: str
    timeout_s: int
    command: list[str] = field(default_factory=list)
    skip: str | None = None  # why it does not run here (known before it starts)
    collect: dict[str, str] = field(default_factory=dict)  # work file -> OUT_DIR file
    status: str = "planned"  # passed, failed, timed out, skipped
    seconds: float = 0.0
    returncode: int | None = None
    reason: str = ""


# ------------------------------------------------------------------------ environment


def module_version(name: str) -> str | None:
    """The module's version if it imports (None if absent); errors other than a missing
    module say why it is broken, e.g. a TensorRT whose native libraries are missing."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        module = __import__(name)
    except Exception as exc:  # installed but unusable
        return f"broken ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return str(getattr(module, "__version__", "installed"))


def usable(version: str | None) -> bool:
    return version is not None and not version.startswith("broken")


def environment() -> dict:
    env: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "executable": sys.executable,
        "repo": str(ROOT),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if env["cuda_available"]:
            env["gpu"] = torch.cuda.get_device_name(0)
            env["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability(0))
            env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30)
            env["gpu_count"] = torch.cuda.device_count()
    except Exception as exc:
        env["torch"] = f"broken ({exc})"
        env["cuda_available"] = False
    env["modules"] = {name: module_version(name) for name in OPTIONAL_MODULES}
    env["nvidia_smi"] = shutil.which("nvidia-smi")
    return env


def make_import_path(work: Path) -> Path:
    """A directory that, on PYTHONPATH, makes ``vit_deploy`` (with ``vit_deploy.kernels``)
    importable from this checkout without pip: links to every entry of ``vit_deploy/`` and
    ``kernels`` -> ``../kernels`` (pyproject.toml's package-dir mapping)."""
    package = work / "pythonpath" / "vit_deploy"
    package.mkdir(parents=True)
    for entry in (ROOT / "vit_deploy").iterdir():
        if entry.name != "kernels" and entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (package / "kernels").symlink_to(ROOT / "kernels", target_is_directory=True)
    return package.parent


def child_env(pythonpath: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(pythonpath), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TRITON_INTERPRET", None)  # the real kernels on the GPU
    return env


def check_imports(pythonpath: Path) -> tuple[bool, str]:
    """Does ``vit_deploy`` (and ``vit_deploy.kernels``) import from the link directory?"""
    code = (
        "import vit_deploy, vit_deploy.kernels, vit_deploy.runtime, vit_deploy.bench; "
        "print(vit_deploy.__file__); print(vit_deploy.kernels.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(pythonpath),
        capture_output=True,
        text=True,
        cwd=pythonpath.parent,  # not the checkout: its vit_deploy/ lacks kernels/
        timeout=120,
    )
    if out.returncode != 0:
        return False, (out.stderr.strip().splitlines() or ["no output"])[-1]
    package_file, kernels_file = out.stdout.split()
    expected = str(pythonpath)
    if not package_file.startswith(expected):
        return False, f"vit_deploy imported from {package_file}, expected under {expected}"
    return True, f"vit_deploy from {package_file}; vit_deploy.kernels from {kernels_file}"


# ------------------------------------------------------------------------ the plan


def plan(env: dict, work: Path) -> list[Part]:
    py = sys.executable
    mods = env["modules"]
    no_gpu = None if env.get("cuda_available") else "no CUDA GPU (torch.cuda.is_available() False)"
    has_trt = usable(mods.get("tensorrt"))
    trt_reason = (
        None if has_trt else f"TensorRT does not import here ({mods.get('tensorrt') or 'absent'})"
    )
    parts = []

    if usable(mods.get("pytest")):
        tests = Part(
            "gpu tests",
            90,
            [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs"]
            + ["--continue-on-collection-errors", f"--junitxml={work / 'pytest_gpu.xml'}"]
            + [str(ROOT / f) for f in GPU_TEST_FILES],
            collect={"pytest_gpu.xml": "pytest_gpu.xml"},
        )
    else:  # the kernel's correctness still gets checked
        tests = Part(
            "gpu tests (no pytest: built-in kernel check)",
            90,
            [py, str(Path(__file__).resolve()), "--kernel-check"],
        )
    tests.skip = no_gpu
    parts.append(tests)

    for dtype in ("fp16", "bf16"):
        out = work / f"attention-{dtype}"
        parts.append(
            Part(
                f"attention {dtype}",
                70,
                [py, str(ROOT / "benchmarks" / "bench_attention.py"), "--out", str(out)]
                + ["--cases", ATTENTION_CASES, "--batches", ATTENTION_BATCHES, "--dtype", dtype]
                + ["--warmup", "10", "--rep", "30"],
                skip=no_gpu,
                collect={f"attention-{dtype}/results.json": f"attention.json#{dtype}"},
            )
        )

    backends = "torch,torch-triton" + (",trt" if has_trt else "")
    parts.append(
        Part(
            "vit-bench",
            120 + (60 if has_trt else 0),
            [py, "-m", "vit_deploy.cli.bench", "--model", VIT_BENCH_MODEL]
            + ["--backends", backends, "--precision", "fp16", "--batch-sizes", VIT_BENCH_BATCHES]
            + ["--warmup", "3", "--seconds", "1", "--parity-samples", "64", "--no-progress"]
            + ["--out", str(work / "vit-bench")],
            skip=no_gpu,
            collect={
                "vit-bench/results.json": "vit_bench.json",
                "vit-bench/results.md": "vit_bench.md",
            },
        )
    )
    parts.append(
        Part(
            "trt engine",
            60,
            [py, str(Path(__file__).resolve()), "--trt-engine", str(work / "trt")],
            skip=no_gpu or trt_reason,
            collect={"trt/inspector.json": "trt_inspector.json"},
        )
    )
    if not has_trt:
        parts[-2].reason = f"trt not benchmarked: {trt_reason}"
    return parts


# ------------------------------------------------------------------------ running


def run_part(part: Part, env: dict, log, deadline: float, cwd: Path) -> None:
    left = deadline - time.monotonic()
    timeout = min(part.timeout_s, int(left))
    log.write(f"\n===== {part.name} (timeout {timeout} s)\n$ {' '.join(part.command)}\n")
    log.flush()
    if left < 5:
        part.status, part.reason = "skipped", "the check's time budget is spent"
        return
    start = time.monotonic()
    proc = subprocess.Popen(
        part.command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,  # not the checkout: "python -m" and "-c" put the cwd first on sys.path
        start_new_session=True,  # its own process group: a timeout kills its children too
    )
    try:
        part.returncode = proc.wait(timeout=timeout)
        part.status = "passed" if part.returncode == 0 else "failed"
        if part.returncode:
            part.reason = (part.reason + "; " if part.reason else "") + f"exit {part.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        part.status, part.reason = "timed out", f"killed after {timeout} s"
    part.seconds = round(time.monotonic() - start, 1)
    log.write(f"===== {part.name}: {part.status} in {part.seconds} s {part.reason}\n")
    log.flush()


def collect(parts: list[Part], work: Path, out: Path) -> list[str]:
    """Copy each part's results into OUT_DIR (attention dtypes merged into one file)."""
    merged: dict[str, dict] = {}
    for part in parts:
        for src, dst in part.collect.items():
            path = work / src
            if not path.is_file():
                continue
            name, _, key = dst.partition("#")
            if key:
                merged.setdefault(name, {})[key] = json.loads(path.read_text())
            else:
                shutil.copyfile(path, out / name)
    for name, content in merged.items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    return sorted(p.name for p in out.iterdir())


def summary(env: dict, parts: list[Part], out: Path, total_s: float) -> str:
    lines = [
        "# GPU check",
        "",
        f"GPU: {env.get('gpu', 'none')} (sm {env.get('compute_capability', '-')}), "
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
        f"Python {env['python']}, total {total_s:.0f} s.",
        "",
        "Modules: " + ", ".join(f"{k} {v or 'absent'}" for k, v in env["modules"].items()),
        "",
        "| part | status | seconds | reason |",
        "|---|---|---|---|",
    ]
    for p in parts:
        lines.append(f"| {p.name} | {p.status} | {p.seconds:g} | {p.skip or p.reason or ''} |")
    for name, title in (("vit_bench.md", "vit-bench"),):
        if (out / name).is_file():
            lines += ["", f"## {title}", "", (out / name).read_text().strip()]
    attention = out / "attention.json"
    if attention.is_file():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        try:
            from bench_attention import markdown

            for dtype, result in json.loads(attention.read_text()).items():
                lines += ["", f"## attention {dtype}", "", markdown(result).strip()]
        except Exception as exc:  # the JSON is there either way
            lines += ["", f"(attention tables not rendered: {exc})"]
    return "\n".join(lines) + "\n"


def print_plan(env: dict, parts: list[Part], imports: str, out: Path) -> None:
    gpu = env.get("gpu") or "none"
    print(f"environment: Python {env['python']}, torch {env.get('torch')}, GPU {gpu}")
    for name, version in env["modules"].items():
        print(f"  {name}: {version or 'absent'}")
    print(f"import path: {imports}")
    print(f"plan (budget {TOTAL_BUDGET_S} s, results in {out}, at most {MAX_FILES} files):")
    for i, part in enumerate(parts, 1):
        state = f"skip: {part.skip}" if part.skip else f"timeout {part.timeout_s} s"
        print(f"  {i}. {part.name} [{state}]")
        print(f"     $ {' '.join(part.command)}")
        if part.reason:
            print(f"     note: {part.reason}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument("--dry-run", action="store_true", help="check and print the plan only")
    p.add_argument("--kernel-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trt-engine", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.kernel_check:
        return kernel_check()
    if args.trt_engine:
        return trt_engine(args.trt_engine)

    started = time.monotonic()
    deadline = started + TOTAL_BUDGET_S
    env = environment()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        pythonpath = make_import_path(work)
        ok, imports = check_imports(pythonpath)
        parts = plan(env, work)
        print_plan(env, parts, imports, args.out)
        if not ok:
            print(f"gpu_check: error: the package does not import: {imports}", file=sys.stderr)
            return EXIT_ENV
        if args.dry_run:
            runnable = sum(p.skip is None for p in parts)
            print(f"dry run: {runnable} of {len(parts)} parts would run here; nothing written")
            return EXIT_OK
        if not env.get("cuda_available"):
            print("gpu_check: error: no CUDA GPU here; nothing to measure", file=sys.stderr)
            return EXIT_ENV
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        stale = [f for f in OUT_FILES if (out / f).exists()]
        for name in stale:  # a previous run's files would mix with this one's
            (out / name).unlink()
        penv = child_env(pythonpath)
        with open(out / "gpu_check.log", "w") as log:
            log.write(json.dumps(env, indent=2) + "\n")
            for part in parts:
                if part.skip:
                    part.status = "skipped"
                    log.write(f"\n===== {part.name}: skipped ({part.skip})\n")
                    continue
                print(f"[{time.monotonic() - started:5.0f} s] {part.name} ...", flush=True)
                run_part(part, penv, log, deadline, work)
                print(f"        {part.status} in {part.seconds} s {part.reason}", flush=True)
        collect(parts, work, out)
        total = time.monotonic() - started
        record = {
            "environment": env,
            "total_s": round(total, 1),
            "parts": [asdict(x) for x in parts],
        }
        (out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "summary.md").write_text(summary(env, parts, out, total))
        files = sorted(p.name for p in out.iterdir())
        print(f"wrote {len(files)} files to {out}: {', '.join(files)}")
        return EXIT_FAILED if any(x.status in ("failed", "timed out") for x in parts) else EXIT_OK


# ------------------------------------------------------------------------ helper parts


def kernel_check() -> int:
    """Without pytest: our attention kernel against an fp32 reference at ViT shapes, with
    the tolerance relative to SDPA's own low-precision error (as the kernel tests do)."""
    import torch
    import torch.nn.functional as F
    from vit_deploy.kernels import attention

    failed = 0
    for dtype in (torch.float16, torch.bfloat16):
        for n in (197, 577, 785):
            qkv = torch.randn(4, n, 3, 12, 64, device="cuda", dtype=dtype)
            q, k, v = qkv.unbind(2)
            ours = attention(q, k, v).float()
            bhnd = [t.transpose(1, 2) for t in (q, k, v)]
            ref = F.scaled_dot_product_attention(*[t.float() for t in bhnd]).transpose(1, 2)
            sdpa = F.scaled_dot_product_attention(*bhnd).transpose(1, 2).float()
            err, sdpa_err = (ours - ref).abs().max().item(), (sdpa - ref).abs().max().item()
            ok = torch.isfinite(ours).all().item() and err <= 2 * sdpa_err + 1e-3
            failed += not ok
            print(f"{dtype} N={n}: max|ours-ref| {err:.2e}, max|sdpa-ref| {sdpa_err:.2e}", ok)
    return EXIT_FAILED if failed else EXIT_OK


def trt_engine(out: Path) -> int:
    """Build the bundled model's engine (1:4:8) and save its inspector JSON."""
    from vit_deploy.export.options import INPUT_NAME
    from vit_deploy.export.tensorrt import build as trt_build
    from vit_deploy.export.tensorrt.export import export_trt

    artifact = out / "artifact"
    manifest = export_trt(None, artifact, precision="fp16", batch="1:4:8").manifest
    section = manifest["engine"]
    cfg = manifest["model"]
    engine = (artifact / section["file"]).read_bytes()
    opt = (4, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    (out / "inspector.json").write_text(trt_build.inspect_engine(engine, INPUT_NAME, opt))
    print(json.dumps({"fusion": section.get("fusion"), "parity": section.get("parity")}, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
