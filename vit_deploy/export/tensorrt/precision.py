"""Precision of a TensorRT engine: which nodes stay in fp32, and how that escalates.

Precision in TensorRT 11 (and in 10.12+ with the STRONGLY_TYPED network flag) lives in
the ONNX graph: every tensor has the type the graph gives it, and the builder never
picks a precision on its own. So "fp16 that keeps accuracy" is decided when the ONNX
file is written (which nodes stay in fp32), verified on ONNX Runtime, and verified
again on the engine. This module holds those decisions, without TensorRT:

- ``resolve_precision``: the precision to export at (per-format defaults);
- ``Fp32Keep`` / ``next_fp32_keep_list``: the fp32 keep list and its escalation
  after a failed parity gate;
- ``resolve_fp32_nodes``: the node names a keep list holds in fp32 (blocks and
  attention nodes are found by ``trt_graph``);
- ``escalate_after_failure``: the escalation as the export applies it to a graph, or
  the ParityError that ends it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vit_deploy.errors import ConfigError, ParityError
from vit_deploy.export.options import DEFAULT_FP32_OPS as _ONNX_DEFAULT_FP32_OPS
from vit_deploy.export.options import PRECISIONS  # one list for every format
from vit_deploy.export.tensorrt.graph import NodeInfo, block_index, is_attention_matmul

log = logging.getLogger("vit_deploy.export.trt")

DEFAULT_PRECISION = {"onnx": "fp32", "trt": "fp16"}


def resolve_precision(fmt: str, precision: str | None) -> str:
    """The precision to export at: as given, or the format's default (trt: fp16, onnx: fp32)."""
    if precision is None:
        if fmt not in DEFAULT_PRECISION:
            raise ConfigError(f"--fmt: expected one of {sorted(DEFAULT_PRECISION)}, got {fmt!r}")
        return DEFAULT_PRECISION[fmt]
    if precision not in PRECISIONS:
        raise ConfigError(f"expected one of {PRECISIONS}, got {precision!r}", option="precision")
    if fmt == "trt" and precision == "int8":
        # the QDQ ONNX is written and gated (vit-export --fmt onnx --precision int8); the
        # strongly typed INT8 engine built from it is not implemented yet: refuse, not guess
        raise ConfigError(
            "expected fp32 or fp16 for a TensorRT engine, got 'int8'; export the QDQ model "
            "with --fmt onnx --precision int8 and build it with trtexec --stronglyTyped",
            option="precision",
        )
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


def escalate_after_failure(keep, nodes, infos, depth, attempt, auto_repair, gate=None, report=None):
    """The next keep list (and its node names) after a failed attempt, or ParityError.

    ``infos``: the fp32 graph's nodes (``trt_graph``), where the next keep list's node
    names are resolved; ``attempt``: the failed attempt's record, quoted in the error."""
    nxt = next_fp32_keep_list(keep) if auto_repair else None
    if nxt is not None and infos is not None:
        next_nodes = resolve_fp32_nodes(nxt, infos, depth)
        # a step that adds nothing on this graph (no attention matmuls found): skip it
        while nxt is not None and not nxt.all_fp32 and next_nodes == nodes:
            nxt = next_fp32_keep_list(nxt)
            next_nodes = resolve_fp32_nodes(nxt, infos, depth) if nxt else nodes
    else:
        next_nodes = nodes
    if nxt is None:
        why = (
            "auto-repair is off (--no-auto-repair)"
            if not auto_repair
            else "no fp32 escalation left"
        )
        message = (
            f"the TensorRT engine failed its parity gate with fp32 kept: {keep.name} ({why}); "
            f"attempts: {attempt.get('engine_parity') or attempt.get('onnx_parity')}"
        )
        if gate is not None and report is not None:
            message += "\n" + gate.failure_table() + "\nmeasured:\n" + report.table()
        error = ParityError(message)
        error.report, error.gate = report, gate
        raise error
    log.warning(
        "parity failed with fp32 kept: %s; re-exporting with more in fp32: %s", keep.name, nxt.name
    )
    return nxt, next_nodes


__all__ = [
    "DEFAULT_FP32_OPS",
    "DEFAULT_PRECISION",
    "Fp32Keep",
    "PRECISIONS",
    "escalate_after_failure",
    "next_fp32_keep_list",
    "resolve_fp32_nodes",
    "resolve_precision",
]
