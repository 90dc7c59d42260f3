"""``vit-export --fmt trt``: a TensorRT engine from the ONNX export of the same precision.

The flow, staged and atomic like the ONNX export (nothing is left behind on failure):

1. ``require_tensorrt()``: without TensorRT >= 10.12 and a CUDA GPU, stop here with a
   one-line error that names what is missing and what works instead (--fmt onnx).
2. Export the model to ONNX at the requested precision with the ONNX pipeline and
   verify that graph on ONNX Runtime (CPU). fp16: NVIDIA ModelOpt AutoCast when it is
   importable (GPU environments), else onnxconverter-common, with the fp32 keep list.
3. Build a strongly typed engine from that file (TensorRT 11 is always strongly
   typed; on 10.12+ we pass the STRONGLY_TYPED flag), so every tensor keeps the
   type the ONNX graph gives it; an optimisation profile from ``--batch``, a
   timing cache that is loaded and saved, ``--opt-level`` and ``--workspace-gib``.
4. Inspect the engine (DETAILED profiling verbosity): did attention fuse?
5. Load it through the TensorRT backend (which checks the manifest) and run the
   same parity gate as the ONNX export against PyTorch fp32.
6. If the gate fails: export again with more nodes kept in fp32
   (``trt_plan.next_fp32_keep_list``), rebuild, and say so; every attempt and what
   was kept in fp32 is recorded in the manifest.

Only the functions that call TensorRT (``build_engine``, ``inspect_engine``) need a
GPU; every decision lives in ``trt_plan``. Importing this module does not import
TensorRT.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ExportError, ParityError
from . import trt_plan as tp

log = logging.getLogger("vit_deploy.export.trt")

ENGINE_FILE = tp.ENGINE_FILE
ONNX_FILE = "model.onnx"
OPT_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level: 0..5, TensorRT's default 3
DEFAULT_OPT_LEVEL = 3
DEFAULT_WORKSPACE_GIB = 4.0
TRT_STAGES = ("onnx export", "engine build", "inspect", "engine verify", "write")


# ------------------------------------------------------------------------------ CLI glue


def add_trt_arguments(parser: argparse.ArgumentParser) -> None:
    """The TensorRT-only options of ``vit-export`` (ignored for --fmt onnx)."""
    group = parser.add_argument_group("TensorRT (--fmt trt)")
    group.add_argument(
        "--timing-cache",
        default=None,
        metavar="PATH",
        help="TensorRT timing cache: loaded if the file exists, saved after the build "
        "(speeds up rebuilds on the same GPU and TensorRT)",
    )
    group.add_argument(
        "--opt-level",
        type=int,
        default=DEFAULT_OPT_LEVEL,
        choices=list(OPT_LEVELS),
        metavar="0-5",
        help=f"builder optimisation level, 0 (fast build) .. 5 (default: {DEFAULT_OPT_LEVEL})",
    )
    group.add_argument(
        "--workspace-gib",
        type=float,
        default=DEFAULT_WORKSPACE_GIB,
        metavar="GIB",
        help=f"workspace memory limit for the builder (default: {DEFAULT_WORKSPACE_GIB:g})",
    )
    group.add_argument(
        "--no-auto-repair",
        dest="auto_repair",
        action="store_false",
        help="fail instead of re-exporting with more nodes in fp32 when the engine fails parity",
    )


def trt_unavailable_reason() -> str | None:
    """None when TensorRT export can run here, else the one-line reason (for the registry)."""
    problems = tp.tensorrt_problems()
    return tp.unavailable_message(problems) if problems else None


def export_trt_from_args(model, args: argparse.Namespace, *, source: str, stages=None):
    """The 'trt' format's exporter for ``vit_deploy.export.registry`` / ``vit-export``."""
    return export_trt(
        model,
        args.out,
        precision=getattr(args, "precision", None),
        batch=args.batch,
        onnx_options=getattr(args, "onnx_options", None),
        opset=getattr(args, "opset", None),
        timing_cache=getattr(args, "timing_cache", None),
        opt_level=getattr(args, "opt_level", DEFAULT_OPT_LEVEL),
        workspace_gib=getattr(args, "workspace_gib", DEFAULT_WORKSPACE_GIB),
        verify=not getattr(args, "no_verify", False),
        auto_repair=getattr(args, "auto_repair", True),
        source=source,
        stages=stages,
    )


