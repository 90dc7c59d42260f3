"""The TensorRT backend: a serialized engine, checked against its manifest, run on CUDA.

Same call as the other backends: ``backend(pixels) -> {"logits": ..., "embedding": ...}``.
What comes back follows what went in:

- a torch CUDA tensor in -> torch CUDA tensors out, no host round trip; the
  engine runs on the caller's current CUDA stream
  (``torch.cuda.current_stream().cuda_stream``), so the call composes with
  other torch work on that stream without a synchronisation;
- a numpy array (or a CPU tensor) in -> numpy arrays (CPU tensors) out, after
  one upload and one download, like the other backends.

Batches: any batch inside the engine's profile runs as one call. A larger batch
is split into chunks of the profile's MAX; a chunk smaller than MIN (the
remainder, or a batch below MIN) is zero-padded to MIN and the padded rows'
outputs dropped (``export.batch_profile.plan_chunks``).

``cuda_graphs=True`` captures one CUDA graph per run size on first use (with its
own execution context and static buffers) and replays it afterwards: less
launch overhead for small batches, a copy in and out of the static buffers.

Importing this module does not import TensorRT; constructing a backend where
TensorRT or CUDA is missing raises BackendUnavailableError with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vit_deploy.batch_profile import BatchProfile, plan_chunks
from vit_deploy.errors import (
    ArtifactError,
    EngineMismatchError,
    InputDTypeError,
    InputShapeError,
    ManifestError,
)
from vit_deploy.manifest import read_manifest, verify_checksum
from vit_deploy.runtime.base import Backend
from vit_deploy.runtime.tensorrt.env import (
    capture_environment,
    check_engine_compat,
    check_engine_section,
    rebuild_command,
    require_tensorrt,
)

ARTIFACT_FORMAT = "trt"


def read_engine_manifest(directory: str | Path) -> dict:
    """The checked manifest of a TensorRT artifact directory (with its "engine" section)."""
    manifest = read_manifest(directory)
    fmt = manifest["artifact"]["format"]
    if fmt != ARTIFACT_FORMAT or "engine" not in manifest:
        raise ManifestError(
            f"{directory}: expected a TensorRT artifact (artifact.format 'trt' and an 'engine' "
            f"section), got artifact.format {fmt!r}; build one with vit-export --fmt trt"
        )
    check_engine_section(manifest["engine"])
    return manifest


def engine_mismatch_message(engine_path: Path, section: Mapping, diffs: list[str]) -> str:
    lines = [f"{engine_path} was built for another machine and cannot run here:"]
    lines += [f"  - {d}" for d in diffs]
    lines.append(f"rebuild it here with: {rebuild_command(section)}")
    return "\n".join(lines)


def _torch_dtype(trt, torch, trt_dtype):
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if trt_dtype not in table:
        raise ArtifactError(f"engine I/O dtype: expected float, half or bf16, got {trt_dtype}")
    return table[trt_dtype]


def _is_ndarray(x) -> bool:
    return type(x).__module__ == "numpy" and hasattr(x, "ndim") and hasattr(x, "dtype")


def _dtype_name(dtype) -> str:
    """'float32' for torch.float32 and numpy.float32 alike."""
    return str(dtype).replace("torch.", "")


class TensorRTBackend(Backend):
    """A TensorRT engine with the backend interface (``name``, ``config``, ``manifest``,
    ``output_names``, ``__call__``)."""

    name = "trt"

    def __init__(self, source: str | Path, *, cuda_graphs: bool = False, device: int = 0):
        require_tensorrt("the TensorRT backend")  # BackendUnavailableError, one line
        import tensorrt as trt
        import torch

        from vit_deploy.config import ViTConfig

        self._trt, self._torch = trt, torch
        self.root = Path(source)
        manifest = read_engine_manifest(self.root)
        section = manifest["engine"]
        self.engine_path = self.root / section["file"]

        # Refuse an engine built for another TensorRT / GPU before touching its bytes.
        torch.cuda.set_device(device)
        self.environment = capture_environment()
        diffs = check_engine_compat(section, self.environment)
        if diffs:
            raise EngineMismatchError(engine_mismatch_message(self.engine_path, section, diffs))
        verify_checksum(self.root, manifest)  # ChecksumMismatchError if the engine changed

        super().__init__(ViTConfig.from_dict(manifest["model"]), [], manifest=manifest)
        self.profile = BatchProfile.from_dict(section["profile"])
        self.cuda_graphs = cuda_graphs
        self.device = torch.device("cuda", device)

        self._logger = trt.Logger(trt.Logger.WARNING)
        # https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-843/api/python_api/infer/Core/Runtime.html
        self._runtime = trt.Runtime(self._logger)
        # Runtime.deserialize_cuda_engine(serialized_engine) -> ICudaEngine or None (same page)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"Could not deserialize engine {self.engine_path}")

        # Named I/O tensors: num_io_tensors, get_tensor_name, get_tensor_mode, get_tensor_dtype
        # https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Engine.html
        inputs, outputs = [], []
        for i in range(self.engine.num_io_tensors):
            tensor = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(tensor)
            (inputs if mode == trt.TensorIOMode.INPUT else outputs).append(tensor)
        if len(inputs) != 1:
            raise ArtifactError(f"engine inputs: expected 1 (pixels), got {inputs}")
        self.input_name = inputs[0]
        self.output_names = list(outputs)
        self.input_dtype = _torch_dtype(trt, torch, self.engine.get_tensor_dtype(self.input_name))
        self._output_dtypes = {
            n: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in outputs
        }
        # ICudaEngine.get_tensor_profile_shape(name, profile_index) -> [min, opt, max] (same page)
        shapes = self.engine.get_tensor_profile_shape(self.input_name, 0)
        engine_profile = BatchProfile(int(shapes[0][0]), int(shapes[1][0]), int(shapes[2][0]))
        if engine_profile != self.profile:
            raise ManifestError(
                f"engine profile: manifest says {self.profile}, the engine says {engine_profile}"
            )
        self._chw = tuple(int(d) for d in shapes[2][1:])
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
        self.context = self.engine.create_execution_context()
        self._graphs: dict[int, tuple] = {}

    # ---------------------------------------------------------------- input checks
    def check_input(self, pixels) -> None:
        """Raise InputShapeError / InputDTypeError saying what was expected and what came."""
        torch = self._torch
        if not (isinstance(pixels, torch.Tensor) or _is_ndarray(pixels)):
            raise InputDTypeError(
                f"expected a torch.Tensor or numpy array of pixels, got {type(pixels).__name__}"
            )
        if pixels.ndim != 4:
            raise InputShapeError(
                f"expected a 4-D (batch, channels, height, width) batch, got {pixels.ndim}-D "
                f"shape {tuple(pixels.shape)}"
            )
        if tuple(pixels.shape[1:]) != self._chw:
            raise InputShapeError(
                f"expected images of shape {self._chw} (channels, height, width), got "
                f"{tuple(pixels.shape[1:])}; this engine was built at that resolution"
            )
        if pixels.shape[0] < 1:
            raise InputShapeError("expected at least one image, got an empty batch")
        expected, got = _dtype_name(self.input_dtype), _dtype_name(pixels.dtype)
        if got != expected:
            raise InputDTypeError(
                f"expected {expected} pixels (the engine's input type), got {got}"
            )

    # ---------------------------------------------------------------- execution
    def _set_shape(self, context, shape: tuple) -> None:
        # IExecutionContext.set_input_shape(name, shape) -> bool
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
        if not context.set_input_shape(self.input_name, shape):
            raise InputShapeError(f"the engine refused input shape {shape}; profile {self.profile}")

    def _bind_and_run(self, context, x, outputs, stream_handle: int) -> None:
        # set_tensor_address(name, pointer) and execute_async_v3(stream_handle) -> bool
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
        context.set_tensor_address(self.input_name, x.data_ptr())
        for name, out in outputs.items():
            context.set_tensor_address(name, out.data_ptr())
        if not context.execute_async_v3(stream_handle):
            raise ArtifactError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _alloc_outputs(self, context, rows: int) -> dict:
        torch = self._torch
        outputs = {}
        for name in self.output_names:
            # IExecutionContext.get_tensor_shape(name): concrete once the input shape is set
            shape = list(context.get_tensor_shape(name))
            shape[0] = rows
            outputs[name] = torch.empty(shape, dtype=self._output_dtypes[name], device=self.device)
        return outputs

    def _run_eager(self, x) -> dict:
        torch = self._torch
        self._set_shape(self.context, tuple(x.shape))
        outputs = self._alloc_outputs(self.context, x.shape[0])
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self._bind_and_run(self.context, x, outputs, stream)
        return outputs

    def _run_graph(self, x) -> dict:
        """Replay (capturing on first use) the CUDA graph for this run size."""
        torch = self._torch
        rows = x.shape[0]
        if rows not in self._graphs:
            context = self.engine.create_execution_context()
            static_in = torch.zeros_like(x)
            self._set_shape(context, tuple(x.shape))
            static_out = self._alloc_outputs(context, rows)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                # one eager run before capture, so TensorRT's deferred per-shape setup
                # happens outside the graph
                self._bind_and_run(context, static_in, static_out, side.cuda_stream)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # torch.cuda.graph captures everything issued on its (side) stream:
            # https://docs.pytorch.org/docs/stable/generated/torch.cuda.graph.html
            with torch.cuda.graph(graph):
                capture_stream = torch.cuda.current_stream(self.device).cuda_stream
                self._bind_and_run(context, static_in, static_out, capture_stream)
            self._graphs[rows] = (graph, context, static_in, static_out)
        graph, _, static_in, static_out = self._graphs[rows]
        static_in.copy_(x)
        graph.replay()
        return {name: out.clone() for name, out in static_out.items()}

    def run_device(self, x) -> dict:
        """CUDA tensor in, CUDA tensors out (one entry per engine output)."""
        torch = self._torch
        results: dict[str, list] = {name: [] for name in self.output_names}
        for chunk in plan_chunks(x.shape[0], self.profile):
            part = x[chunk.start : chunk.stop]
            if chunk.pad:
                padded = torch.zeros((chunk.run_size, *x.shape[1:]), dtype=x.dtype, device=x.device)
                padded[: chunk.stop - chunk.start] = part
                part = padded
            part = part.contiguous()
            out = self._run_graph(part) if self.cuda_graphs else self._run_eager(part)
            for name in self.output_names:
                results[name].append(out[name][: chunk.stop - chunk.start])
        return {
            name: parts[0] if len(parts) == 1 else torch.cat(parts)
            for name, parts in results.items()
        }

    def _run(self, pixels) -> dict:
        """numpy in, numpy out: one upload, one download (synchronises the stream)."""
        import numpy as np

        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        return {name: t.cpu().numpy() for name, t in self.run_device(x).items()}

    def __call__(self, pixels) -> dict:
        torch = self._torch
        self.check_input(pixels)
        if not isinstance(pixels, torch.Tensor):
            return self._run(pixels)
        if pixels.is_cuda:
            return self.run_device(pixels)
        return {name: t.cpu() for name, t in self.run_device(pixels.to(self.device)).items()}

    def __repr__(self) -> str:
        return (
            f"TensorRTBackend({str(self.engine_path)!r}, profile={self.profile}, "
            f"precision={self.manifest['engine'].get('precision')}, cuda_graphs={self.cuda_graphs})"
        )
