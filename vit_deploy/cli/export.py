"""vit-export: a verified, manifested artifact from a ViT.

vit-export [--model PRESET|CHECKPOINT] --fmt onnx [--precision fp32|fp16|int8]
           [--calibration DIR] [--calibration-size N] [--verify-openvino f32,bf16]
           [--batch MIN:OPT:MAX] [--img-size N] [--opset N] [--out DIR]
           [--no-verify] [--outputs logits,embedding]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from vit_deploy.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_model_argument,
    configure_logging,
    model_spec,
    run_main,
)

PROG = "vit-export"
log = logging.getLogger("vit_deploy.cli.export")

DESCRIPTION = """\
Export a Vision Transformer to a deployable artifact: a directory with the model file
and manifest.json (config, preprocessing, labels, I/O, versions, sha256, fusion report
and the parity results). The artifact is run against the PyTorch fp32 model on held-out
and random images; if it does not match (fp32: cosine >= 0.99999 and 100% top-1;
fp16: cosine >= 0.999 and >= 99% top-1; int8: cosine >= 0.99 and >= 98% top-1 on the
held-out images, after up to --int8-attempts repairs) nothing is written and the exit
status is 1. A failed --verify-openvino check is recorded (OpenVINO then refuses that
hint) and also exits 1."""

EPILOG = """\
exit status: 0 written; 1 export or parity gate failed; 2 bad arguments.

