"""The whole ONNX export, staged and atomic: export -> optimise -> fp16 -> verify -> write.

Everything is written into a hidden staging directory next to ``out``; only after the
parity gate passed and the manifest is written is it renamed to ``out``. A failed or
interrupted export removes the staging directory and leaves ``out`` as it was; one killed
outright leaves it behind, and the next export to ``out`` removes it (it holds ``out``'s
lock, so no live run owns it: see ``vit_deploy.storage``).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from vit_deploy import __version__
from vit_deploy.errors import ConfigError, ExportError
from vit_deploy.export.onnx import fusion_report as fusion
from vit_deploy.export.onnx.fp16 import convert_to_fp16, fp32_report
from vit_deploy.export.onnx.graph import export_copy, export_onnx
from vit_deploy.export.onnx.optimize import (
    ORT_ATTENTION,
    PLAIN,
    build_candidate,
    measure_candidates,
)
from vit_deploy.export.options import BATCH_AXIS, INPUT_NAME, OnnxExportOptions
from vit_deploy.export.parity import GateResult, ParityReport, parity_section, skipped_parity
from vit_deploy.export.progress import Stages
from vit_deploy.export.verify import (
    ParityInputs,
    parity_inputs,
    reference_outputs,
    source_parity,
    verify_artifact,
)
from vit_deploy.manifest import MANIFEST_NAME, file_entry, write_manifest
from vit_deploy.model.vit import VisionTransformer
from vit_deploy.runtime.ort_backend import OrtBackend
from vit_deploy.storage import StagedDir, staged_dir

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
STAGES = ("build", "export", "optimise", "fp16 convert", "int8 quantize", "verify", "write")
CANDIDATE_SAMPLES = 4  # rows of the parity set each graph variant must match before timing


@dataclass
class ExportResult:
    directory: Path
    manifest: dict
    report: ParityReport | None
    gate: GateResult | None


def check_out(out: Path) -> None:
    """``out`` must be new, or an earlier export (with a manifest) to replace."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"expected a directory, got {str(out)!r} (an existing file)", option="out"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ConfigError(
            f"expected a new directory or an earlier export to replace, got {str(out)!r} "
            f"(not empty and has no {MANIFEST_NAME})",
            option="out",
        )


# staging path -> its StagedDir (which holds ``out``'s lock until publish or discard)
_STAGES: dict[Path, StagedDir] = {}


def staging_dir(out: Path) -> Path:
    """Lock ``out`` and make its hidden staging dir beside it (same filesystem, so the
    final rename is atomic); end it with ``publish`` or ``discard``. Staging dirs of killed
    runs are removed here (see ``vit_deploy.storage``)."""
    check_out(out)
    try:
        stage = staged_dir(out)
    except OSError as exc:
        raise ConfigError(
            f"expected a writable directory, got {str(out)!r} ({exc.strerror or exc})",
            option="out",
        ) from exc
    _STAGES[stage.path] = stage
    return stage.path


def publish(staging: Path, out: Path) -> None:
    """Rename the staging dir to ``out`` (an earlier export there is kept until then)."""
    stage = _STAGES.pop(Path(staging))
    try:
        stage.publish()
    finally:
        stage.close()


def discard(staging: Path) -> None:
    """Remove an unpublished staging dir and release its lock."""
    stage = _STAGES.pop(Path(staging), None)
    if stage is not None:
        stage.close()
    else:
        shutil.rmtree(staging, ignore_errors=True)


