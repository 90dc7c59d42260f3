"""The TensorRT calls: ``build_engine`` and ``inspect_engine`` (the GPU-only part).

This is the only code of the export that calls TensorRT, kept thin: every decision
(profile, precision, fp32 keep list, fusion report, compatibility) is made elsewhere
without TensorRT and tested without a GPU. Each call cites the NVIDIA documentation
page it follows, beside the call.

The network is strongly typed (TensorRT 11 is always; on 10.12+ we pass the
STRONGLY_TYPED flag), so every tensor keeps the type the ONNX graph gives it; TF32 is
off so fp32 in the graph means fp32 in the engine. Importing this module does not
import TensorRT.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vit_deploy.batch_profile import BatchProfile
from vit_deploy.errors import ConfigError, ExportError

OPT_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level: 0..5, TensorRT's default 3
DEFAULT_OPT_LEVEL = 3
DEFAULT_WORKSPACE_GIB = 4.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    profile: BatchProfile
    opt_level: int = DEFAULT_OPT_LEVEL
    workspace_gib: float = DEFAULT_WORKSPACE_GIB
    timing_cache: str | None = None

    def __post_init__(self):
        problems = []
        if self.opt_level not in OPT_LEVELS:
            problems.append(f"--opt-level: expected 0..5, got {self.opt_level}")
        if not self.workspace_gib > 0:
            problems.append(
                f"--workspace-gib: expected a positive number, got {self.workspace_gib}"
            )
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            problems.append(
                f"--timing-cache: expected a file path, got a directory {self.timing_cache!r}"
            )
        if problems:
            raise ConfigError("; ".join(problems))


def build_engine(
    onnx_path: str | os.PathLike,
    options: BuildOptions,
    *,
    input_name: str,
    in_chans: int,
    img_size: int,
) -> bytes:
    """A serialized, strongly typed engine for ``onnx_path`` (the GPU-only part)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
    builder = trt.Builder(logger)
    # STRONGLY_TYPED: every tensor keeps the ONNX graph's type. Required on 10.12+ for that
    # behaviour; "deprecated ... retained for API compatibility but is ignored" on 11.x:
    # https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    # OnnxParser(network, logger); parse_from_file(path) -> bool; num_errors; get_error(i)
    # https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-861/api/python_api/parsers/Onnx/pyOnnx.html
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT could not parse {onnx_path}: " + ("; ".join(errors) or "no parser errors")
        )

    # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/BuilderConfig.html
    config = builder.create_builder_config()
    # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/BuilderConfig.html
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/BuilderConfig.html
    config.builder_optimization_level = options.opt_level
    # DETAILED: the engine inspector lists every layer's kernel and tensor types (fusion report)
    # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/BuilderConfig.html
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    # TF32 is on by default and would round the fp32 islands' matmuls to 10-bit mantissas;
    # fp32 in the graph means fp32 here. BuilderFlag.TF32: "Enabled by default."
    # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/BuilderConfig.html
    config.clear_flag(trt.BuilderFlag.TF32)

    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/OptimizationProfile.html
    profile = builder.create_optimization_profile()
    shape_min, shape_opt, shape_max = options.profile.shapes(in_chans, img_size)
    profile.set_shape(input_name, shape_min, shape_opt, shape_max)
    # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/BuilderConfig.html
    config.add_optimization_profile(profile)

    # Timing cache: createTimingCache(blob) (empty blob: a new cache), setTimingCache(cache,
    # ignore_mismatch=False), and after the build cache.serialize():
    # https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/performance/builder-performance.html
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/TimingCache.html
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, False)

    # Builder.build_serialized_network(network, config) -> IHostMemory, or None on failure
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above); "
            f"profile {options.profile}, workspace {options.workspace_gib:g} GiB"
        )
    if cache_path is not None:
        # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/TimingCache.html
        from vit_deploy.storage import output_lock

        # concurrent builds sharing one cache: read, merge and write under its lock, so
        # a build that finished meanwhile keeps its entries (Polygraphy does the same)
        with output_lock(cache_path, wait=None, what="TensorRT timing cache"):
            ours = config.get_timing_cache()
            now = cache_path.read_bytes() if cache_path.is_file() else b""
            # ITimingCache.combine(input_cache, ignore_mismatch) -> bool
            # https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/TimingCache.html
            if now and now != blob and not ours.combine(config.create_timing_cache(now), False):
                log.warning(
                    "timing cache %s: expected one from this GPU and TensorRT to merge, got "
                    "another; it is replaced by this build's", cache_path
                )  # fmt: skip
            write_atomic(cache_path, bytes(ours.serialize()))
    return bytes(serialized)


def inspect_engine(serialized: bytes, input_name: str, opt_shape: tuple[int, ...]) -> str:
    """The engine inspector's JSON for the whole engine (the GPU-only part)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    # https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-843/api/python_api/infer/Core/Runtime.html
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise ExportError("Could not deserialize the engine just built")
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
    context = engine.create_execution_context()
    context.set_input_shape(input_name, opt_shape)
    # ICudaEngine.create_engine_inspector(); with an execution context whose input shapes
    # are set, formats and types of dynamic-shape tensors are concrete:
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/EngineInspector.html
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/EngineInspector.html
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def write_atomic(path: Path, data: bytes) -> None:
    from vit_deploy.storage import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)  # the umask's mode (mkstemp made engines 0600)


__all__ = [
    "BuildOptions",
    "DEFAULT_OPT_LEVEL",
    "DEFAULT_WORKSPACE_GIB",
    "OPT_LEVELS",
    "build_engine",
    "inspect_engine",
    "write_atomic",
]