@dataclass(frozen=True)
class BuildOptions:
    profile: tp.BatchProfile
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


# ------------------------------------------------------------------------------ TensorRT calls


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
        _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
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


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ the export


def _onnx_options(base, precision: str, keep: tp.Fp32Keep, nodes: list[str], profile, opset):
    """The ONNX export options for one attempt: the user's, with this attempt's precision,
    fp32 keep list and the plain graph (TensorRT parses standard ONNX ops only).
    ``precision`` is what the ONNX pipeline writes ("fp32" when AutoCast converts after)."""
    from .options import BatchProfile as OnnxProfile
    from .options import OnnxExportOptions

    base = base if base is not None else OnnxExportOptions()
    changes = {
        "precision": "fp32" if keep.all_fp32 else precision,
        "fp32_ops": tuple(keep.op_types),
        "optimize": "plain",
        "batch": OnnxProfile(profile.min, profile.opt, profile.max),
    }
    if opset is not None:
        changes["opset"] = opset
    if nodes and not keep.all_fp32:
        changes["fp32_nodes"] = tuple(nodes)
    return dataclasses.replace(base, **changes)


def _resolve_model(model, img_size=None):
    """(VisionTransformer, description) from a model, a preset / checkpoint spec, or None."""
    from ..model import VisionTransformer

    if isinstance(model, VisionTransformer):
        return model, "model"
    from ..cli.common import resolve_model

    resolved = resolve_model(model, img_size=img_size)
    if resolved.warning:
        log.warning(resolved.warning)
    return resolved.model, resolved.description


def _engine_parity(staging: Path, reference, inputs, ref_outputs, gate_precision, batch):
    from ..runtime.trt_backend import TensorRTBackend
    from .verify import verify_artifact

    backend = TensorRTBackend(staging)  # the same checks a user's load runs
    try:
        return verify_artifact(
            backend,
            reference,
            gate_precision,
            inputs=inputs,
            reference=ref_outputs,
            batch=batch,
            raise_on_failure=False,
        )
    finally:
        del backend


def _parity_summary(report, gate) -> str:
    parts = []
    for o in report.outputs.values():
        part = f"{o.name}: cos min {o.cosine_min:.6f}"
        if o.top1_agreement is not None:
            part += f", top-1 {o.top1_agreement:.2%}"
        parts.append(part)
    return f"{'passed' if gate.passed else 'FAILED'} ({'; '.join(parts)})"


