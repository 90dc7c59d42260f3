"""Peak memory of one benchmark case.

CPU: the process's resident set (RSS). Linux keeps a high-water mark (``VmHWM`` in
/proc/self/status) that ``echo 5 > /proc/self/clear_refs`` resets, so each case's peak
is its own. Caveat: RSS is process-wide: the peak includes the Python interpreter,
the reference model, the inputs, and whatever else is resident, not the backend
alone; ``rss_start_mb`` (resident at the start of the case) is recorded beside it so
the growth during the case can be read off. Where the mark cannot be reset (not
Linux, or /proc not writable) the peak is the process's lifetime high-water mark
(``getrusage``) and ``hwm_reset`` says so.

GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. It counts
PyTorch's allocator only: tensors of the torch backend and the TensorRT backend's
input/output buffers, not TensorRT's or ONNX Runtime's own device allocations.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def rss_peak_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # ru_maxrss: kilobytes on Linux, bytes on macOS
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = raw / 1024 if sys.platform == "darwin" else raw
    return kb / 1024


class PeakMemory:
    """Start before a case, ``stop()`` after it: ``{"peak_mem_mb", "memory": {...}}``."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def start(self) -> PeakMemory:
        self.rss_start_mb = rss_mb()
        self.hwm_reset = reset_rss_peak()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def stop(self) -> dict:
        rss_peak = rss_peak_mb()
        memory = {
            "kind": "cpu_rss_hwm",
            "rss_start_mb": round(self.rss_start_mb, 1),
            "rss_peak_mb": round(rss_peak, 1),
            "hwm_reset": self.hwm_reset,
            "gpu_torch_peak_mb": None,
        }
        peak = rss_peak
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
            memory["kind"] = "cuda_torch_max_allocated"
            memory["gpu_torch_peak_mb"] = round(peak, 1)
        return {"peak_mem_mb": round(peak, 1), "memory": memory}