def library_versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import onnxscript
    import torch

    versions = {
        "vit_deploy": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    except ImportError:
        pass
    return versions


def io_spec(model: VisionTransformer, output_names: list[str]) -> tuple[list[dict], list[dict]]:
    cfg = model.config
    dims = {"logits": cfg.num_classes, "embedding": cfg.embed_dim}
    inputs = [
        {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": [BATCH_AXIS, cfg.in_chans, cfg.img_size, cfg.img_size],
        }
    ]
    outputs = [
        {"name": n, "dtype": "float32", "shape": [BATCH_AXIS, dims[n]]} for n in output_names
    ]
    return inputs, outputs


class _Parity:
    """The parity inputs and reference outputs, computed once and shared by stages."""

    def __init__(self, reference: VisionTransformer, options: OnnxExportOptions, names):
        self.reference_model = reference
        self.options = options
        self.names = names
        self._inputs: ParityInputs | None = None
        self._outputs: dict | None = None

    @property
    def inputs(self) -> ParityInputs:
        if self._inputs is None:
            self._inputs = parity_inputs(self.reference_model.config, self.options.verify_samples)
        return self._inputs

    @property
    def outputs(self) -> dict:
        if self._outputs is None:
            self._outputs = reference_outputs(
                self.reference_model, self.inputs.pixels, self.names, self.options.batch.opt
            )
        return self._outputs


def _optimise(
    staging: Path,
    model_path: Path,
    plain: onnx.ModelProto,
    cfg,
    options: OnnxExportOptions,
    parity: _Parity,
    threads,
) -> tuple[dict, onnx.ModelProto]:
    """(the optimisation record, the chosen graph); the chosen graph is at ``model_path``
    when the artifact is fp32."""
    mode = options.optimize
    if mode == PLAIN:
        return {"chosen": PLAIN, "reason": "--optimize plain"}, plain
    if mode == "auto" and options.precision == "int8":
        reason = "int8 quantizes the standard ONNX graph: its QDQ form runs on ORT, OpenVINO, TRT"
        return {"chosen": PLAIN, "reason": reason}, plain
    if mode == "auto" and options.precision == "fp16":
        reason = (
            "fp16 artifacts stay standard ONNX (the TensorRT source); ONNX Runtime's CPU "
            "provider has few fp16 kernels, so CPU timings would not tell"
        )
        return {"chosen": PLAIN, "reason": reason}, plain
    name = ORT_ATTENTION if mode == "auto" else mode
    try:
        candidate = build_candidate(name, plain, cfg, staging)
    except ExportError as exc:
        if mode != "auto":
            raise
        log.warning("could not build the %s graph; keeping the plain one: %s", name, exc)
        return {"chosen": PLAIN, "reason": f"{name} failed: {exc}"}, plain
    if mode != "auto":
        os.replace(candidate.path, model_path)
        return {"chosen": name, "reason": f"--optimize {name}", **candidate.info}, candidate.proto
    n = CANDIDATE_SAMPLES
    result = measure_candidates(
        {PLAIN: model_path, name: candidate.path},
        cfg,
        parity.inputs.pixels[:n],
        {k: v[:n] for k, v in parity.outputs.items()},
        options.precision,
        iters=options.timing_iters,
        threads=threads,
    )
    result["reason"] = "fastest correct graph at batch 1 (plain wins ties within 3%)"
    result[name] = candidate.info
    if result["chosen"] == name:
        os.replace(candidate.path, model_path)
        return result, candidate.proto
    candidate.path.unlink(missing_ok=True)
    return result, plain


def _model_record(model, options, out: Path) -> dict:
    """Which weights these are, and the command that exports them again (None when the
    model was built in Python: no command line names it)."""
    import shlex

    from vit_deploy.checkpoints.spec import spec_of, weights_sha256

    spec = spec_of(model)
    command = None
    if spec.reproducible:
        args = ["vit-export", *spec.cli_args(), "--fmt", "onnx", *options.cli_args()]
        command = shlex.join([*args, "--out", os.fspath(out)])
    return {
        "model_spec": spec.to_dict(),
        "weights_sha256": weights_sha256(model),
        "command": command,
    }


def _json_safe(value):
    """The checkpoint record as JSON (its model_args may hold tuples or other values)."""
    import json

    return json.loads(json.dumps(value, default=str)) if value is not None else None


def export_onnx_artifact(
    model: VisionTransformer,
    out: str | os.PathLike,
    options: OnnxExportOptions | None = None,
    *,
    source: str = "",
    stages: Stages | None = None,
    threads: int | None = None,
) -> ExportResult:
    """Export ``model`` to ``out`` (a directory: ``model.onnx`` + ``manifest.json``)."""
    options = options or OnnxExportOptions()
    start = time.perf_counter()
    out = Path(out)
    cfg = model.config
    names = options.output_names(cfg.num_classes)
    own_stages = stages is None
    stages = stages or Stages(STAGES, enabled=False)
    if own_stages:
        stages.skip("build", "model given")
    staging = staging_dir(out)
    published = False
    try:
        reference = export_copy(model, "math")
        parity = _Parity(reference, options, names)
        model_path = staging / MODEL_FILE

        with stages.stage("export"):
            proto = export_onnx(model, options)
            ir_version = proto.ir_version
            got = [o.name for o in proto.graph.output]
            if got != names:
                raise ExportError(f"exported graph outputs: expected {names}, got {got}")
            if options.precision in ("fp32", "int8"):  # fp16 is written after conversion
                onnx.save_model(proto, str(model_path))

        with stages.stage("optimise"):
            optimisation, proto = _optimise(
                staging, model_path, proto, cfg, options, parity, threads
            )

        if options.precision == "fp16":
            with stages.stage("fp16 convert"):
                proto, precision = convert_to_fp16(proto, options.fp32_ops, options.fp32_nodes)
                onnx.save_model(proto, str(model_path))
        else:
            stages.skip("fp16 convert", options.precision)
            precision = fp32_report()
        report = gate = None  # int8: gated (and repaired) while quantizing
        if options.precision == "int8":
            from vit_deploy.export.onnx.int8 import quantize_artifact

            with stages.stage("int8 quantize"):
                precision, report, gate = quantize_artifact(
                    model_path, cfg, options, parity, threads
                )
                proto = onnx.load(str(model_path))
        else:
            stages.skip("int8 quantize", options.precision)
        artifact_counts = fusion.op_counts(proto)
        custom_domains = sorted({n.domain for n in proto.graph.node} - {"", "ai.onnx"})
        del proto

        with stages.stage("verify"):
            if options.verify and options.source_parity:
                source_record = source_parity(model, parity.inputs, parity.outputs)
            else:
                why = "--no-source-parity" if options.verify else "--no-verify"
                source_record = skipped_parity(f"source parity disabled ({why})")
            session_graph = staging / ".ort_session.onnx"
            backend = OrtBackend.from_onnx(
                model_path, cfg, threads=threads, optimized_model_path=session_graph
            )
            session_counts = fusion.op_counts(session_graph) if session_graph.is_file() else None
            for leftover in staging.glob(".ort_session.onnx*"):
                leftover.unlink()
            fusion_report = fusion.fusion_report(
                artifact_counts, session_counts, cfg.depth, optimisation
            )
            if options.verify and gate is None:
                report, gate = verify_artifact(
                    backend,
                    reference,
                    options.precision,
                    inputs=parity.inputs,
                    reference=parity.outputs,
                    batch=options.batch.opt,
                )
            del backend
            serving = {}
            if options.verify_openvino:
                from vit_deploy.export.onnx.openvino_verify import verify_openvino

                serving["openvino"] = verify_openvino(
                    model_path,
                    cfg,
                    options.verify_openvino,
                    options.precision,
                    parity,
                    options.batch.opt,
                )

        with stages.stage("write"):
            inputs, outputs = io_spec(model, names)
            if report is not None:
                inputs_used = precision.get("gate_inputs") or parity.inputs
                parity_record = parity_section(report, gate, inputs_used, options.batch.opt)
            else:
                parity_record = skipped_parity()
            manifest = {
                "artifact": {"format": "onnx", **file_entry(staging, MODEL_FILE)},
                "model": cfg.to_dict(),
                "preprocess": cfg.preprocess.to_dict(),
                "labels": list(cfg.labels),
                "inputs": inputs,
                "outputs": outputs,
                "batch_profile": options.batch.to_dict(),
                "precision": precision,
                "onnx": {
                    "opset": options.opset,
                    "ir_version": ir_version,
                    "exporter": "torch.onnx.export(dynamo=True)",
                    "attention_exported": (
                        model.attention if options.attention == "native" else options.attention
                    ),
                    "graph": optimisation["chosen"],
                    "custom_domains": custom_domains,
                    "optimization": optimisation,
                },
                "fusion": fusion_report,
                "parity": parity_record,
                "source_parity": source_record,
                **({"serving": serving} if serving else {}),
                "versions": library_versions(),
                "export": {
                    "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                    "source": source,
                    "checkpoint": _json_safe(getattr(model, "checkpoint_info", None)),
                    **_model_record(model, options, out),
                    "stage_seconds": dict(stages.seconds),
                },
            }
            manifest["export"]["duration_s"] = round(time.perf_counter() - start, 3)
            write_manifest(staging, manifest)
            publish(staging, out)
            published = True
    finally:
        if own_stages:
            stages.close()
        if not published:
            discard(staging)
    return ExportResult(directory=out, manifest=manifest, report=report, gate=gate)