def export_trt(
    model,
    out: str | os.PathLike,
    *,
    precision: str | None = "fp16",
    batch="1:8:32",
    onnx_options=None,
    opset: int | None = None,
    img_size: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    opt_level: int = DEFAULT_OPT_LEVEL,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    verify: bool = True,
    auto_repair: bool = True,
    source: str = "",
    stages=None,
    converter: str | None = None,
):
    """Export ``model`` (a VisionTransformer, a preset / checkpoint spec, or None for the
    bundled default) to a TensorRT artifact directory ``out``: ``model.engine``,
    ``model.onnx`` (the graph it was built from) and ``manifest.json``.

    ``converter``: who writes the fp16 graph; None picks ModelOpt AutoCast when it is
    importable, else onnxconverter-common (the ONNX export's own path).
    Returns the ONNX pipeline's ``ExportResult`` (directory, manifest, report, gate).
    Raises BackendUnavailableError (before anything is written) without TensorRT/GPU,
    ParityError when no fp32 escalation passes the gate.
    """
    tp.require_tensorrt()  # first: no model load, no files, when TensorRT cannot run here
    precision = tp.resolve_precision("trt", precision)
    converter = converter or tp.fp16_converter()
    if converter not in ("modelopt-autocast", "onnxconverter-common"):
        raise ConfigError(
            f"converter: expected 'modelopt-autocast' or 'onnxconverter-common', got {converter!r}"
        )
    options = BuildOptions(
        tp.as_profile(batch),
        opt_level,
        float(workspace_gib),
        os.fspath(timing_cache) if timing_cache is not None else None,
    )
    start = time.perf_counter()

    from ..manifest import file_entry, write_manifest
    from .onnx_export import export_copy
    from .options import INPUT_NAME
    from .pipeline import ExportResult, library_versions, publish, staging_dir
    from .progress import Stages
    from .verify import parity_inputs, reference_outputs

    model, described = _resolve_model(model, img_size)
    source = source or described
    cfg = model.config
    out = Path(out)
    stages = stages or Stages(TRT_STAGES, enabled=False, desc="vit-export trt")
    staging = staging_dir(out)
    published = False
    try:
        reference = export_copy(model, "math")
        # the first attempt keeps what the ONNX options keep (--fp32-ops, else the default)
        ops = tuple(onnx_options.fp32_ops) if onnx_options is not None else tp.DEFAULT_FP32_OPS
        keep = tp.Fp32Keep(op_types=ops, all_fp32=precision == "fp32")
        nodes: list[str] = []
        attempts: list[dict] = []
        inputs = ref_outputs = None
        graph_cache: dict = {}  # the fp32 graph's nodes, exported once if escalation needs them
        while True:
            attempt = {
                "attempt": len(attempts) + 1,
                "fp32_keep": keep.name,
                "fp32_nodes": len(nodes),
            }
            convert_after = _conversion_step(converter, keep, nodes)
            onnx_opts = _onnx_options(
                onnx_options,
                "fp32" if convert_after else precision,
                keep,
                [] if convert_after else nodes,
                options.profile,
                opset,
            )
            names = onnx_opts.output_names(cfg.num_classes)
            if verify and inputs is None:
                inputs = parity_inputs(cfg, onnx_opts.verify_samples)
                ref_outputs = reference_outputs(
                    reference, inputs.pixels, names, options.profile.opt
                )
            with stages.stage("onnx export"):
                onnx_manifest = _onnx_for_attempt(
                    model,
                    staging,
                    onnx_opts,
                    convert_after,
                    keep,
                    nodes,
                    source,
                    attempt,
                    (reference, inputs, ref_outputs, options.profile.opt),
                )
            if onnx_manifest is None:  # the ONNX graph itself failed its gate on ONNX Runtime
                attempts.append(attempt)
                graph = _fp32_graph_infos(model, onnx_opts, cfg.depth, graph_cache)
                keep, nodes = _escalate(keep, nodes, graph, cfg.depth, attempt, auto_repair)
                continue
            infos = _node_infos(staging / ONNX_FILE, cfg.depth)

            with stages.stage("engine build"):
                log.info("building the TensorRT engine (fp32 kept: %s) ...", keep.name)
                engine = build_engine(
                    staging / ONNX_FILE,
                    options,
                    input_name=INPUT_NAME,
                    in_chans=cfg.in_chans,
                    img_size=cfg.img_size,
                )
                _write_atomic(staging / ENGINE_FILE, engine)
            with stages.stage("inspect"):
                opt_shape = options.profile.shapes(cfg.in_chans, cfg.img_size)[1]
                info = tp.parse_engine_information(inspect_engine(engine, INPUT_NAME, opt_shape))
                fusion = tp.fusion_report(info, cfg.depth, tp.attention_core_nodes(infos))
                del engine
            text = tp.format_fusion_report(fusion)
            (log.info if fusion.all_fused else log.warning)("%s", text)

            env = tp.capture_environment()
            section = tp.engine_manifest_section(
                env=env,
                profile=options.profile,
                precision=precision,
                fp32_keep=keep,
                fp32_nodes=nodes,
                engine_sha256=file_entry(staging, ENGINE_FILE)["sha256"],
                onnx_file=ONNX_FILE,
                onnx_sha256=file_entry(staging, ONNX_FILE)["sha256"],
                input_name=INPUT_NAME,
                output_names=names,
                build={
                    "model": _model_arg(source),
                    "img_size": cfg.img_size,
                    "out": os.fspath(out),
                    "opt_level": options.opt_level,
                    "workspace_gib": options.workspace_gib,
                    "timing_cache": options.timing_cache,
                    "strongly_typed": True,
                    "tf32": False,
                    "fp16_converter": None if keep.all_fp32 else converter,
                    "fp16_conversion": "after the fp32 export"
                    if convert_after
                    else "in the ONNX export",
                },
                fusion=fusion,
                attempts=attempts,
                layer_dtypes=info.dtype_counts(),
            )
            manifest = _trt_manifest(onnx_manifest, staging, section, keep, nodes, options.profile)
            write_manifest(staging, manifest)

            report = gate = None
            if verify:
                gate_precision = "fp32" if keep.all_fp32 else precision
                with stages.stage("engine verify"):
                    report, gate = _engine_parity(
                        staging, reference, inputs, ref_outputs, gate_precision, options.profile.opt
                    )
                attempt.update(engine_parity=_parity_summary(report, gate), passed=gate.passed)
                log.info("engine parity vs PyTorch fp32: %s", attempt["engine_parity"])
                if not gate.passed:
                    attempts.append(attempt)
                    graph = _fp32_graph_infos(model, onnx_opts, cfg.depth, graph_cache)
                    keep, nodes = _escalate(
                        keep, nodes, graph, cfg.depth, attempt, auto_repair, gate, report
                    )
                    continue
            else:
                attempt.update(engine_parity="skipped (--no-verify)", passed=None)
            attempts.append(attempt)

            with stages.stage("write"):
                section["attempts"] = attempts
                manifest["engine"] = section
                if report is not None:
                    manifest["parity"] = {
                        "passed": gate.passed,
                        "gate": gate.to_dict(),
                        "report": report.to_dict(),
                        "inputs": inputs.to_dict(),
                        "reference": "PyTorch fp32 eager, reference (math) attention, same weights",
                        "batch": options.profile.opt,
                        "backend": "tensorrt",
                    }
                    section["parity"] = {
                        "passed": gate.passed,
                        "summary": attempt["engine_parity"],
                    }
                else:
                    manifest["parity"] = {
                        "skipped": True,
                        "reason": "verification disabled (--no-verify)",
                    }
                manifest["versions"] = {
                    **library_versions(),
                    "tensorrt": env.get("tensorrt_version"),
                }
                manifest["export"]["source"] = source
                manifest["export"]["duration_s"] = round(time.perf_counter() - start, 3)
                write_manifest(staging, manifest)
                publish(staging, out)
                published = True
            if len(attempts) > 1:
                log.warning(
                    "the engine passed after %d attempts; kept in fp32: %s (recorded in %s)",
                    len(attempts),
                    keep.name,
                    out / "manifest.json",
                )
            return ExportResult(directory=out, manifest=manifest, report=report, gate=gate)
    finally:
        if not published:
            shutil.rmtree(staging, ignore_errors=True)


