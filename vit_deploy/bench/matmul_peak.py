"""The device's practical peak, measured in the same run as the model timings.

A large square matmul is about the best any dense layer does on a device, so a
backend's achieved FLOP/s divided by this rate says how much of the machine it used.
2·n³ FLOPs per n x n product; per size, the best of at least ``repeats`` calls (more
while under ``seconds_per_size``); the best over sizes and libraries is the peak.

CPU, fp32, with the benchmark's thread count, through every matmul library the
backends use: ``torch.mm`` (MKL here), ONNX Runtime's MatMul (MLAS) and
``numpy.matmul`` (OpenBLAS; its own thread count, all cores by default). They differ a
lot on some CPUs (MKL takes a slower path on AMD), so taking only one would
understate the machine. GPU: ``torch.mm`` in fp16 (tensor cores) and fp32 (TF32 off),
timed with CUDA events.

The runner measures before and after the cases and keeps the higher rate: other work
on the machine can only pull a best-of measurement down, never up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CPU_SIZES = (512, 1024, 2048)
GPU_SIZES = (4096, 8192)


def _time_cpu(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _time_cuda(fn) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _torch_mm(n: int, device: str, dtype: str) -> Callable[[], object]:
    import torch

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=gen).to(device, torch_dtype)
    b = torch.randn(n, n, generator=gen).to(device, torch_dtype)
    c = torch.empty(n, n, device=device, dtype=torch_dtype)
    return lambda: torch.mm(a, b, out=c)


def _numpy_mm(n: int, threads: int) -> Callable[[], object]:
    import numpy as np

    rng = np.random.default_rng(n)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    return lambda: np.matmul(a, b, out=c)


def _ort_mm(n: int, threads: int) -> Callable[[], object]:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", spec[:2], spec[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(n)
    feeds = {x: rng.standard_normal((n, n), dtype=np.float32) for x in "ab"}
    return lambda: session.run(None, feeds)


def _best_rate(fn, n: int, timer, repeats: int, seconds: float) -> float:
    fn()  # warm-up: library init, thread pool spin-up
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < repeats or (time.perf_counter() < deadline and len(times) < 100):
        times.append(timer(fn))
    return 2.0 * n**3 / min(times) / 1e9


def cpu_matmul_rate(
    sizes: tuple[int, ...] | None = None,
    repeats: int = 3,
    seconds_per_size: float = 0.2,
    threads: int | None = None,
) -> dict:
    """fp32 matmul rate of this CPU: the best over sizes and libraries, each recorded."""
    import importlib.util

    import torch

    threads = threads or torch.get_num_threads()
    makers = {"torch.mm": lambda n: _torch_mm(n, "cpu", "fp32"), "numpy.matmul": _numpy_mm}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        makers["onnxruntime.MatMul"] = _ort_mm
    by_library: dict[str, dict[str, float]] = {}
    for name, make in makers.items():
        rates = {}
        for n in sizes or CPU_SIZES:
            fn = make(n) if name == "torch.mm" else make(n, threads)
            rates[str(n)] = _best_rate(fn, n, _time_cpu, repeats, seconds_per_size)
            del fn
        by_library[name] = rates
    library, size = max(
        ((lib, n) for lib, rates in by_library.items() for n in rates),
        key=lambda k: by_library[k[0]][k[1]],
    )
    return {
        "device": "cpu",
        "dtype": "fp32",
        "gflops_per_s": by_library[library][size],
        "library": library,
        "size": int(size),
        "by_library": by_library,
        "threads": threads,
        "method": f"n x n fp32 matmul, best of >= {repeats} calls per size and library, "
        "2*n^3 FLOPs",
    }


def cuda_matmul_rate(dtype: str, sizes: tuple[int, ...] | None = None, repeats: int = 5) -> dict:
    import torch

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # an fp32 peak, not a TF32 one
    try:
        rates = {
            str(n): _best_rate(_torch_mm(n, "cuda", dtype), n, _time_cuda, repeats, 0.2)
            for n in sizes or GPU_SIZES
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    size = max(rates, key=rates.get)
    return {
        "device": "cuda",
        "dtype": dtype,
        "gflops_per_s": rates[size],
        "library": "torch.mm",
        "size": int(size),
        "by_library": {"torch.mm": rates},
        "threads": None,
        "method": f"torch.mm of n x n {dtype} matrices (TF32 off), best of >= {repeats} calls",
    }


def device_peaks(
    on_gpu: bool,
    sizes: tuple[int, ...] | None = None,
    repeats: int = 3,
    seconds_per_size: float = 0.2,
) -> dict:
    """Peaks keyed ``"<device>_<dtype>"``: cpu_fp32 always; cuda_fp16 and cuda_fp32 on a GPU."""
    peaks = {"cpu_fp32": cpu_matmul_rate(sizes, repeats, seconds_per_size)}
    if on_gpu:
        for dtype in ("fp16", "fp32"):
            peaks[f"cuda_{dtype}"] = cuda_matmul_rate(dtype)
    return peaks


def best_of(before: dict, after: dict) -> dict:
    """Per key, the measurement with the higher rate, with both rates recorded."""
    merged = {}
    for key, first in before.items():
        second = after.get(key, first)
        best = max(first, second, key=lambda m: m["gflops_per_s"])
        merged[key] = {
            **best,
            "before_gflops_per_s": first["gflops_per_s"],
            "after_gflops_per_s": second["gflops_per_s"],
        }
    return merged
