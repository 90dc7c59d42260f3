"""``vit-export --fmt trt``: a TensorRT engine from the ONNX export of the same precision.

The flow, staged and atomic like the ONNX export (nothing is left behind on failure):

1. ``require_tensorrt()``: without TensorRT >= 10.12 and a CUDA GPU, stop here with a
   one-line error that names what is missing and what works instead (--fmt onnx).
2. Export the model to ONNX at the requested precision with the ONNX pipeline and
   verify that graph on ONNX Runtime (CPU) (``trt_onnx``). fp16: NVIDIA ModelOpt
   AutoCast when it is importable (GPU environments), else onnxconverter-common, with
   the fp32 keep list (``trt_fp16``).
3. Build a strongly typed engine from that file (``trt_build.build_engine``): an
   optimisation profile from ``--batch``, a timing cache that is loaded and saved,
   ``--opt-level`` and ``--workspace-gib``.
4. Inspect the engine (``trt_build.inspect_engine``, ``trt_inspect``): did attention
   fuse (``trt_fusion``)?
5. Load it through the TensorRT backend (which checks the manifest, ``trt_env``) and
   run the same parity gate as the ONNX export against PyTorch fp32.
6. If the gate fails: export again with more nodes kept in fp32
   (``trt_precision.next_fp32_keep_list``), rebuild, and say so; every attempt and
   what was kept in fp32 is recorded in the manifest.

Only ``trt_build`` calls TensorRT (and needs a GPU); it is called through the module
(``trt_build.build_engine``), as are ``trt_env``'s environment functions, so a test
can replace them. Importing this module does not import TensorRT.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from vit_deploy.batch_profile import as_profile
from vit_deploy.errors import ConfigError
from vit_deploy.export.tensorrt import build as trt_build
from vit_deploy.export.tensorrt.artifact import (
    build_record,
    engine_manifest_section,
    finish_manifest,
    trt_manifest,
)
from vit_deploy.export.tensorrt.build import (
    DEFAULT_OPT_LEVEL,
    DEFAULT_WORKSPACE_GIB,
    BuildOptions,
    write_atomic,
)
from vit_deploy.export.tensorrt.engine_info import parse_engine_information
from vit_deploy.export.tensorrt.fp16 import CONVERTERS, conversion_step, fp16_converter
from vit_deploy.export.tensorrt.fusion_report import format_fusion_report, fusion_report
from vit_deploy.export.tensorrt.graph import attention_core_nodes
from vit_deploy.export.tensorrt.onnx_source import (
    ONNX_FILE,
    attempt_onnx_options,
    fp32_graph_infos,
    node_infos,
    onnx_for_attempt,
    parity_summary,
)
from vit_deploy.export.tensorrt.precision import (
    DEFAULT_FP32_OPS,
    Fp32Keep,
    escalate_after_failure,
    resolve_precision,
)
from vit_deploy.runtime.tensorrt import env as trt_env
from vit_deploy.runtime.tensorrt.env import ENGINE_FILE

log = logging.getLogger("vit_deploy.export.trt")

TRT_STAGES = ("onnx export", "engine build", "inspect", "engine verify", "write")


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
    trt_env.require_tensorrt()  # first: no model load, no files, when TensorRT cannot run here
    precision = resolve_precision("trt", precision)
    converter = converter or fp16_converter()
    if converter not in CONVERTERS:
        raise ConfigError(
            f"converter: expected 'modelopt-autocast' or 'onnxconverter-common', got {converter!r}"
        )
    options = BuildOptions(
        as_profile(batch),
        opt_level,
        float(workspace_gib),
        os.fspath(timing_cache) if timing_cache is not None else None,
    )
    start = time.perf_counter()

    from vit_deploy.export.onnx.graph import export_copy
    from vit_deploy.export.onnx.pipeline import ExportResult, discard, publish, staging_dir
    from vit_deploy.export.options import INPUT_NAME
    from vit_deploy.export.progress import Stages
    from vit_deploy.export.verify import parity_inputs, reference_outputs
    from vit_deploy.manifest import file_entry, write_manifest

    model, spec = _resolve_model(model, img_size)
    source = source or spec.description
    cfg = model.config
    out = Path(out)
    stages = stages or Stages(TRT_STAGES, enabled=False, desc="vit-export trt")
    staging = staging_dir(out)
    published = False
    try:
        reference = export_copy(model, "math")
        # the first attempt keeps what the ONNX options keep (--fp32-ops, else the default)
        ops = tuple(onnx_options.fp32_ops) if onnx_options is not None else DEFAULT_FP32_OPS
        keep = Fp32Keep(op_types=ops, all_fp32=precision == "fp32")
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
            convert_after = conversion_step(converter, keep, nodes)
            onnx_opts = attempt_onnx_options(
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
                onnx_manifest = onnx_for_attempt(
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
                graph = fp32_graph_infos(model, onnx_opts, cfg.depth, graph_cache)
                keep, nodes = escalate_after_failure(
                    keep, nodes, graph, cfg.depth, attempt, auto_repair
                )
                continue
            infos = node_infos(staging / ONNX_FILE, cfg.depth)

            with stages.stage("engine build"):
                log.info("building the TensorRT engine (fp32 kept: %s) ...", keep.name)
                engine = trt_build.build_engine(
                    staging / ONNX_FILE,
                    options,
                    input_name=INPUT_NAME,
                    in_chans=cfg.in_chans,
                    img_size=cfg.img_size,
                )
                write_atomic(staging / ENGINE_FILE, engine)
            with stages.stage("inspect"):
                opt_shape = options.profile.shapes(cfg.in_chans, cfg.img_size)[1]
                info = parse_engine_information(
                    trt_build.inspect_engine(engine, INPUT_NAME, opt_shape)
                )
                fusion = fusion_report(info, cfg.depth, attention_core_nodes(infos))
                del engine
            text = format_fusion_report(fusion)
            (log.info if fusion.all_fused else log.warning)("%s", text)

            env = trt_env.capture_environment()
            section = engine_manifest_section(
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
                build=build_record(spec, cfg, out, options, keep, converter, convert_after),
                fusion=fusion,
                attempts=attempts,
                layer_dtypes=info.dtype_counts(),
            )
            manifest = trt_manifest(onnx_manifest, staging, section, keep, nodes, options.profile)
            write_manifest(staging, manifest)

            report = gate = None
            if verify:
                gate_precision = "fp32" if keep.all_fp32 else precision
                with stages.stage("engine verify"):
                    report, gate = _engine_parity(
                        staging, reference, inputs, ref_outputs, gate_precision, options.profile.opt
                    )
                attempt.update(engine_parity=parity_summary(report, gate), passed=gate.passed)
                log.info("engine parity vs PyTorch fp32: %s", attempt["engine_parity"])
                if not gate.passed:
                    attempts.append(attempt)
                    graph = fp32_graph_infos(model, onnx_opts, cfg.depth, graph_cache)
                    keep, nodes = escalate_after_failure(
                        keep, nodes, graph, cfg.depth, attempt, auto_repair, gate, report
                    )
                    continue
            else:
                attempt.update(engine_parity="skipped (--no-verify)", passed=None)
            attempts.append(attempt)

            with stages.stage("write"):
                finish_manifest(
                    manifest,
                    section,
                    attempts,
                    env,
                    source=source,
                    duration_s=round(time.perf_counter() - start, 3),
                    report=report,
                    gate=gate,
                    inputs=inputs,
                    batch=options.profile.opt,
                )
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
            discard(staging)  # and release out's lock


def _resolve_model(model, img_size=None):
    """(VisionTransformer, its ModelSpec) from a model, a spec, a preset / checkpoint, or None."""
    from vit_deploy.checkpoints.spec import ModelSpec, as_model, spec_of

    if model is None or isinstance(model, (str, os.PathLike)):
        model = ModelSpec.parse(model, img_size=img_size)
        if model.warning:
            log.warning(model.warning)
    model = as_model(model)
    return model, spec_of(model)


def _engine_parity(staging: Path, reference, inputs, ref_outputs, gate_precision, batch):
    from vit_deploy.export.verify import verify_artifact
    from vit_deploy.runtime.tensorrt.backend import TensorRTBackend

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


__all__ = ["TRT_STAGES", "export_trt"]
