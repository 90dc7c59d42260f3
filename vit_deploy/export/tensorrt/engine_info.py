"""The TensorRT engine inspector's JSON, parsed (no TensorRT needed).

``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` describes every
layer of an engine: its kernel (tactic), its ONNX origin and its tensors' types. The
schema changed between releases, and both are read here:

- TensorRT 10.x: ``"Bindings"`` (I/O names only), one ``"Format/Datatype"`` string per
  layer tensor;
- TensorRT 11.x: ``"I/O Tensors"`` (objects with Name, IOMode, DataType, Dimensions,
  ProfileInfo), ``"Format"`` and ``"DataType"`` as separate fields.

The fused-attention report built on this lives in ``trt_fusion``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vit_deploy.errors import ManifestError


@dataclass(frozen=True)
class TensorDesc:
    name: str
    dims: tuple[int, ...] = ()
    dtype: str = "unknown"  # fp32 / fp16 / bf16 / int8 / int32 / int64 / bool / fp8 / unknown
    format: str = ""


@dataclass(frozen=True)
class IOTensor:
    name: str
    mode: str = "unknown"  # input / output / unknown (10.x lists names only)
    dtype: str = "unknown"
    dims: tuple[int, ...] = ()
    profile: tuple[tuple[int, ...], ...] = ()  # (min, opt, max) shapes of profile 0, if given


@dataclass(frozen=True)
class LayerInfo:
    name: str
    layer_type: str = ""
    tactic: str = ""
    metadata: str = ""
    inputs: tuple[TensorDesc, ...] = ()
    outputs: tuple[TensorDesc, ...] = ()

    @property
    def onnx_refs(self) -> tuple[str, ...]:
        """The ONNX node names this layer implements, from "[ONNX Layer: X]" metadata
        (and, failing that, from a "a + b + c" fused layer name)."""
        refs = re.findall(r"\[ONNX Layer: ([^\]]+)\]", self.metadata)
        if not refs:
            refs = re.findall(r"\[ONNX Layer: ([^\]]+)\]", self.name)
        if not refs:
            refs = [p.strip() for p in self.name.split("+") if p.strip()]
        return tuple(refs)


@dataclass(frozen=True)
class EngineInfo:
    schema: str  # "10.x" ("Bindings"), "11.x" ("I/O Tensors") or "unknown"
    detailed: bool  # False when built without ProfilingVerbosity.DETAILED (names only)
    layers: tuple[LayerInfo, ...] = ()
    io_tensors: tuple[IOTensor, ...] = ()

    def dtype_counts(self) -> dict[str, int]:
        """Layers by the dtype of their first output (how much of the engine runs in fp16)."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            dtype = layer.outputs[0].dtype if layer.outputs else "unknown"
            counts[dtype] = counts.get(dtype, 0) + 1
        return dict(sorted(counts.items()))


_DTYPE_WORDS = (
    # (regex on the lower-cased TensorRT text, our name); order matters: "bf16" before "fp16"
    (r"\bbf16\b|bfloat16", "bf16"),
    (r"\bhalf\b|\bfp16\b|float16", "fp16"),
    (r"\bfp8\b|e4m3", "fp8"),
    (r"\bint8\b", "int8"),
    (r"\bint32\b", "int32"),
    (r"\bint64\b", "int64"),
    (r"\bbool\b", "bool"),
    (r"\bfloat\b|\bfp32\b|float32", "fp32"),
)


def parse_dtype(text: str) -> str:
    """TensorRT's data type words ("Half", "Float", "Row major linear FP16 format") -> ours."""
    lowered = str(text).lower()
    for pattern, name in _DTYPE_WORDS:
        if re.search(pattern, lowered):
            return name
    return "unknown"


def _dims(value) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            try:
                out.append(int(v))
            except (TypeError, ValueError):
                out.append(-1)
        return tuple(out)
    return ()


def _tensor(d) -> TensorDesc:
    if not isinstance(d, Mapping):
        return TensorDesc(name=str(d))
    if "Format/Datatype" in d:  # 10.x: one field, e.g. "Row major linear FP16 format"
        fmt = str(d["Format/Datatype"])
        dtype = parse_dtype(fmt)
    else:  # 11.x: "Format" and "DataType" apart
        fmt = str(d.get("Format", ""))
        dtype = parse_dtype(d.get("DataType", "")) if "DataType" in d else parse_dtype(fmt)
    return TensorDesc(str(d.get("Name", "")), _dims(d.get("Dimensions")), dtype, fmt)


def _io_tensor(d) -> IOTensor:
    if not isinstance(d, Mapping):
        return IOTensor(name=str(d))
    mode = str(d.get("IOMode", "unknown")).lower()
    profile: tuple[tuple[int, ...], ...] = ()
    infos = d.get("ProfileInfo") or []
    if infos and isinstance(infos[0], Mapping):
        p = infos[0]
        profile = tuple(_dims(p.get(k)) for k in ("MinShape", "OptShape", "MaxShape"))
    return IOTensor(
        name=str(d.get("Name", "")),
        mode=mode if mode in ("input", "output") else "unknown",
        dtype=parse_dtype(d.get("DataType", "")),
        dims=_dims(d.get("Dimensions")),
        profile=profile,
    )


def parse_engine_information(data: str | Mapping) -> EngineInfo:
    """Parse the engine inspector's JSON, TensorRT 10.x or 11.x schema.

    10.x: ``{"Layers": [...], "Bindings": ["pixels", "logits"]}``, layer tensors
    carry one ``"Format/Datatype"`` string. 11.x: ``"Bindings"`` became
    ``"I/O Tensors"`` (objects with Name, IOMode, DataType, Dimensions,
    ProfileInfo) and format and data type are separate fields. An engine built
    without ProfilingVerbosity.DETAILED lists layer names only (strings).
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"engine inspector output: expected JSON, got {exc}") from None
    if not isinstance(data, Mapping):
        raise ManifestError(
            f"engine inspector output: expected a JSON object, got {type(data).__name__}"
        )
    raw_layers = data.get("Layers", [])
    layers = []
    detailed = bool(raw_layers)
    for item in raw_layers:
        if isinstance(item, Mapping):
            layers.append(
                LayerInfo(
                    name=str(item.get("Name", "")),
                    layer_type=str(item.get("LayerType", "")),
                    tactic=str(item.get("TacticName", item.get("TacticValue", ""))),
                    metadata=str(item.get("Metadata", "")),
                    inputs=tuple(_tensor(t) for t in item.get("Inputs", []) or []),
                    outputs=tuple(_tensor(t) for t in item.get("Outputs", []) or []),
                )
            )
        else:  # ProfilingVerbosity.LAYER_NAMES_ONLY: plain names
            detailed = False
            layers.append(LayerInfo(name=str(item)))
    if "I/O Tensors" in data:
        schema = "11.x"
        io = tuple(_io_tensor(t) for t in data["I/O Tensors"] or [])
    elif "Bindings" in data:
        schema = "10.x"
        io = tuple(IOTensor(name=str(b)) for b in data["Bindings"] or [])
    else:
        schema, io = "unknown", ()
    return EngineInfo(schema=schema, detailed=detailed, layers=tuple(layers), io_tensors=io)


__all__ = [
    "EngineInfo",
    "IOTensor",
    "LayerInfo",
    "TensorDesc",
    "parse_dtype",
    "parse_engine_information",
]