examples:
  vit-export --fmt onnx                                   # the bundled default model
  vit-export --model vit_base_patch16_224 --fmt onnx --precision fp16 --batch 1:16:64
  vit-export --fmt onnx --precision int8 --verify-openvino f32   # QDQ, bundled calibration
  vit-export --fmt onnx --verify-openvino bf16            # servable by OpenVINO in bf16
  vit-export --model ckpt/ --fmt onnx --img-size 384 --outputs embedding --out artifacts/emb"""


def build_parser() -> argparse.ArgumentParser:
    from vit_deploy.cli.formats import FORMATS
    from vit_deploy.export.options import DEFAULT_OPSET, OPTIMIZE_CHOICES, PRECISIONS

    p = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "--fmt",
        default="onnx",
        help=f"artifact format, one of {', '.join(FORMATS)} (default: onnx)",
    )
    p.add_argument(
        "--precision",
        default=None,
        help=f"one of {', '.join(PRECISIONS)} (default: fp32 for onnx, fp16 for trt)",
    )
    p.add_argument(
        "--batch",
        default="1:8:32",
        metavar="MIN:OPT:MAX",
        help="batch profile recorded for TensorRT; the ONNX graph takes any batch "
        "(default: 1:8:32)",
    )
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        metavar="N",
        help="export at this resolution (position embedding resampled); a multiple of the "
        "patch size",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"(default: {DEFAULT_OPSET})")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="artifact directory (default: artifacts/<model>-<precision>)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the parity gate (not advised)")
    p.add_argument(
        "--no-source-parity",
        action="store_true",
        help="skip comparing our model with the checkpoint's own library (timm, "
        "transformers, open_clip), which runs when that library is installed",
    )
    p.add_argument(
        "--outputs",
        default=None,
        metavar="NAMES",
        help="comma-separated graph outputs: logits,embedding (default: both when the model "
        "has a head)",
    )
    p.add_argument(
        "--fp32-ops",
        default=None,
        metavar="OPS",
        help="fp16 only: comma-separated op types kept in fp32 (default: LayerNormalization, "
        "SkipLayerNormalization, Softmax, ReduceMean, ReduceSum, Pow, Sqrt, Exp); '' for none",
    )
    p.add_argument(
        "--optimize",
        default="auto",
        choices=OPTIMIZE_CHOICES,
        help="auto (fp32): time the plain graph against plain + fused com.microsoft.Attention "
        "and keep the faster correct one; plain: standard ONNX only (fp16 auto = plain); "
        "ort-attention / ort-transformers: force that ONNX Runtime-only graph",
    )
    p.add_argument(
        "--verify-samples",
        type=int,
        default=None,
        metavar="N",
        help="parity samples (default: scaled to the model's FLOPs, 8..96)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="DIR",
        help="int8 only: a folder of calibration images, decoded with the model's own "
        "preprocessing (default: the bundled held-out digits)",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=128,
        metavar="N",
        help="int8 only: how many calibration images (default: 128)",
    )
    p.add_argument(
        "--int8-attempts",
        type=int,
        default=3,
        metavar="N",
        help="int8 only: quantize/gate attempts; after a failure the most sensitive layers "
        "(lowest measured SQNR) are kept in float (default: 3)",
    )
    p.add_argument(
        "--verify-openvino",
        default=None,
        metavar="HINTS",
        help="also run the parity check through OpenVINO at these precision hints (f32,bf16) "
        "and record it in the manifest; OpenVINO serves bf16 (and int8 artifacts) only when "
        "this passed",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime intra-op threads for timing and verification",
    )
    p.add_argument(
        "--attention",
        default="math",
        choices=("math", "triton", "onnx-attention"),
        help="math: export the reference attention path with the model's weights (default); "
        "triton: build the model with the fused Triton kernel and export it as built (its op "
        "maps to the same MatMul/Softmax/MatMul); onnx-attention: one ONNX Attention op per "
        "block (needs --opset 23)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for fmt in FORMATS.values():
        fmt.add_arguments(p)  # options of one format only (e.g. TensorRT's workspace)
    return p


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def onnx_options(args: argparse.Namespace):
    from vit_deploy.export.options import DEFAULT_FP32_OPS, BatchProfile, OnnxExportOptions

    fp32_ops = _csv(args.fp32_ops)
    return OnnxExportOptions(
        precision=args.precision,
        opset=args.opset,
        batch=BatchProfile.parse(args.batch),
        outputs=_csv(args.outputs),
        fp32_ops=DEFAULT_FP32_OPS if fp32_ops is None else fp32_ops,
        optimize=args.optimize,
        verify=not args.no_verify,
        source_parity=not args.no_source_parity,
        verify_samples=args.verify_samples,
        attention="native" if args.attention == "triton" else args.attention,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        int8_attempts=args.int8_attempts,
        verify_openvino=_csv(args.verify_openvino) or (),
    )


def check_out_dir(out: Path) -> None:
    """Fail before the slow part when ``out`` cannot be written (nothing is created here)."""
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor == out.absolute() and not ancestor.is_dir():
        raise UsageError(f"--out: expected a directory, got {str(out)!r} (an existing file)")
    if ancestor == out.absolute() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UsageError(
            f"--out: expected a new directory or an earlier export to replace, got {str(out)!r} "
            "(not empty and has no manifest.json)"
        )
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        why = "not a directory" if not ancestor.is_dir() else "not writable"
        raise UsageError(
            f"--out: expected a writable directory, got {str(out)!r} ({ancestor} is {why})"
        )


def export_onnx_from_args(model, args, *, source, stages):
    """The 'onnx' format's exporter (see vit_deploy.cli.formats)."""
    from vit_deploy.export.onnx.pipeline import export_onnx_artifact

    return export_onnx_artifact(
        model, args.out, args.onnx_options, source=source, stages=stages, threads=args.threads
    )