def _node_infos(path: Path, depth: int) -> list[tp.NodeInfo] | None:
    """The graph's nodes with their block scopes (None when there is no graph yet)."""
    import onnx

    if not path.is_file():
        return None
    return tp.onnx_node_infos(onnx.load(os.fspath(path), load_external_data=False), depth)


def _fp32_graph_infos(model, onnx_opts, depth: int, cache: dict) -> list[tp.NodeInfo]:
    """Nodes (with block scopes) of the model's fp32 graph: escalation names nodes there.
    The exporter is deterministic and the fp16 converters keep node names, so the names
    hold for the next export too."""
    if "infos" not in cache:
        from .onnx_export import export_onnx

        proto = export_onnx(model, dataclasses.replace(onnx_opts, precision="fp32"))
        cache["infos"] = tp.onnx_node_infos(proto, depth)
    return cache["infos"]


def _model_arg(source: str) -> str | None:
    """The --model value back from the model's description: None for the bundled default,
    the preset or checkpoint path, or a placeholder for a model passed as an object."""
    if source.startswith("the bundled"):
        return None
    for prefix in ("preset ", "checkpoint "):
        if source.startswith(prefix):
            return source[len(prefix) :].split(" (")[0]
    return "<checkpoint of this model>"


def _pipeline_takes_fp32_nodes() -> bool:
    from .options import OnnxExportOptions

    return "fp32_nodes" in {f.name for f in dataclasses.fields(OnnxExportOptions)}


def _conversion_step(converter: str, keep: tp.Fp32Keep, nodes: list[str]) -> str | None:
    """Who converts this attempt's graph to fp16 after an fp32 export, or None when the ONNX
    export writes it itself (fp32 attempts, or onnxconverter-common with op types only /
    an export that takes node names)."""
    if keep.all_fp32:
        return None
    if converter == "modelopt-autocast":
        return "modelopt-autocast"
    if nodes and not _pipeline_takes_fp32_nodes():
        return "onnxconverter-common"
    return None


