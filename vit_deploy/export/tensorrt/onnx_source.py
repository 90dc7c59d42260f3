"""The ONNX graph each attempt of a TensorRT export builds its engine from.

One attempt writes ``model.onnx`` into the staging directory with the ONNX export
pipeline, at this attempt's precision and fp32 keep list, in the plain graph form
(TensorRT parses standard ONNX ops only); a graph converted to fp16 afterwards
(``trt_fp16``) gets its own ONNX Runtime (CPU) parity gate, as the ONNX export's
does. A graph that fails its gate is a reason to escalate, like an engine that does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

from vit_deploy.errors import ParityError
from vit_deploy.export.parity import parity_section
from vit_deploy.export.tensorrt.fp16 import autocast_fp16
from vit_deploy.export.tensorrt.graph import NodeInfo, onnx_node_infos
from vit_deploy.export.tensorrt.precision import Fp32Keep

log = logging.getLogger("vit_deploy.export.trt")

ONNX_FILE = "model.onnx"


def attempt_onnx_options(base, precision: str, keep: Fp32Keep, nodes: list[str], profile, opset):
    """The ONNX export options for one attempt: the user's, with this attempt's precision,
    fp32 keep list and the plain graph (TensorRT parses standard ONNX ops only).
    ``precision`` is what the ONNX pipeline writes ("fp32" when AutoCast converts after)."""
    from vit_deploy.export.options import OnnxExportOptions

    base = base if base is not None else OnnxExportOptions()
    changes = {
        "precision": "fp32" if keep.all_fp32 else precision,
        "fp32_ops": tuple(keep.op_types),
        "optimize": "plain",
        "batch": profile,  # the same BatchProfile class as the ONNX export's
    }
    if opset is not None:
        changes["opset"] = opset
    if nodes and not keep.all_fp32:
        changes["fp32_nodes"] = tuple(nodes)
    return dataclasses.replace(base, **changes)


def parity_summary(report, gate) -> str:
    parts = []
    for o in report.outputs.values():
        part = f"{o.name}: cos min {o.cosine_min:.6f}"
        if o.top1_agreement is not None:
            part += f", top-1 {o.top1_agreement:.2%}"
        parts.append(part)
    return f"{'passed' if gate.passed else 'FAILED'} ({'; '.join(parts)})"


def node_infos(path: Path, depth: int) -> list[NodeInfo] | None:
    """The graph's nodes with their block scopes (None when there is no graph yet)."""
    import onnx

    if not path.is_file():
        return None
    return onnx_node_infos(onnx.load(os.fspath(path), load_external_data=False), depth)


def fp32_graph_infos(model, onnx_opts, depth: int, cache: dict) -> list[NodeInfo]:
    """Nodes (with block scopes) of the model's fp32 graph: escalation names nodes there.
    The exporter is deterministic and the fp16 converters keep node names, so the names
    hold for the next export too."""
    if "infos" not in cache:
        from vit_deploy.export.onnx.graph import export_onnx

        proto = export_onnx(model, dataclasses.replace(onnx_opts, precision="fp32"))
        cache["infos"] = onnx_node_infos(proto, depth)
    return cache["infos"]


def onnx_for_attempt(
    model, staging, onnx_opts, convert_after, keep, nodes, source, attempt, parity
) -> dict | None:
    """Write this attempt's graph to ``staging/model.onnx``; its ONNX manifest, or None when
    the graph failed its own ONNX Runtime (CPU) parity gate, a reason to escalate too."""
    from vit_deploy.export.onnx.pipeline import export_onnx_artifact
    from vit_deploy.export.progress import Stages

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
        # conversion_step names no other converter: onnxconverter-common runs in the export
        precision_report = autocast_fp16(onnx_dir / ONNX_FILE, staging / ONNX_FILE, keep, nodes)
        parity_section = ort_parity(staging / ONNX_FILE, model.config, *parity, attempt)
        if parity_section is None:
            return None
        return {**manifest, "precision": precision_report, "parity": parity_section}
    finally:
        shutil.rmtree(onnx_dir, ignore_errors=True)


def ort_parity(path: Path, cfg, reference, inputs, ref_outputs, batch, attempt) -> dict | None:
    """A converted graph's own ONNX Runtime (CPU) parity, recorded as the ONNX export does."""
    from vit_deploy.export.verify import verify_artifact
    from vit_deploy.runtime.ort_backend import OrtBackend

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
    attempt["onnx_parity"] = parity_summary(report, gate)
    if not gate.passed:
        attempt["passed"] = False
        log.warning("the fp16 ONNX graph failed its ONNX Runtime parity gate")
        return None
    return parity_section(report, gate, inputs, batch, backend="onnxruntime-cpu")


__all__ = [
    "ONNX_FILE",
    "attempt_onnx_options",
    "fp32_graph_infos",
    "node_infos",
    "onnx_for_attempt",
    "ort_parity",
    "parity_summary",
]
