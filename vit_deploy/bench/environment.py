"""Where a benchmark ran: CPU, cores, threads, GPU, library versions, load average.

Everything is read without side effects (TensorRT's version comes from its package
metadata, not by importing it) and is ``None`` where it cannot be found.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "triton", "numpy")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "f16c")


def cpu_flags() -> list[str] | None:
    """The SIMD features that decide fp32/fp16 matmul speed (of those in ``SIMD_FLAGS``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in present]
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def gpu_info() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_mb": round(props.total_memory / 2**20),
        "count": torch.cuda.device_count(),
        "cuda_version": torch.version.cuda,
    }


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class OtherProcesses:
    """How busy the rest of the machine was while a case ran: CPU time used by every other
    process, as a percent of all cores over the wall time (0: we had the machine to
    ourselves; 100 on 2 cores: two other processes ran flat out). From /proc/stat via
    psutil, 10 ms resolution; None where unavailable."""

    def start(self) -> OtherProcesses:
        import psutil

        self._proc = psutil.Process()
        self._t0 = self._sample()
        return self

    def _sample(self):
        import time

        import psutil

        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        ours = self._proc.cpu_times()
        return time.perf_counter(), busy, ours.user + ours.system

    def stop(self) -> float | None:
        try:
            wall1, busy1, ours1 = self._sample()
        except Exception:  # noqa: BLE001  (a diagnostic: never fail a case over it)
            return None
        wall0, busy0, ours0 = self._t0
        cores = os.cpu_count() or 1
        if wall1 - wall0 <= 0:
            return None
        others = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        return round(100.0 * others / ((wall1 - wall0) * cores), 1)


def collect() -> dict:
    """The environment dict stored in results.json (plain JSON values)."""
    import psutil
    import torch

    from vit_deploy import __version__

    return {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_cores_usable": usable_cores(),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu_info(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "versions": {
            "vit_deploy": __version__,
            **{name: package_version(name) for name in PACKAGES},
        },
        "git_commit": git_commit(),
        "load_average_start": load_average(),
        "load_average_end": None,  # filled in when the run ends
    }