def print_summary(result, description: str, warnings: list[str]) -> None:
    from vit_deploy.export.onnx import fusion_report as fusion

    m = result.manifest
    artifact = result.directory / m["artifact"]["file"]
    size_mb = m["artifact"]["size_bytes"] / 2**20
    precision = m["precision"]
    print(f"exported {description} -> {artifact} ({size_mb:.2f} MiB)")
    kept = ", ".join(f"{k} x{v}" for k, v in precision.get("kept_fp32", {}).items())
    print(
        f"  precision {precision['mode']}"
        + (f" (kept fp32: {kept})" if kept else "")
        + f", opset {m['onnx']['opset']}, batch profile "
        f"{m['batch_profile']['min']}:{m['batch_profile']['opt']}:{m['batch_profile']['max']}, "
        f"outputs {', '.join(o['name'] for o in m['outputs'])}"
    )
    opt = m["onnx"]["optimization"]
    timings = ", ".join(
        f"{name} {c['batch1_ms']:.2f} ms"
        for name, c in opt.get("candidates", {}).items()
        if "batch1_ms" in c
    )
    print(f"  graph: {opt['chosen']}" + (f" (batch-1 CPU timing: {timings})" if timings else ""))
    parity = m["parity"]
    if parity.get("skipped"):
        print("  parity: SKIPPED (--no-verify): this artifact was not checked against PyTorch")
    else:
        g = parity["gate"]["thresholds"]
        n = parity["inputs"]
        print(
            f"  parity vs PyTorch fp32: PASSED ({parity['gate']['precision']} gate: cosine >= "
            f"{g['min_cosine']}, top-1 >= {g['min_top1']:.0%}; {n['samples']} samples: "
            f"{n['real_images']} held-out images, {n['random']} random)"
        )
        for line in result.report.table().splitlines():
            print(f"    {line}")
    source = m.get("source_parity") or {}
    if source.get("skipped"):
        print(f"  source parity: skipped ({source['reason']})")
    elif source:
        worst = max(source["max_abs_diff_over_scale"].values())
        print(
            f"  source parity vs {source['reference']}: PASSED (fp32 gate; max |diff| = "
            f"{worst:.1e} x output scale)"
        )
    print(f"  fused ops: {fusion.summary_line(m['fusion'])}")
    for w in [*warnings, *m["fusion"]["warnings"]]:
        print(f"  WARNING: {w}")
    print(f"  manifest: {result.directory / 'manifest.json'}  ({m['export']['duration_s']:.1f} s)")


def run(args: argparse.Namespace) -> int:
    from vit_deploy.cli.formats import get_format
    from vit_deploy.export.onnx.pipeline import STAGES
    from vit_deploy.export.progress import Stages
    from vit_deploy.export.tensorrt.precision import resolve_precision

    fmt = get_format(args.fmt)
    if fmt.command is not None:  # made from an artifact (--fmt triton), not from a model
        return fmt.run_command(args)
    exporter = fmt.load()  # BackendUnavailableError before any work when it cannot run here
    args.precision = resolve_precision(args.fmt, args.precision)
    args.onnx_options = onnx_options(args)  # trt builds from the ONNX of the same precision
    if args.out is not None:
        check_out_dir(Path(args.out))
    stages = Stages(STAGES, enabled=not args.quiet and sys.stderr.isatty(), desc=PROG)
    try:
        with stages.stage("build"):
            spec = model_spec(args)
            model = spec.load("triton" if args.attention == "triton" else "math")
        if args.out is None:
            kind = "" if args.fmt == "onnx" else f"{args.fmt}-"
            args.out = str(Path("artifacts") / f"{spec.name}-{kind}{args.precision}")
            check_out_dir(Path(args.out))
        warnings = [spec.warning] if spec.warning else []
        for w in warnings:
            log.warning(w)
        result = exporter(model, args, source=spec.description, stages=stages)
    finally:
        stages.close()
    print_summary(result, spec.description, warnings)
    if args.fmt == "trt":
        from vit_deploy.cli.export_trt import summary_lines

        print("\n".join(summary_lines(result.manifest)))
    openvino = result.manifest.get("serving", {}).get("openvino", {})
    for hint, record in openvino.items():
        status = "PASSED" if record["passed"] else "FAILED (OpenVINO will refuse this hint)"
        print(f"  OpenVINO {hint} parity ({record['inference_precision']}): {status}")
    if any(not r["passed"] for r in openvino.values()):
        return EXIT_FAILURE
    return EXIT_OK if result.gate is None or result.gate.passed else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(PROG)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line each, not Python's source echo
        return run_main(PROG, run, args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
