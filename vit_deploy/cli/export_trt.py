"""The TensorRT format's wiring into ``vit-export`` and ``vit_deploy.cli.formats``.

- ``add_trt_arguments``: the TensorRT-only options of ``vit-export``;
- ``trt_unavailable_reason``: None when TensorRT export can run here, else the one-line
  reason (``vit-export --fmt trt`` prints it and exits 1);
- ``export_trt_from_args``: the registry's exporter, ``trt_export.export_trt`` from
  the parsed arguments;
- ``summary_lines``: the engine lines of ``vit-export``'s summary.
"""

from __future__ import annotations

import argparse

from vit_deploy.export.tensorrt.build import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_GIB, OPT_LEVELS
from vit_deploy.runtime.tensorrt import env as trt_env


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
    problems = trt_env.tensorrt_problems()
    return trt_env.unavailable_message(problems) if problems else None


def export_trt_from_args(model, args: argparse.Namespace, *, source: str, stages=None):
    """The 'trt' format's exporter for ``vit_deploy.cli.formats`` / ``vit-export``."""
    from vit_deploy.export.tensorrt.export import export_trt

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


__all__ = [
    "add_trt_arguments",
    "export_trt_from_args",
    "summary_lines",
    "trt_unavailable_reason",
]