def _onnx_for_attempt(
    model, staging, onnx_opts, convert_after, keep, nodes, source, attempt, parity
) -> dict | None:
    """Write this attempt's graph to ``staging/model.onnx``; its ONNX manifest, or None when
    the graph failed its own ONNX Runtime (CPU) parity gate, a reason to escalate too."""
    from .pipeline import export_onnx_artifact
    from .progress import Stages

    onnx_dir = staging / f".onnx-{attempt['attempt']}"
    inner = Stages(("export",), enabled=False)
    try:
        result = export_onnx_artifact(model, onnx_dir, onnx_opts, source=source, stages=inner)
    except ParityError as exc:
        attempt.update(onnx_parity=str(exc).splitlines()[0], passed=False)
        log.warning(
            "the ONNX graph failed its ONNX Runtime parity gate: %s", attempt["onnx_parity"]
        )
        shutil.rmtree(onnx_dir, ignore_errors=True)
        return None
    finally:
        inner.close()
    manifest = result.manifest
    try:
        if convert_after is None:
            os.replace(onnx_dir / ONNX_FILE, staging / ONNX_FILE)
            parity = manifest.get("parity", {})
            attempt["onnx_parity"] = "passed" if parity.get("passed") else "skipped"
            return manifest
        convert = autocast_fp16 if convert_after == "modelopt-autocast" else onnxconverter_fp16
        precision_report = convert(onnx_dir / ONNX_FILE, staging / ONNX_FILE, keep, nodes)
        parity_section = _ort_parity(staging / ONNX_FILE, model.config, *parity, attempt)
        if parity_section is None:
            return None
        return {**manifest, "precision": precision_report, "parity": parity_section}
    finally:
        shutil.rmtree(onnx_dir, ignore_errors=True)


def onnxconverter_fp16(src: Path, dst: Path, keep: tp.Fp32Keep, nodes: list[str]) -> dict:
    """fp16 with onnxconverter-common, op types *and* named nodes kept in fp32 (the ONNX
    export's own fp16 step takes op types only)."""
    from collections import Counter

    import onnx
    from onnxconverter_common import float16

    model = onnx.load(os.fspath(src))
    present = {n.name for n in model.graph.node}
    missing = sorted(set(nodes) - present)
    if missing:  # the export is deterministic; a miss means the graph changed under us
        raise ExportError(
            f"fp32 keep list: expected nodes {missing[:5]} in {src.name}, found none of them"
        )
    with warnings.catch_warnings(record=True) as caught:  # one warning per clamped weight
        warnings.simplefilter("always")
        try:
            converted = float16.convert_float_to_float16(
                model,
                keep_io_types=True,
                op_block_list=list(keep.op_types),
                node_block_list=list(nodes),
            )
        except Exception as exc:  # noqa: BLE001  (the converter raises plain exceptions)
            raise ExportError(f"fp16 conversion failed: {type(exc).__name__}: {exc}") from exc
    onnx.save_model(converted, os.fspath(dst))
    kept = Counter(n.op_type for n in converted.graph.node if n.op_type in set(keep.op_types))
    return {
        "mode": "fp16",
        "converter": "onnxconverter-common",
        "io_dtype": "float32",
        "op_block_list": list(keep.op_types),
        "kept_fp32": dict(sorted(kept.items())),
        "node_block_list": len(nodes),
        "clamped_weights": sum("truncated" in str(w.message) for w in caught),
    }


def autocast_fp16(src: Path, dst: Path, keep: tp.Fp32Keep, nodes: list[str]) -> dict:
    """fp16 with NVIDIA ModelOpt AutoCast (GPU environments; ``pip install nvidia-modelopt``).

    convert_to_mixed_precision(onnx_path, low_precision_type, nodes_to_exclude (node-name
    regexes), op_types_to_exclude, keep_io_types) -> ModelProto:
    https://nvidia.github.io/Model-Optimizer/guides/8_autocast.html
    """
    import re

    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    converted = convert_to_mixed_precision(
        onnx_path=os.fspath(src),
        low_precision_type="fp16",
        nodes_to_exclude=[f"^{re.escape(n)}$" for n in nodes] or None,
        op_types_to_exclude=list(keep.op_types) or None,
        keep_io_types=True,
    )
    onnx.save_model(converted, os.fspath(dst))
    return {
        "mode": "fp16",
        "converter": "modelopt-autocast",
        "io_dtype": "float32",
        "op_block_list": list(keep.op_types),
        "node_block_list": len(nodes),
    }


