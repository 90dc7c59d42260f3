"""Who writes the fp16 ONNX graph of a TensorRT export, and how.

Two converters, both keeping fp32 inputs and outputs and the fp32 keep list
(``trt_precision.Fp32Keep``: op types, plus node names once the keep list escalates):

- NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast``), NVIDIA's documented way to write
  a strongly typed mixed-precision graph; used when importable (GPU environments);
- onnxconverter-common otherwise (the ONNX export's own fp16 path).

``conversion_step`` says whether an attempt's graph is converted after an fp32 export,
or written in fp16 by the ONNX export itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from pathlib import Path

from vit_deploy.errors import ExportError
from vit_deploy.export.tensorrt.precision import Fp32Keep

CONVERTERS = ("modelopt-autocast", "onnxconverter-common")


def fp16_converter() -> str:
    """Which tool writes the fp16 ONNX: NVIDIA ModelOpt AutoCast when importable
    (``modelopt.onnx.autocast``, GPU environments only), else onnxconverter-common."""
    try:
        found = importlib.util.find_spec("modelopt.onnx.autocast") is not None
    except (ImportError, ValueError):
        found = False
    return "modelopt-autocast" if found else "onnxconverter-common"


def pipeline_takes_fp32_nodes() -> bool:
    from vit_deploy.export.options import OnnxExportOptions

    return "fp32_nodes" in {f.name for f in dataclasses.fields(OnnxExportOptions)}


def conversion_step(converter: str, keep: Fp32Keep, nodes: list[str]) -> str | None:
    """Who converts this attempt's graph to fp16 after an fp32 export, or None when the ONNX
    export writes it itself (fp32 attempts, or onnxconverter-common with op types only /
    an export that takes node names)."""
    if keep.all_fp32:
        return None
    if converter == "modelopt-autocast":
        return "modelopt-autocast"
    if nodes and not pipeline_takes_fp32_nodes():
        return "onnxconverter-common"
    return None


def onnxconverter_fp16(src: Path, dst: Path, keep: Fp32Keep, nodes: list[str]) -> dict:
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


def autocast_fp16(src: Path, dst: Path, keep: Fp32Keep, nodes: list[str]) -> dict:
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


__all__ = [
    "CONVERTERS",
    "autocast_fp16",
    "conversion_step",
    "fp16_converter",
    "onnxconverter_fp16",
    "pipeline_takes_fp32_nodes",
]
