"""Everything about TensorRT engines that does not need TensorRT.

The GPU-only code (``trt_build``, ``runtime.trt_backend``) is kept thin; every
decision it makes lives here as a pure function, tested on a machine without a
GPU:

- the optimisation profile (``--batch MIN:OPT:MAX``) and how a batch outside it
  is split into chunks;
- the fp32 "keep list" of a mixed-precision export and how it escalates when
  the engine fails its parity gate;
- parsing of the engine inspector's JSON, in both the TensorRT 10.x schema
  ("Bindings", "Format/Datatype") and the 11.x schema ("I/O Tensors",
  separate "Format" and "DataType"), and the fused-attention report built on it;
- the "engine" section of ``manifest.json``, the check that refuses an engine
  built for another TensorRT or GPU, and the command that rebuilds it;
- the one-line reason TensorRT cannot run here (``require_tensorrt``).

Precision in TensorRT 11 (and in 10.12+ with the STRONGLY_TYPED network flag)
lives in the ONNX graph: every tensor has the type the graph gives it, and the
builder never picks a precision on its own. So "fp16 that keeps accuracy" is
decided when the ONNX file is written (which nodes stay in fp32), verified on
ONNX Runtime, and verified again on the engine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import platform
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import BackendUnavailableError, ConfigError, ManifestError
from .options import DEFAULT_FP32_OPS as _ONNX_DEFAULT_FP32_OPS

ENGINE_SECTION_FORMAT = "vit_deploy.engine/1"
MIN_TENSORRT = (10, 12)  # first release with the STRONGLY_TYPED network flag we rely on
PRECISIONS = ("fp16", "fp32")
DEFAULT_PRECISION = {"onnx": "fp32", "trt": "fp16"}
ENGINE_FILE = "model.engine"

# --------------------------------------------------------------------------------------
# Optimisation profile: --batch MIN:OPT:MAX
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (min..max) and the one it is tuned for (opt)."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"batch profile: expected three ints, got {values}")
        if self.min < 1:
            raise ConfigError(
                f"batch profile: expected MIN >= 1, got MIN={self.min} "
                f"(in {self.min}:{self.opt}:{self.max})"
            )
        if not self.min <= self.opt <= self.max:
            raise ConfigError(
                f"batch profile: expected MIN <= OPT <= MAX, got {self.min}:{self.opt}:{self.max}"
            )

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def shapes(self, in_chans: int, img_size: int) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) input shapes, NCHW at the model's resolution."""
        return tuple((b, in_chans, img_size, img_size) for b in (self.min, self.opt, self.max))

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, d: Mapping) -> BatchProfile:
        try:
            return cls(int(d["min"]), int(d["opt"]), int(d["max"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(
                f"engine profile: expected {{'min', 'opt', 'max'}} ints, got {d!r}"
            ) from exc


def parse_batch_profile(text: str) -> BatchProfile:
    """``"1:8:32"`` -> BatchProfile(1, 8, 32).

    A single number is refused on purpose: "8" could mean a static batch of 8
    (8:8:8) or "up to 8" (1:8:8), and the two build different engines. The
    error names both spellings.
    """
    raw = str(text).strip()
    parts = raw.split(":")
    if len(parts) == 1 and parts[0].strip().isdigit():
        n = int(parts[0])
        raise ConfigError(
            f"--batch: expected MIN:OPT:MAX, got {raw!r}; a single number is ambiguous: "
            f"write {n}:{n}:{n} for a static batch of {n} or 1:{n}:{n} for any batch up to {n}"
        )
    if len(parts) != 3:
        raise ConfigError(
            f"--batch: expected MIN:OPT:MAX (three positive ints, e.g. 1:8:32), got {raw!r}"
        )
    try:
        values = [int(p.strip()) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--batch: expected MIN:OPT:MAX as three positive ints (e.g. 1:8:32), got {raw!r}"
        ) from None
    return BatchProfile(*values)


def as_profile(value) -> BatchProfile:
    """A BatchProfile from "MIN:OPT:MAX", a BatchProfile, or anything with min/opt/max
    (the ONNX export's ``options.BatchProfile``)."""
    if isinstance(value, BatchProfile):
        return value
    if isinstance(value, str):
        return parse_batch_profile(value)
    if all(hasattr(value, k) for k in ("min", "opt", "max")):
        return BatchProfile(int(value.min), int(value.opt), int(value.max))
    raise ConfigError(f"batch profile: expected 'MIN:OPT:MAX', got {value!r}")


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of the caller's batch, run as one engine call of ``run_size``
    rows (``run_size - (stop - start)`` rows of zero padding, whose outputs are dropped)."""

    start: int
    stop: int
    run_size: int

    @property
    def pad(self) -> int:
        return self.run_size - (self.stop - self.start)


def plan_chunks(batch: int, profile: BatchProfile) -> list[Chunk]:
    """How a batch of ``batch`` rows runs on an engine built for ``profile``.

    Policy (documented in the README):
    - inside the profile: one call, no copy;
    - larger than MAX: consecutive chunks of MAX rows, then the remainder;
    - any chunk smaller than MIN (the remainder, or a batch below MIN) is padded
      with zero rows up to MIN and the padded rows' outputs are dropped.
    """
    if batch < 1:
        raise ConfigError(f"batch: expected at least 1 image, got {batch}")
    chunks = []
    for start in range(0, batch, profile.max):
        stop = min(start + profile.max, batch)
        chunks.append(Chunk(start, stop, max(stop - start, profile.min)))
    return chunks


def resolve_precision(fmt: str, precision: str | None) -> str:
    """The precision to export at: as given, or the format's default (trt: fp16, onnx: fp32)."""
    if precision is None:
        if fmt not in DEFAULT_PRECISION:
            raise ConfigError(f"--fmt: expected one of {sorted(DEFAULT_PRECISION)}, got {fmt!r}")
        return DEFAULT_PRECISION[fmt]
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: expected one of {PRECISIONS}, got {precision!r}")
    return precision


# --------------------------------------------------------------------------------------
# Mixed precision: which nodes stay in fp32, and how that escalates
# --------------------------------------------------------------------------------------

# What the first fp16 attempt keeps in fp32, by op type: the ONNX export's own default
# (LayerNorm and Softmax and the reductions they decompose into), so the engine starts
# from exactly the graph ONNX Runtime verified.
DEFAULT_FP32_OPS = _ONNX_DEFAULT_FP32_OPS


@dataclass(frozen=True)
class Fp32Keep:
    """What a mixed-precision export keeps in fp32.

    ``op_types``: every node of these ONNX op types.
    ``attention_matmuls``: the two matmuls of every attention core (Q·Kᵀ and P·V).
    ``edge_blocks``: every node of the first and last encoder blocks, and every
    node outside the blocks (patch embedding, final norm, head).
    ``all_fp32``: give up on fp16 altogether: the engine is built from the fp32 ONNX.
    """

    level: int = 0
    op_types: tuple[str, ...] = DEFAULT_FP32_OPS
    attention_matmuls: bool = False
    edge_blocks: bool = False
    all_fp32: bool = False

    @property
    def name(self) -> str:
        if self.all_fp32:
            return "all-fp32"
        if tuple(self.op_types) == tuple(DEFAULT_FP32_OPS):
            parts = ["default fp32 ops"]
        else:
            parts = ["+".join(self.op_types) or "no fp32 ops"]
        if self.attention_matmuls:
            parts.append("attention matmuls")
        if self.edge_blocks:
            parts.append("first/last blocks")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["op_types"] = list(self.op_types)
        d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Fp32Keep:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "op_types" in kw:
            kw["op_types"] = tuple(kw["op_types"])
        return cls(**kw)


def next_fp32_keep_list(current: Fp32Keep) -> Fp32Keep | None:
    """The next, more conservative keep list after ``current`` failed its parity gate.

    Escalation, one step per failed engine (each step keeps everything the
    previous one kept, including any extra op types the caller added):
      1. + the attention matmuls (Q·Kᵀ and P·V) of every block,
      2. + every node of the first and last blocks and outside the blocks,
      3. everything in fp32 (an fp32 engine),
    then ``None``: nothing left to try.
    """
    if current.all_fp32:
        return None
    if not current.attention_matmuls:
        return dataclasses.replace(current, level=current.level + 1, attention_matmuls=True)
    if not current.edge_blocks:
        return dataclasses.replace(current, level=current.level + 1, edge_blocks=True)
    return dataclasses.replace(current, level=current.level + 1, all_fp32=True)


@dataclass(frozen=True)
class NodeInfo:
    """One ONNX node: its name, op type and module scope ("blocks.3/blocks.3.attn/...")."""

    name: str
    op_type: str
    scope: str = ""


_BLOCK_RE = re.compile(r"(?:^|[/.])blocks[._](\d+)(?=$|[/._])")


def node_scope(name: str, metadata: Mapping[str, str] | None = None) -> str:
    """The module path a node came from.

    torch's dynamo exporter names nodes ``node_matmul_2`` and records the module
    path in the ``pkg.torch.onnx.name_scopes`` metadata; the TorchScript exporter
    puts it in the name (``/blocks.1/attn/MatMul``). Both are handled.
    """
    scopes = (metadata or {}).get("pkg.torch.onnx.name_scopes")
    if scopes:
        items = re.findall(r"'([^']*)'", scopes)
        joined = "/".join(s for s in items if s)
        if joined:
            return joined
    return name


def block_index(scope: str) -> int | None:
    """The encoder block a scope belongs to (``blocks.3`` -> 3), or None."""
    m = _BLOCK_RE.search(scope)
    return int(m.group(1)) if m else None


def _scope_tokens(scope: str) -> set[str]:
    return {t for t in re.split(r"[/.]", scope.lower()) if t}


def is_attention_core(node: NodeInfo) -> bool:
    """A node of the attention core (Q·Kᵀ, softmax, P·V), not the qkv/out projections."""
    tokens = _scope_tokens(node.scope)
    return "attn" in tokens and not tokens & {"qkv", "proj"}


def is_attention_matmul(node: NodeInfo) -> bool:
    return node.op_type == "MatMul" and is_attention_core(node)


def resolve_fp32_nodes(keep: Fp32Keep, nodes: Sequence[NodeInfo], depth: int) -> list[str]:
    """Names of the nodes ``keep`` holds in fp32 beyond its op types (for a node block list).

    ``depth`` is the number of encoder blocks, to find the last one.
    """
    if keep.all_fp32:
        return [n.name for n in nodes]
    names = []
    edge = {0, depth - 1}
    for node in nodes:
        block = block_index(node.scope)
        if keep.attention_matmuls and is_attention_matmul(node):
            names.append(node.name)
        elif keep.edge_blocks and (block is None or block in edge):
            names.append(node.name)
    return names


def attention_core_nodes(nodes: Iterable[NodeInfo]) -> dict[str, int]:
    """ONNX node name -> block index, for the attention-core nodes (used by the fusion report)."""
    out = {}
    for node in nodes:
        block = block_index(node.scope)
        if block is not None and is_attention_core(node) and node.op_type in ("MatMul", "Softmax"):
            out[node.name] = block
    return out


def onnx_node_infos(model, depth: int | None = None) -> list[NodeInfo]:
    """NodeInfo for every node of an ``onnx.ModelProto`` (top-level graph).

    The scope comes from the exporter's metadata or the node name; when neither says
    which block a node is in (the export strips node metadata, and dynamo names are
    ``node_matmul_2``), and ``depth`` is given, it is read from the graph's structure
    (``structural_scopes``).
    """
    infos = []
    for node in model.graph.node:
        metadata = {p.key: p.value for p in node.metadata_props}
        infos.append(NodeInfo(node.name, node.op_type, node_scope(node.name, metadata)))
    if depth is not None and not any(block_index(n.scope) is not None for n in infos):
        infos = structural_scopes(model, depth) or infos
    return infos


def structural_scopes(model, depth: int) -> list[NodeInfo] | None:
    """Block scopes read from a ViT graph's structure, or None if it does not fit.

    In topological order a pre-norm ViT has 2 LayerNormalization nodes per block
    (norm1, norm2) and then the final one: block ``b`` runs from its norm1 (the
    2b-th LayerNorm) to the next block's norm1; nodes before the first LayerNorm are
    the stem, nodes from the final LayerNorm on are the head (block None). Inside a
    block, a MatMul whose two inputs are both activations (neither a weight nor
    derived from weights only) is one of the attention core's two matmuls.
    """
    nodes = list(model.graph.node)
    ln_positions = [i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization"]
    if len(ln_positions) < 2 * depth:
        return None
    constant = {init.name for init in model.graph.initializer}
    for node in nodes:  # outputs computed from constants only are constants too
        if node.op_type == "Constant" or (
            node.input and all(i in constant for i in node.input if i)
        ):
            constant.update(node.output)
    starts = [ln_positions[2 * b] for b in range(depth)]
    end = ln_positions[2 * depth] if len(ln_positions) > 2 * depth else len(nodes)
    infos = []
    for i, node in enumerate(nodes):
        block = None
        if starts[0] <= i < end:
            block = max(b for b in range(depth) if starts[b] <= i)
        if block is None:
            scope = ""
        elif node.op_type == "MatMul" and not any(x in constant for x in node.input[:2]):
            scope = f"blocks.{block}/attn/{node.name}"
        elif node.op_type == "Softmax":
            scope = f"blocks.{block}/attn/{node.name}"
        else:
            scope = f"blocks.{block}/{node.name}"
        infos.append(NodeInfo(node.name, node.op_type, scope))
    return infos


def fp16_converter() -> str:
    """Which tool writes the fp16 ONNX: NVIDIA ModelOpt AutoCast when importable
    (``modelopt.onnx.autocast``, GPU environments only), else onnxconverter-common."""
    try:
        found = importlib.util.find_spec("modelopt.onnx.autocast") is not None
    except (ImportError, ValueError):
        found = False
    return "modelopt-autocast" if found else "onnxconverter-common"


# --------------------------------------------------------------------------------------
# Engine inspector JSON (IEngineInspector.get_engine_information(LayerInformationFormat.JSON))
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Fusion report: did each attention block become one fused MHA kernel?
# --------------------------------------------------------------------------------------

# Heuristics, from what TensorRT reports (kernel names are not a documented API):
# a fused attention kernel shows up as a layer whose TacticName (the kernel) or
# name carries one of these markers, e.g. name "_gemm_mha_v2_myl0_17", tactic
# "_gemm_mha_v2_0x95..." (Myelin's fused MHA), "fmha" kernels, flash-attention
# kernels, or an IAttention layer. Unfused attention is two "gemm" layers and a
# softmax for the same ONNX nodes.
FUSED_ATTENTION_MARKERS = ("mha", "fmha", "flash", "attention")
_NAME_MARKER_RE = re.compile(r"(^|[^a-z0-9])(_?gemm_mha|fmha|mha_v\d|flash)", re.IGNORECASE)

FUSION_HEURISTIC = (
    "a block counts as fused when a layer implementing its attention matmuls/softmax "
    "(matched through the '[ONNX Layer: ...]' metadata) has a kernel (TacticName) or "
    "layer type containing one of " + ", ".join(FUSED_ATTENTION_MARKERS) + " or a "
    "TensorRT-generated name such as _gemm_mha_v2_*; kernel names are not a documented "
    "TensorRT API, so a changed naming reads as 'not fused' or 'unknown', never as fused"
)


def is_fused_attention_layer(layer: LayerInfo) -> bool:
    tactic = layer.tactic.lower()
    layer_type = layer.layer_type.lower()
    if any(m in tactic for m in FUSED_ATTENTION_MARKERS):
        return True
    if any(m in layer_type for m in FUSED_ATTENTION_MARKERS):
        return True
    # the layer name can hold user ONNX names; only TensorRT-style prefixes count
    return bool(_NAME_MARKER_RE.search(layer.name.split("[")[0]))


@dataclass(frozen=True)
class BlockFusion:
    block: int
    status: str  # fused / not_fused / unknown
    layers: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class FusionReport:
    depth: int
    status: str  # fused (every block) / partial / not_fused / unknown
    blocks: tuple[BlockFusion, ...] = ()
    fused_layers: tuple[str, ...] = ()
    reason: str = ""
    heuristic: str = FUSION_HEURISTIC

    @property
    def n_fused(self) -> int:
        return sum(b.status == "fused" for b in self.blocks)

    @property
    def all_fused(self) -> bool:
        return self.status == "fused"

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "depth": self.depth,
            "fused_blocks": self.n_fused,
            "blocks": [
                {"block": b.block, "status": b.status, "layers": list(b.layers), "reason": b.reason}
                for b in self.blocks
            ],
            "fused_layers": list(self.fused_layers),
            "reason": self.reason,
            "heuristic": self.heuristic,
        }


def fusion_report(
    info: EngineInfo, depth: int, core_nodes: Mapping[str, int] | None = None
) -> FusionReport:
    """Per encoder block, whether its attention became one fused kernel.

    ``core_nodes`` maps the ONNX names of each block's attention-core nodes
    (Q·Kᵀ, softmax, P·V) to their block (``attention_core_nodes``); without it,
    the block is read from the node names (``/blocks.3/attn/MatMul``), which works
    for the TorchScript exporter's names only.
    """
    if not info.detailed:
        return FusionReport(
            depth,
            "unknown",
            tuple(BlockFusion(b, "unknown") for b in range(depth)),
            reason="the engine lists layer names only; build with "
            "ProfilingVerbosity.DETAILED to see kernels",
        )

    def blocks_of(layer: LayerInfo) -> set[int]:
        found = set()
        for ref in layer.onnx_refs:
            if core_nodes is not None:
                if ref in core_nodes:
                    found.add(core_nodes[ref])
            else:
                node = NodeInfo(ref, "", ref)
                b = block_index(ref)
                if b is not None and is_attention_core(node):
                    found.add(b)
        return found

    per_block: dict[int, list[LayerInfo]] = {b: [] for b in range(depth)}
    fused_names = []
    for layer in info.layers:
        fused = is_fused_attention_layer(layer)
        if fused:
            fused_names.append(layer.name)
        for b in blocks_of(layer):
            per_block.setdefault(b, []).append(layer)

    blocks = []
    for b in sorted(per_block):
        layers = per_block[b]
        names = tuple(layer.name for layer in layers)
        if any(is_fused_attention_layer(layer) for layer in layers):
            blocks.append(BlockFusion(b, "fused", names))
        elif not layers:
            blocks.append(BlockFusion(b, "unknown", (), "no layer names this block's attention"))
        elif any(layer.layer_type.lower() == "myelin" for layer in layers):
            blocks.append(
                BlockFusion(
                    b, "unknown", names, "inside an opaque Myelin region; kernels not listed"
                )
            )
        else:
            blocks.append(BlockFusion(b, "not_fused", names, "attention runs as separate kernels"))

    n_fused = sum(x.status == "fused" for x in blocks)
    n_not = sum(x.status == "not_fused" for x in blocks)
    if blocks and n_fused == len(blocks):
        status, reason = "fused", ""
    elif n_fused and (n_fused + n_not) == len(blocks):
        status, reason = "partial", f"{n_not} of {len(blocks)} blocks not fused"
    elif n_not and not n_fused:
        status, reason = "not_fused", "no block's attention became a fused kernel"
    elif n_fused:
        status, reason = "partial", "some blocks could not be attributed"
    elif fused_names:
        # fused kernels exist but none maps onto a block (names could not be attributed)
        status = "fused" if len(fused_names) >= depth else "partial"
        reason = (
            f"{len(fused_names)} fused attention kernels for {depth} blocks (counted, not mapped)"
        )
    else:
        status, reason = "unknown", "no attention layer could be attributed to a block"
    return FusionReport(depth, status, tuple(blocks), tuple(fused_names), reason)


def format_fusion_report(report: FusionReport) -> str:
    """A short table, plus a loud warning when attention did not fuse."""
    lines = [f"attention fusion: {report.status} ({report.n_fused}/{report.depth} blocks fused)"]
    for b in report.blocks:
        kernel = next((n for n in b.layers), "")
        detail = b.reason or (kernel[:70] if kernel else "")
        lines.append(f"  block {b.block:>2}  {b.status:<9}  {detail}")
    if report.status != "fused":
        lines.append(
            "WARNING: attention is NOT fused into one MHA kernel in every block "
            f"({report.reason or report.status}). The engine is correct but slower than it "
            "could be. Common causes: fp32 islands (Softmax kept in fp32) split the "
            "MatMul-Softmax-MatMul pattern, or the scale is not applied to Q before Q·Kᵀ."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Environment, the manifest's "engine" section, and the compatibility check
# --------------------------------------------------------------------------------------


def environment(
    tensorrt_version: str | None,
    cuda_version: str | None,
    gpu_name: str | None,
    compute_capability: str | None,
    **extra,
) -> dict:
    """The environment dict an engine is built in / loaded in (plain values, JSON-ready)."""
    env = {
        "tensorrt_version": tensorrt_version,
        "cuda_version": cuda_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    env.update(extra)
    return env


def capture_environment() -> dict:
    """This machine's environment (TensorRT, CUDA, GPU); None where something is missing."""
    trt_version = cuda_version = gpu_name = capability = torch_version = None
    try:
        import tensorrt as trt  # noqa: F401  (lazy: only where installed)

        trt_version = str(trt.__version__)
    except Exception:
        pass
    try:
        import torch

        torch_version = torch.__version__
        cuda_version = torch.version.cuda
        if torch.cuda.is_available():
            gpu_name = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            capability = f"{major}.{minor}"
    except Exception:
        pass
    return environment(trt_version, cuda_version, gpu_name, capability, torch_version=torch_version)


def rebuild_command(section: Mapping) -> str:
    """The exact command that rebuilds the engine described by ``section``."""
    build = section.get("build", {})
    profile = section.get("profile", {})
    args = ["vit-export"]
    if build.get("model"):
        args += ["--model", str(build["model"])]
    args += ["--fmt", "trt", "--precision", str(section.get("precision", "fp16"))]
    if profile:
        args += ["--batch", f"{profile.get('min')}:{profile.get('opt')}:{profile.get('max')}"]
    if build.get("img_size"):
        args += ["--img-size", str(build["img_size"])]
    if build.get("out"):
        args += ["--out", str(build["out"])]
    return shlex.join(args)


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


def check_engine_section(section: Mapping) -> None:
    """Raise ManifestError naming every missing or malformed field of an engine section."""
    if not isinstance(section, Mapping):
        raise ManifestError(f"engine section: expected an object, got {type(section).__name__}")
    fmt = section.get("format")
    if fmt != ENGINE_SECTION_FORMAT:
        raise ManifestError(
            f"engine section: expected format {ENGINE_SECTION_FORMAT!r}, got {fmt!r}"
        )
    needed = ("file", "sha256", "tensorrt_version", "compute_capability", "gpu_name", "profile")
    missing = [k for k in needed if section.get(k) in (None, "")]
    if missing:
        raise ManifestError(f"engine section: missing {', '.join(missing)}")
    BatchProfile.from_dict(section["profile"])


def check_engine_compat(section: Mapping, current_env: Mapping) -> list[str]:
    """What differs between where the engine was built and here (empty: compatible).

    Refused: another TensorRT version (engines are not portable across versions),
    another GPU compute capability, another GPU model. A different CUDA version
    is only informational (TensorRT ships its own CUDA runtime dependencies).
    """
    checks = (
        ("TensorRT version", "tensorrt_version"),
        ("GPU compute capability", "compute_capability"),
        ("GPU", "gpu_name"),
    )
    diffs = []
    for label, key in checks:
        built, here = section.get(key), current_env.get(key)
        if here is None:
            diffs.append(f"{label}: built with {built}, none here")
        elif str(built) != str(here):
            diffs.append(f"{label}: built with {built}, here {here}")
    return diffs


# --------------------------------------------------------------------------------------
# Can TensorRT run here?
# --------------------------------------------------------------------------------------


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


def tensorrt_problems() -> list[str]:
    """What stops TensorRT from running here (empty: nothing)."""
    problems = []
    try:
        import torch

        if not torch.cuda.is_available():
            problems.append("no CUDA GPU (torch.cuda.is_available() is False)")
    except Exception as exc:  # torch is a dependency, but say so if it is broken
        problems.append(f"PyTorch with CUDA is not importable ({exc})")
    try:
        import tensorrt as trt

        version = str(getattr(trt, "__version__", "0"))
        if _version_tuple(version) < MIN_TENSORRT:
            wanted = ".".join(map(str, MIN_TENSORRT))
            problems.append(f"TensorRT {version} is too old (expected >= {wanted})")
    except ImportError as exc:
        problems.append(f"TensorRT is not installed (import tensorrt: {exc})")
    except Exception as exc:  # an installed but broken TensorRT (missing libnvinfer, ...)
        problems.append(f"TensorRT does not load (import tensorrt: {exc})")
    return problems


def unavailable_message(problems: Sequence[str], what: str = "vit-export --fmt trt") -> str:
    return (
        f"{what} needs TensorRT >= {'.'.join(map(str, MIN_TENSORRT))} and a CUDA GPU: "
        + "; ".join(problems)
        + ". What works here instead: vit-export --fmt onnx (ONNX Runtime, CPU or GPU). "
        "To build engines, use a machine with an NVIDIA GPU and "
        "`pip install 'vit-deploy[trt]'`, then run `vit-deploy doctor`."
    )


def require_tensorrt(what: str = "vit-export --fmt trt") -> None:
    """Raise BackendUnavailableError (one line: what is missing, what works instead)."""
    problems = tensorrt_problems()
    if problems:
        raise BackendUnavailableError(unavailable_message(problems, what))


__all__ = [
    "BatchProfile",
    "BlockFusion",
    "Chunk",
    "DEFAULT_FP32_OPS",
    "ENGINE_SECTION_FORMAT",
    "EngineInfo",
    "Fp32Keep",
    "FusionReport",
    "IOTensor",
    "LayerInfo",
    "NodeInfo",
    "TensorDesc",
    "as_profile",
    "attention_core_nodes",
    "block_index",
    "capture_environment",
    "check_engine_compat",
    "check_engine_section",
    "engine_manifest_section",
    "environment",
    "format_fusion_report",
    "fp16_converter",
    "fusion_report",
    "is_fused_attention_layer",
    "next_fp32_keep_list",
    "node_scope",
    "onnx_node_infos",
    "parse_batch_profile",
    "parse_dtype",
    "parse_engine_information",
    "plan_chunks",
    "rebuild_command",
    "require_tensorrt",
    "resolve_fp32_nodes",
    "resolve_precision",
    "structural_scopes",
    "tensorrt_problems",
    "unavailable_message",
]