def _ort_parity(path: Path, cfg, reference, inputs, ref_outputs, batch, attempt) -> dict | None:
    """A converted graph's own ONNX Runtime (CPU) parity, recorded as the ONNX export does."""
    from ..runtime.ort_backend import OrtBackend
    from .verify import verify_artifact

    if inputs is None:
        attempt["onnx_parity"] = "skipped"
        return {"skipped": True, "reason": "verification disabled (--no-verify)"}
    report, gate = verify_artifact(
        OrtBackend.from_onnx(path, cfg),
        reference,
        "fp16",
        inputs=inputs,
        reference=ref_outputs,
        batch=batch,
        raise_on_failure=False,
    )
    attempt["onnx_parity"] = _parity_summary(report, gate)
    if not gate.passed:
        attempt["passed"] = False
        log.warning("the fp16 ONNX graph failed its ONNX Runtime parity gate")
        return None
    return {
        "passed": True,
        "gate": gate.to_dict(),
        "report": report.to_dict(),
        "inputs": inputs.to_dict(),
        "reference": "PyTorch fp32 eager, reference (math) attention, same weights",
        "batch": batch,
        "backend": "onnxruntime-cpu",
    }


def _escalate(keep, nodes, infos, depth, attempt, auto_repair, gate=None, report=None):
    """The next keep list (and its node names) after a failed attempt, or ParityError."""
    nxt = tp.next_fp32_keep_list(keep) if auto_repair else None
    if nxt is not None and infos is not None:
        next_nodes = tp.resolve_fp32_nodes(nxt, infos, depth)
        # a step that adds nothing on this graph (no attention matmuls found): skip it
        while nxt is not None and not nxt.all_fp32 and next_nodes == nodes:
            nxt = tp.next_fp32_keep_list(nxt)
            next_nodes = tp.resolve_fp32_nodes(nxt, infos, depth) if nxt else nodes
    else:
        next_nodes = nodes
    if nxt is None:
        why = (
            "auto-repair is off (--no-auto-repair)"
            if not auto_repair
            else "no fp32 escalation left"
        )
        message = (
            f"the TensorRT engine failed its parity gate with fp32 kept: {keep.name} ({why}); "
            f"attempts: {attempt.get('engine_parity') or attempt.get('onnx_parity')}"
        )
        if gate is not None and report is not None:
            message += "\n" + gate.failure_table() + "\nmeasured:\n" + report.table()
        error = ParityError(message)
        error.report, error.gate = report, gate
        raise error
    log.warning(
        "parity failed with fp32 kept: %s; re-exporting with more in fp32: %s", keep.name, nxt.name
    )
    return nxt, next_nodes


def _trt_manifest(onnx_manifest: dict, staging: Path, section: dict, keep, nodes, profile) -> dict:
    """The artifact's manifest: the ONNX export's, with the engine as the artifact, the ONNX
    file as an extra file, the ONNX Runtime parity kept as ``onnx_parity``, and the
    ``engine`` section."""
    from ..manifest import file_entry

    manifest = {k: v for k, v in onnx_manifest.items() if k != "format"}
    manifest["artifact"] = {
        "format": "trt",
        **file_entry(staging, ENGINE_FILE),
        "extra_files": [file_entry(staging, ONNX_FILE)],
    }
    manifest["onnx_parity"] = manifest.pop("parity", None)
    manifest["batch_profile"] = profile.to_dict()
    precision = dict(manifest.get("precision", {}))
    precision.update(fp32_keep=keep.to_dict(), fp32_nodes=list(nodes))
    manifest["precision"] = precision
    manifest["engine"] = section
    manifest["parity"] = {"pending": True}
    manifest["export"] = dict(manifest.get("export", {}))
    return manifest


def summary_lines(manifest: dict) -> list[str]:
    """Engine lines for ``vit-export``'s summary (after the ONNX lines)."""
    e = manifest["engine"]
    p = e["profile"]
    lines = [
        f"  engine: TensorRT {e['tensorrt_version']} on {e['gpu_name']} (sm {e['compute_capability']}), "
        f"{e['precision']}, profile {p['min']}:{p['opt']}:{p['max']}, fp32 kept: {e['fp32_keep']['name']}",
    ]
    fusion = e.get("fusion") or {}
    lines.append(
        f"  attention fusion: {fusion.get('status', 'unknown')} "
        f"({fusion.get('fused_blocks', 0)}/{fusion.get('depth', '?')} blocks)"
    )
    if len(e.get("attempts", [])) > 1:
        lines.append(f"  auto-repair: {len(e['attempts'])} attempts (see manifest engine.attempts)")
    return lines
