"""Who writes the fp16 ONNX graph of a TensorRT export, and how.

Two converters, both keeping fp32 inputs and outputs and the fp32 keep list
(``trt_precision.Fp32Keep``: op types, plus node names once the keep list escalates):

- NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast``), NVIDIA's documented way to write
  a strongly typed mixed-precision graph; used when importable (GPU environments);
- onnxconverter-common otherwise: the ONNX export's own fp16 path
  (``vit_deploy.export.onnx.fp16``, the one onnxconverter-common converter), which takes
  the keep list's op types and node names.

``conversion_step`` says whether an attempt's graph is converted after an fp32 export,
or written in fp16 by the ONNX export itself.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


def conversion_step(converter: str, keep: Fp32Keep, nodes: list[str]) -> str | None:
    """Who converts this attempt's graph to fp16 after an fp32 export, or None when the ONNX
    export writes it itself (fp32 attempts, and onnxconverter-common: the export's own fp16
    step, ``vit_deploy.export.onnx.fp16``, takes op types and node names)."""
    if keep.all_fp32 or converter != "modelopt-autocast":
        return None
    return "modelopt-autocast"


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
]
