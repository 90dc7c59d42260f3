"""The TensorRT backend: a serialized engine, checked against its manifest, run on CUDA.

The backend contract (``runtime.base``): ``backend(pixels)`` takes float32 numpy pixels
(a torch tensor is accepted and copied to the host) and returns numpy arrays, after one
upload and one download, like every other backend; ``check_input`` returns the checked
array. ``run_device(x)`` keeps both ends on the GPU: a CUDA tensor of the engine's input
dtype in, CUDA tensors out, no host round trip. ``thread_safe`` is False: one call at a
time (the contexts share one activation buffer and one stream).

CUDA, as the TensorRT and PyTorch docs ask:

- the engine runs on the backend's own stream, not the caller's (normally the legacy
  default stream, on which ``execute_async_v3`` adds device synchronisations); the
  stream waits for the caller's stream before the run and the caller's waits for it
  after, so the call still composes with other torch work without a host sync;
- every execution context is created ``USER_MANAGED`` and given one shared activation
  buffer of ``ICudaEngine.device_memory_size_v2`` bytes (the most any profile and shape
  needs): one buffer however many run sizes get a CUDA graph;
- every call runs under a device guard (``torch.cuda.device``); nothing is set process-wide,
  and a tensor on another GPU is refused with InputDeviceError;
- ``cuda_graphs=True`` captures one CUDA graph per run size on first use (its own execution
  context and static buffers), after one warm-up run, on the same stream as that warm-up
  (``torch.cuda.graph(..., stream=)``), and replays it on the backend's stream.

Batches: any batch inside the engine's profile runs as one call. A larger batch is split
into chunks of the profile's MAX; a chunk smaller than MIN (the remainder, or a batch below
MIN) is zero-padded to MIN and the padded rows' outputs dropped (``batch_profile.plan_chunks``).

Importing this module does not import TensorRT; constructing a backend where TensorRT or
CUDA is missing raises BackendUnavailableError with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vit_deploy.batch_profile import BatchProfile, plan_chunks
from vit_deploy.errors import (
    ArtifactError,
    EngineMismatchError,
    InputDeviceError,
    InputDTypeError,
    InputShapeError,
    ManifestError,
)
from vit_deploy.manifest import read_manifest, verify_checksum
from vit_deploy.runtime.base import Backend, check_pixels
from vit_deploy.runtime.tensorrt import env as trt_env
from vit_deploy.runtime.tensorrt.env import (
    check_engine_compat,
    check_engine_section,
    rebuild_command,
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


def _dtype_name(dtype) -> str:
    """'float32' for torch.float32 and numpy.float32 alike."""
    return str(dtype).replace("torch.", "")


class TorchCuda:
    """Every CUDA call the backend makes, through PyTorch, for one device (tests replace it
    with a CPU stand-in that records streams, waits and captures)."""

    def __init__(self, torch, index: int):
        self.torch = torch
        self.device = torch.device("cuda", index)

    def guard(self):
        """Makes ``device`` current inside the block, and only there."""
        return self.torch.cuda.device(self.device)

    def new_stream(self):
        return self.torch.cuda.Stream(self.device)

    def current_stream(self):
        return self.torch.cuda.current_stream(self.device)

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def new_graph(self):
        return self.torch.cuda.CUDAGraph()

    def capture(self, graph, stream):
        # torch.cuda.graph captures what is issued on ``stream`` (else on a stream of its own):
        # https://docs.pytorch.org/docs/stable/generated/torch.cuda.graph.html
        return self.torch.cuda.graph(graph, stream=stream)

    def use_stream(self, stream):
        return self.torch.cuda.stream(stream)

    def record(self, tensor, stream) -> None:
        """``tensor`` is in use on ``stream`` (Tensor.record_stream)."""
        tensor.record_stream(stream)


class TensorRTBackend(Backend):
    """A TensorRT engine with the backend interface (``name``, ``config``, ``manifest``,
    ``output_names``, ``thread_safe``, ``__call__``, ``run_device``)."""

    name = "trt"
    thread_safe = False  # one shared activation buffer and one stream: one call at a time

    def __init__(self, source: str | Path, *, cuda_graphs: bool = False, device: int = 0):
        trt_env.require_tensorrt("the TensorRT backend")  # BackendUnavailableError, one line
        import tensorrt as trt
        import torch

        from vit_deploy.config import ViTConfig

        self._trt, self._torch = trt, torch
        self.root = Path(source)
        manifest = read_engine_manifest(self.root)
        section = manifest["engine"]
        self.engine_path = self.root / section["file"]

        # Refuse an engine built for another TensorRT / GPU before touching its bytes.
        self.environment = trt_env.capture_environment()
        diffs = check_engine_compat(section, self.environment)
        if diffs:
            raise EngineMismatchError(engine_mismatch_message(self.engine_path, section, diffs))
        verify_checksum(self.root, manifest)  # ChecksumMismatchError if the engine changed

        super().__init__(ViTConfig.from_dict(manifest["model"]), [], manifest=manifest)
        self.profile = BatchProfile.from_dict(section["profile"])
        self.cuda_graphs = cuda_graphs
        self.cuda = TorchCuda(torch, device)
        self.device = self.cuda.device
        with self.cuda.guard():
            self._load(trt, torch)

    def _load(self, trt, torch) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        # Runtime(logger).deserialize_cuda_engine(serialized_engine) -> ICudaEngine or None
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"Could not deserialize engine {self.engine_path}")

        # Named I/O tensors: num_io_tensors, get_tensor_name, get_tensor_mode, get_tensor_dtype,
        # get_tensor_profile_shape(name, profile_index) -> [min, opt, max]: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html
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
        shapes = self.engine.get_tensor_profile_shape(self.input_name, 0)
        engine_profile = BatchProfile(int(shapes[0][0]), int(shapes[1][0]), int(shapes[2][0]))
        if engine_profile != self.profile:
            raise ManifestError(
                f"engine profile: manifest says {self.profile}, the engine says {engine_profile}"
            )
        self._chw = tuple(int(d) for d in shapes[2][1:])

        # One activation buffer for every context: device_memory_size_v2 is the most any
        # profile needs; USER_MANAGED contexts take it with set_device_memory(ptr, size).
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html, https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
        self._memory_size = int(self.engine.device_memory_size_v2)
        self._memory = self.cuda.empty((max(self._memory_size, 1),), torch.uint8)
        self._stream = self.cuda.new_stream()
        self.context = self._new_context()
        self._graphs: dict[int, tuple] = {}

    def _new_context(self):
        # create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED), then
        # set_device_memory(memory, size) before any run:
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
        strategy = self._trt.ExecutionContextAllocationStrategy.USER_MANAGED
        context = self.engine.create_execution_context(strategy)
        if context is None:
            raise ArtifactError(
                f"TensorRT could not create an execution context for {self.engine_path}"
            )
        context.set_device_memory(self._memory.data_ptr(), self._memory_size)
        return context

    # ---------------------------------------------------------------- input checks
    def check_input(self, pixels) -> np.ndarray:
        """The checked float32 numpy batch; InputShapeError / InputDTypeError saying what was
        expected and what came."""
        array = check_pixels(pixels, self.config)
        self._check_chw(tuple(array.shape[1:]))
        return array

    def _check_chw(self, chw: tuple) -> None:
        if chw != self._chw:
            raise InputShapeError(
                f"expected images of shape {self._chw} (channels, height, width), got "
                f"{chw}; this engine was built at that resolution"
            )

    def check_device_input(self, x) -> None:
        """What ``run_device`` takes: a 4-D tensor of the engine's dtype on this backend's GPU."""
        torch = self._torch
        if not isinstance(x, torch.Tensor):
            raise InputDTypeError(
                f"expected a torch.Tensor on {self.device}, got {type(x).__name__}"
            )
        if x.device != self.device:
            raise InputDeviceError(
                f"expected a tensor on {self.device} (this backend's GPU), got one on {x.device}; "
                f"move it with .to('{self.device}') or load the backend with device="
                f"{x.device.index if x.device.index is not None else 0}"
            )
        if x.ndim != 4:
            raise InputShapeError(
                f"expected a 4-D (batch, channels, height, width) batch, got {x.ndim}-D "
                f"shape {tuple(x.shape)}"
            )
        self._check_chw(tuple(x.shape[1:]))
        if x.shape[0] < 1:
            raise InputShapeError("expected at least one image, got an empty batch")
        expected, got = _dtype_name(self.input_dtype), _dtype_name(x.dtype)
        if got != expected:
            raise InputDTypeError(
                f"expected {expected} pixels (the engine's input type), got {got}"
            )

    # ---------------------------------------------------------------- execution
    def _set_shape(self, context, shape: tuple) -> None:
        # IExecutionContext.set_input_shape(name, shape) -> bool: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
        if not context.set_input_shape(self.input_name, shape):
            raise InputShapeError(f"the engine refused input shape {shape}; profile {self.profile}")

    def _bind_and_run(self, context, x, outputs, stream) -> None:
        # set_tensor_address(name, pointer) and execute_async_v3(stream_handle) -> bool
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
        context.set_tensor_address(self.input_name, x.data_ptr())
        for name, out in outputs.items():
            context.set_tensor_address(name, out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise ArtifactError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _alloc_outputs(self, context, rows: int) -> dict:
        outputs = {}
        for name in self.output_names:
            # IExecutionContext.get_tensor_shape(name): concrete once the input shape is set
            shape = list(context.get_tensor_shape(name))
            shape[0] = rows
            outputs[name] = self.cuda.empty(tuple(shape), self._output_dtypes[name])
        return outputs

    def _run_eager(self, x) -> dict:
        self._set_shape(self.context, tuple(x.shape))
        outputs = self._alloc_outputs(self.context, x.shape[0])
        self._bind_and_run(self.context, x, outputs, self._stream)
        return outputs

    def _run_graph(self, x) -> dict:
        """Replay (capturing on first use) the CUDA graph for this run size."""
        rows = x.shape[0]
        if rows not in self._graphs:
            context = self._new_context()
            static_in = self.cuda.empty(tuple(x.shape), x.dtype)
            static_in.copy_(x)
            self._set_shape(context, tuple(x.shape))
            static_out = self._alloc_outputs(context, rows)
            # one eager run before capture, so TensorRT's deferred per-shape setup happens
            # outside the graph; then capture on that same stream
            self._bind_and_run(context, static_in, static_out, self._stream)
            graph = self.cuda.new_graph()
            with self.cuda.capture(graph, self._stream):
                self._bind_and_run(context, static_in, static_out, self._stream)
            self._graphs[rows] = (graph, context, static_in, static_out)
        graph, _, static_in, static_out = self._graphs[rows]
        static_in.copy_(x)
        graph.replay()
        return {name: out.clone() for name, out in static_out.items()}

    def run_device(self, x) -> dict:
        """CUDA tensor in, CUDA tensors out (one entry per engine output), ordered after the
        caller's current stream and before its next work."""
        self.check_device_input(x)
        with self.cuda.guard():
            caller = self.cuda.current_stream()
            self._stream.wait_stream(caller)  # x was written on the caller's stream
            with self.cuda.use_stream(self._stream):
                out = self._run_chunks(x)
            caller.wait_stream(self._stream)  # the outputs are ready for the caller's work
            # the caching allocator must not hand x's memory out again before our stream is
            # done with it, nor the outputs' (allocated on our stream) before the caller's is
            self.cuda.record(x, self._stream)
            for tensor in out.values():
                self.cuda.record(tensor, caller)
        return out

    def _run_chunks(self, x) -> dict:
        torch = self._torch
        results: dict[str, list] = {name: [] for name in self.output_names}
        for chunk in plan_chunks(x.shape[0], self.profile):
            part = x[chunk.start : chunk.stop]
            if chunk.pad:
                padded = self.cuda.empty((chunk.run_size, *x.shape[1:]), x.dtype)
                padded.zero_()
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

    def _run(self, pixels: np.ndarray) -> dict:
        """numpy in, numpy out: one upload, one download (synchronises with the stream)."""
        torch = self._torch
        with self.cuda.guard():
            x = torch.from_numpy(pixels).to(self.device, self.input_dtype)
            out = self.run_device(x)
            return {name: t.float().cpu().numpy() for name, t in out.items()}

    def __repr__(self) -> str:
        return (
            f"TensorRTBackend({str(self.engine_path)!r}, profile={self.profile}, "
            f"precision={self.manifest['engine'].get('precision')}, cuda_graphs={self.cuda_graphs})"
        )
