"""The ``manifest.json`` of a TensorRT artifact, assembled from the ONNX export's.

The artifact is ``model.engine`` (the artifact file), ``model.onnx`` (an extra file: the
graph the engine was built from) and ``manifest.json``: the ONNX export's manifest with
the engine as the artifact, the ONNX Runtime parity kept as ``onnx_parity``, the
engine's own parity as ``parity``, and the ``engine`` section
(``engine_manifest_section``), whose ``build`` record is what
``trt_env.rebuild_command`` turns back into a command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from vit_deploy.batch_profile import BatchProfile
from vit_deploy.export.parity import parity_section, skipped_parity
from vit_deploy.export.tensorrt.fusion_report import FusionReport
from vit_deploy.export.tensorrt.onnx_source import ONNX_FILE
from vit_deploy.export.tensorrt.precision import Fp32Keep, resolve_precision
from vit_deploy.runtime.tensorrt.env import ENGINE_FILE, ENGINE_SECTION_FORMAT


def build_record(
    spec, cfg, out, options, keep: Fp32Keep, converter: str, convert_after: str | None
) -> dict:
    """The engine section's ``build`` record: how this engine was built (and is rebuilt).
    ``spec``: the model's ``ModelSpec``; ``model_args`` is None when no command line names
    the model (one built in Python)."""
    return {
        "model_spec": spec.to_dict(),
        "model_args": spec.cli_args() if spec.reproducible else None,
        "img_size": cfg.img_size,
        "out": os.fspath(out),
        "opt_level": options.opt_level,
        "workspace_gib": options.workspace_gib,
        "timing_cache": options.timing_cache,
        "strongly_typed": True,
        "tf32": False,
        "fp16_converter": None if keep.all_fp32 else converter,
        "fp16_conversion": "after the fp32 export" if convert_after else "in the ONNX export",
    }


def engine_manifest_section(
    *,
    env: Mapping,
    profile: BatchProfile,
    precision: str,
    fp32_keep: Fp32Keep,
    fp32_nodes: Sequence[str] = (),
    engine_file: str = ENGINE_FILE,
    engine_sha256: str,
    onnx_file: str | None = None,
    onnx_sha256: str | None = None,
    input_name: str = "pixels",
    output_names: Sequence[str] = ("logits", "embedding"),
    build: Mapping | None = None,
    fusion: FusionReport | None = None,
    parity: Mapping | None = None,
    attempts: Sequence[Mapping] = (),
    layer_dtypes: Mapping[str, int] | None = None,
) -> dict:
    """The "engine" section of manifest.json (JSON-ready)."""
    precision = resolve_precision("trt", precision)
    return {
        "format": ENGINE_SECTION_FORMAT,
        "file": engine_file,
        "sha256": engine_sha256,
        "onnx_file": onnx_file,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": env.get("tensorrt_version"),
        "cuda_version": env.get("cuda_version"),
        "gpu_name": env.get("gpu_name"),
        "compute_capability": env.get("compute_capability"),
        "environment": dict(env),
        "precision": "fp32" if fp32_keep.all_fp32 else precision,
        "requested_precision": precision,
        "fp32_keep": fp32_keep.to_dict(),
        "fp32_nodes": list(fp32_nodes),
        "profile": profile.to_dict(),
        "input_name": input_name,
        "output_names": list(output_names),
        "build": dict(build or {}),
        "fusion": fusion.to_dict() if fusion is not None else None,
        "layer_dtypes": dict(layer_dtypes or {}),
        "parity": dict(parity) if parity is not None else None,
        "attempts": [dict(a) for a in attempts],
    }


def trt_manifest(onnx_manifest: dict, staging: Path, section: dict, keep, nodes, profile) -> dict:
    """The artifact's manifest: the ONNX export's, with the engine as the artifact, the ONNX
    file as an extra file, the ONNX Runtime parity kept as ``onnx_parity``, and the
    ``engine`` section."""
    from vit_deploy.manifest import file_entry

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


def finish_manifest(
    manifest: dict,
    section: dict,
    attempts: list[dict],
    env: Mapping,
    *,
    source: str,
    duration_s: float,
    report=None,
    gate=None,
    inputs=None,
    batch: int | None = None,
) -> None:
    """Complete ``manifest`` (in place) once an engine passed (or was not verified): every
    attempt, the engine's parity against PyTorch fp32, versions, source and duration."""
    from vit_deploy.export.onnx.pipeline import library_versions

    section["attempts"] = attempts
    manifest["engine"] = section
    if report is not None:
        manifest["parity"] = parity_section(report, gate, inputs, batch, backend="trt")
        section["parity"] = {
            "passed": gate.passed,
            "summary": attempts[-1]["engine_parity"],
        }
    else:
        manifest["parity"] = skipped_parity()
    manifest["versions"] = {
        **library_versions(),
        "tensorrt": env.get("tensorrt_version"),
    }
    manifest["export"]["source"] = source
    manifest["export"]["duration_s"] = duration_s


__all__ = ["build_record", "engine_manifest_section", "finish_manifest", "trt_manifest"]
