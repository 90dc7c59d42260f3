"""The backends vit-bench knows: what each runs, whether it can run here, how to load it.

A ``BackendSpec`` answers three questions without loading anything:
``unavailable(ctx)``, why the backend cannot run on this machine at all (None: it can);
``skip(ctx, precision)``, why one precision is not benchmarked here although the
backend runs (e.g. PyTorch fp16 on a CPU); and ``load(ctx, precision)``, which builds
the backend (exporting an artifact first if none was given) and returns a ``Loaded``.

Tests add their own spec (a backend that raises) to a copy of ``REGISTRY``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vit_deploy.bench.timing import CpuTimer, CudaEventTimer

TRITON_CPU_REASON = "Triton interpreter: correctness only, not a timing"


@dataclass
class Loaded:
    """A loaded backend: ``backend(pixels) -> {name: array}`` (the common interface, used for
    parity) and ``timed_call(x)``, a zero-argument closure that runs batch ``x`` once."""

    backend: object
    device: str = "cpu"
    timer: object = field(default_factory=CpuTimer)
    notes: list[str] = field(default_factory=list)
    timing_valid: bool = True  # False: the timings are recorded but are not a benchmark
    parity_limit: int | None = None  # at most this many parity samples (slow backends)
    load_s: float | None = None  # set by loaders that export first (export time excluded)
    make_call: Callable[[np.ndarray], Callable[[], object]] | None = None

    def timed_call(self, x: np.ndarray) -> Callable[[], object]:
        if self.make_call is not None:
            return self.make_call(x)
        return lambda: self.backend(x)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    precisions: tuple[str, ...]
    load: Callable[..., Loaded]
    unavailable: Callable[..., str | None] = lambda ctx: None
    skip: Callable[..., str | None] = lambda ctx, precision: None
    description: str = ""


# ------------------------------------------------------------------------------ torch


def _torch_unavailable(ctx) -> str | None:
    return None


def _torch_skip(ctx, precision: str) -> str | None:
    if precision == "fp16" and ctx.device != "cuda":
        return "PyTorch fp16 on the CPU: no fast fp16 kernels here, not a deployment path"
    return None


def _torch_loaded(model, precision: str, device: str) -> Loaded:
    import torch

    from vit_deploy.runtime.torch_backend import TorchBackend

    if device == "cuda":
        model = model.to("cuda", torch.float16 if precision == "fp16" else torch.float32)
    backend = _CastingTorchBackend(model) if precision == "fp16" else TorchBackend(model)
    if device != "cuda":
        return Loaded(backend, device="cpu")
    dtype = next(model.parameters()).dtype

    def make_call(x: np.ndarray):
        # the input stays on the GPU: the timing is the model, not host<->device copies
        x_dev = torch.from_numpy(x).to("cuda", dtype)

        def call():
            with torch.inference_mode():
                return model.forward_all(x_dev)

        return call

    return Loaded(backend, device="cuda", timer=CudaEventTimer(), make_call=make_call)


def _load_torch(ctx, precision: str) -> Loaded:
    model = ctx.source.load(attention="sdpa")
    return _torch_loaded(model, precision, ctx.device)


def _load_torch_compile(ctx, precision: str) -> Loaded:
    """torch.compile (inductor) of the same sdpa model: the rival a PyTorch user tries
    first. One graph per batch size (dynamic=False); compilation happens in the warmup."""
    import torch

    model = ctx.source.load(attention="sdpa")
    loaded = _torch_loaded(model, precision, ctx.device)
    # an instance attribute shadows the method: the parity backend and the timed call
    # (both look up model.forward_all per call) run the compiled graph
    model.forward_all = torch.compile(model.forward_all, backend="inductor", dynamic=False)
    loaded.backend.name = "torch-compile"
    loaded.notes.append("torch.compile(backend='inductor', dynamic=False); compiled in warmup")
    return loaded


def _triton_unavailable(ctx) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'triton>=3.2', Linux)"
    if ctx.device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA GPU, and TRITON_INTERPRET=1 was not set before Triton was imported"
    return None


def _triton_skip(ctx, precision: str) -> str | None:
    if ctx.device == "cuda":
        return None
    if precision == "fp16":
        return "fp16 Triton attention on the CPU interpreter: not supported here"
    if "torch-triton" not in ctx.explicit_backends:
        return f"{TRITON_CPU_REASON} (name it in --backends to run that check)"
    return None


def _load_triton(ctx, precision: str) -> Loaded:
    loaded = _torch_loaded(ctx.source.load(attention="triton"), precision, ctx.device)
    if ctx.device != "cuda":
        loaded.notes.append(TRITON_CPU_REASON)
        loaded.timing_valid = False
        loaded.parity_limit = TRITON_CPU_PARITY_SAMPLES
    return loaded


TRITON_CPU_PARITY_SAMPLES = 8  # the interpreter needs about a second per small image


class _CastingTorchBackend:
    """TorchBackend for a half-precision model: float32 pixels in, cast on the device,
    float32 outputs back (TorchBackend itself feeds the pixels as they come)."""

    def __init__(self, model):
        from vit_deploy.runtime.torch_backend import TorchBackend

        self._inner = TorchBackend(model)
        self.name, self.config = self._inner.name, self._inner.config
        self.manifest, self.output_names = None, self._inner.output_names

    def __call__(self, pixels):
        import torch

        x = self._inner.check_input(pixels)
        model, device = self._inner.model, self._inner.device
        dtype = next(model.parameters()).dtype
        with torch.inference_mode():
            logits, embedding = model.forward_all(torch.from_numpy(x).to(device, dtype))
        outputs = {"logits": logits, "embedding": embedding}
        return {k: outputs[k].float().cpu().numpy() for k in self.output_names}


# ------------------------------------------------------------------------------ ONNX Runtime


def _ort_unavailable(ctx) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime is not installed (pip install onnxruntime)"
    return None


def export_onnx(ctx, precision: str) -> Path:
    """Export the reference model to ``<out>/artifacts/onnx-<precision>`` (no parity gate:
    the benchmark measures parity itself and reports it instead of refusing)."""
    from vit_deploy.export.onnx.pipeline import export_onnx_artifact
    from vit_deploy.export.options import OnnxExportOptions

    out = Path(ctx.out) / "artifacts" / f"onnx-{precision}"
    start = time.perf_counter()
    options = OnnxExportOptions(precision=precision, verify=False)
    export_onnx_artifact(
        ctx.reference_model, out, options, source=ctx.source.description, threads=ctx.threads
    )
    ctx.record_artifact("ort", precision, out, exported=True, seconds=time.perf_counter() - start)
    return out


def onnx_artifact(ctx, precision: str) -> Path:
    """The ONNX artifact at ``precision``: given with --artifacts, exported earlier in this
    run (ONNX Runtime and OpenVINO time the same file), or exported now."""
    given = ctx.artifact_for("ort", precision)
    if given is not None:
        return given
    for a in ctx.artifact_log:
        if (a["backend"], a["precision"], a["exported"]) == ("ort", precision, True):
            return Path(a["path"])
    return export_onnx(ctx, precision)


def _load_ort(ctx, precision: str) -> Loaded:
    from vit_deploy.runtime.ort_backend import OrtBackend

    directory = onnx_artifact(ctx, precision)
    start = time.perf_counter()
    backend = OrtBackend.from_artifact(directory, threads=ctx.threads)
    load_s = time.perf_counter() - start
    device = "cuda" if any("CUDA" in p or "Tensorrt" in p for p in backend.providers) else "cpu"
    loaded = Loaded(backend, device=device, load_s=load_s)
    loaded.notes.append(f"providers: {', '.join(backend.providers)}")
    if device == "cuda":
        loaded.notes.append("ONNX Runtime timings include host<->device copies (numpy I/O)")
    return loaded


# ------------------------------------------------------------------------------ OpenVINO

# bench precision -> (ONNX artifact precision, OpenVINO inference precision hint)
OPENVINO_CASES = {"fp32": ("fp32", "f32"), "bf16": ("fp32", "bf16"), "int8": ("int8", "f32")}


def _openvino_unavailable(ctx) -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'vit-deploy[openvino]')"
    return None


def _load_openvino(ctx, precision: str) -> Loaded:
    from vit_deploy.runtime.openvino_backend import OpenVinoBackend

    artifact_precision, hint = OPENVINO_CASES[precision]
    directory = onnx_artifact(ctx, artifact_precision)
    start = time.perf_counter()
    # the benchmark measures parity itself (and reports it), so it does not need the
    # manifest's OpenVINO record that serving requires
    backend = OpenVinoBackend.from_artifact(
        directory, precision=hint, threads=ctx.threads, require_verified=False
    )
    loaded = Loaded(backend, device="cpu", load_s=time.perf_counter() - start)
    loaded.notes.append(
        f"OpenVINO on our {artifact_precision} ONNX, hint {hint}, runs at "
        f"{backend.inference_precision}"
    )
    return loaded


# ------------------------------------------------------------------------------ TensorRT


def _trt_unavailable(ctx) -> str | None:
    from vit_deploy.runtime.tensorrt.env import tensorrt_problems

    problems = tensorrt_problems()
    return "; ".join(problems) if problems else None


def _load_trt(ctx, precision: str) -> Loaded:
    import torch

    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

    directory = ctx.artifact_for("trt", precision) or build_engine(ctx, precision)
    start = time.perf_counter()
    backend = TensorRTBackend(directory)  # deserialisation is the load time
    load_s = time.perf_counter() - start

    def make_call(x: np.ndarray):
        x_dev = torch.from_numpy(x).to("cuda", backend.input_dtype)
        return lambda: backend.run_device(x_dev)

    return Loaded(
        backend, device="cuda", timer=CudaEventTimer(), make_call=make_call, load_s=load_s
    )


def engine_profile(batch_sizes) -> str:
    """MIN:OPT:MAX covering every batch size of the run, tuned for the middle one."""
    sizes = sorted(batch_sizes)
    return f"{sizes[0]}:{sizes[len(sizes) // 2]}:{sizes[-1]}"


def build_engine(ctx, precision: str) -> Path:
    """Build a TensorRT artifact with the TensorRT exporter (its parity gate and fp32
    escalation included: the engine vit-export would write), profile over the run's
    batch sizes, into ``<out>/artifacts/trt-<precision>``."""
    from vit_deploy.export.tensorrt.export import export_trt

    out = Path(ctx.out) / "artifacts" / f"trt-{precision}"
    start = time.perf_counter()
    export_trt(
        ctx.reference_model,
        out,
        precision=precision,
        batch=engine_profile(ctx.batch_sizes),
        source=ctx.source.description,
    )
    ctx.record_artifact("trt", precision, out, exported=True, seconds=time.perf_counter() - start)
    return out


REGISTRY: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "torch",
            ("fp32", "fp16"),
            _load_torch,
            _torch_unavailable,
            _torch_skip,
            "PyTorch eager, sdpa attention",
        ),
        BackendSpec(
            "torch-compile",
            ("fp32", "fp16"),
            _load_torch_compile,
            _torch_unavailable,
            _torch_skip,
            "torch.compile (inductor), sdpa attention",
        ),
        BackendSpec(
            "torch-triton",
            ("fp32", "fp16"),
            _load_triton,
            _triton_unavailable,
            _triton_skip,
            "PyTorch eager, our fused Triton attention",
        ),
        BackendSpec(
            "ort",
            ("fp32", "fp16", "int8"),
            _load_ort,
            _ort_unavailable,
            description="ONNX Runtime",
        ),
        BackendSpec(
            "openvino",
            tuple(OPENVINO_CASES),
            _load_openvino,
            _openvino_unavailable,
            description="OpenVINO (CPU) on our ONNX artifact",
        ),
        BackendSpec("trt", ("fp32", "fp16"), _load_trt, _trt_unavailable, description="TensorRT"),
    )
}
