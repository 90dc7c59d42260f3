"""The TensorRT calls: ``build_engine`` and ``inspect_engine`` (the GPU-only part).

This is the only code of the export that calls TensorRT, kept thin: every decision
(profile, precision, fp32 keep list, fusion report, compatibility) is made elsewhere
without TensorRT and tested without a GPU. The build goes through NVIDIA Polygraphy's
loaders (tested by NVIDIA on real TensorRT): ``NetworkFromOnnxPath(strongly_typed=True)``,
``CreateConfig`` and ``EngineBytesFromNetwork``. Two things Polygraphy does not check are
ours: the optimisation profile's index (-1: TensorRT refused it) and the timing cache
(``set_timing_cache`` returns False for a cache from another device or TensorRT; after the
build ``get_timing_cache`` may return None), loaded, checked, merged and saved atomically
under a lock (``vit_deploy.storage``).

The network is strongly typed: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists
since TensorRT 10.0; 10.12 deprecated the weak-typing builder flags and 11.x removed them
(and always builds strongly typed). Every tensor keeps the type the ONNX graph gives it;
TF32 is off (Polygraphy's default) so fp32 in the graph means fp32 in the engine.
Importing this module imports neither TensorRT nor Polygraphy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vit_deploy.batch_profile import BatchProfile
from vit_deploy.errors import ConfigError, ExportError

log = logging.getLogger("vit_deploy.export.trt")

OPT_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level: 0..5, TensorRT's default 3
DEFAULT_OPT_LEVEL = 3
DEFAULT_WORKSPACE_GIB = 4.0


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
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    cache_path = Path(options.timing_cache) if options.timing_cache else None
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        try:
            # Builder.create_network(1 << STRONGLY_TYPED), OnnxParser.parse_from_file; parser
            # errors raise: https://github.com/NVIDIA/TensorRT/tree/main/tools/Polygraphy
            builder, network, parser = NetworkFromOnnxPath(
                os.fspath(onnx_path), strongly_typed=True
            )()
        except PolygraphyException as exc:
            raise ExportError(f"TensorRT could not parse {onnx_path}: {exc}") from exc
        # IBuilderConfig: set_memory_pool_limit(WORKSPACE), builder_optimization_level,
        # profiling_verbosity = DETAILED (the inspector then lists every layer's kernel and
        # tensor types: the fusion report), TF32 cleared:
        # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
        config = CreateConfig(
            profiles=[],  # ours below, with its index checked
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(options.workspace_gib * 2**30)},
            builder_optimization_level=options.opt_level,
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        )(builder, network)
        add_profile(builder, config, input_name, options.profile.shapes(in_chans, img_size))
        load_timing_cache(config, cache_path)
        try:
            # Builder.build_serialized_network(network, config) -> IHostMemory or None:
            # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
            serialized = EngineBytesFromNetwork((builder, network, parser), config)()
        except PolygraphyException as exc:
            raise ExportError(
                f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log "
                f"above); profile {options.profile}, workspace {options.workspace_gib:g} GiB"
            ) from exc
        if cache_path is not None:
            save_timing_cache(config, cache_path)
    return bytes(serialized)


def add_profile(builder, config, input_name: str, shapes) -> int:
    """Add the one optimisation profile; ExportError if TensorRT refuses it.

    IBuilderConfig.add_optimization_profile(profile) -> int: "the index of the optimization
    profile (starting from 0) if the input is valid, or -1 if the input is not valid":
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
    IOptimizationProfile.set_shape(input, min, opt, max):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/OptimizationProfile.html
    """
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    index = config.add_optimization_profile(profile)
    if index < 0:
        raise ExportError(
            f"TensorRT refused the optimisation profile for input {input_name!r} "
            f"(min/opt/max {' / '.join(map(str, shapes))}): expected a profile index >= 0, "
            f"got {index}"
        )
    return index


def load_timing_cache(config, path: Path | None) -> None:
    """Give the build a timing cache: the file's (if it is there and TensorRT takes it), else
    an empty one. A cache from another device or TensorRT is refused by TensorRT
    (``set_timing_cache`` returns False); then the build starts from an empty cache.

    IBuilderConfig.create_timing_cache(blob), set_timing_cache(cache, ignore_mismatch) -> bool:
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
    The flow (create, set, serialize after the build):
    https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/performance/builder-performance.html
    """
    from vit_deploy.storage import output_lock

    blob = b""
    if path is not None and path.is_file():
        with output_lock(path, wait=None, what="timing cache"):
            blob = path.read_bytes()
    if blob:
        if config.set_timing_cache(config.create_timing_cache(blob), False):
            log.info("timing cache %s loaded (%d bytes)", path, len(blob))
            return
        log.warning(
            "timing cache %s: TensorRT refused it (built on another device or TensorRT "
            "version); building with an empty cache, and leaving that file as it is",
            path,
        )
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise ExportError("TensorRT refused an empty timing cache: expected True, got False")


def save_timing_cache(config, path: Path) -> bool:
    """Merge this build's timing cache into ``path`` (re-read under the lock: another build
    may have saved since) and write it atomically; False (with a warning) when there is
    nothing to save or the file's cache is from another device (it is left alone).

    IBuilderConfig.get_timing_cache() (None without a cache), ITimingCache.combine(input_cache,
    ignore_mismatch) -> bool, ITimingCache.serialize() -> IHostMemory:
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
    """
    from vit_deploy.storage import output_lock

    cache = config.get_timing_cache()
    if cache is None:
        log.warning("timing cache %s not updated: TensorRT returned no timing cache", path)
        return False
    with output_lock(path, wait=None, what="timing cache"):
        if path.is_file() and path.stat().st_size:
            previous = config.create_timing_cache(path.read_bytes())
            if not cache.combine(previous, False):
                log.warning(
                    "timing cache %s not updated: it holds another device's or TensorRT's "
                    "timings (pass a --timing-cache file per GPU and TensorRT version)",
                    path,
                )
                return False
        write_atomic(path, bytes(cache.serialize()))
    return True


def inspect_engine(serialized: bytes, input_name: str, opt_shape: tuple[int, ...]) -> str:
    """The engine inspector's JSON for the whole engine (the GPU-only part)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    # Runtime(logger).deserialize_cuda_engine(serialized_engine) -> ICudaEngine or None:
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise ExportError("Could not deserialize the engine just built")
    # create_execution_context(); set_input_shape(name, shape) -> bool:
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
    context = engine.create_execution_context()
    if not context.set_input_shape(input_name, opt_shape):
        raise ExportError(f"the engine refused input shape {opt_shape}: expected True, got False")
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
    "add_profile",
    "load_timing_cache",
    "save_timing_cache",
    "DEFAULT_OPT_LEVEL",
    "DEFAULT_WORKSPACE_GIB",
    "OPT_LEVELS",
    "build_engine",
    "inspect_engine",
    "write_atomic",
]
