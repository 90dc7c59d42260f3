"""PyTorch -> ONNX graph: ``torch.onnx.export(dynamo=True)`` with a symbolic batch axis.

The graph takes ``pixels`` (batch, C, S, S) float32 and returns ``logits`` and/or
``embedding``. By default it is exported from a copy of the model that uses the
reference ``math`` attention (same weights), so the graph holds the plain
MatMul -> Softmax -> MatMul pattern whatever attention the model was built with; a
``triton`` model can also be exported as built, through ``attention_onnx``, and at opset
23 the SDPA path exports as one ONNX ``Attention`` op per block.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from onnx import helper
from torch import nn

from vit_deploy.errors import ExportError
from vit_deploy.export.onnx.attention_op import custom_translation_table
from vit_deploy.export.options import BATCH_AXIS, INPUT_NAME, OnnxExportOptions
from vit_deploy.model.vit import VisionTransformer

log = logging.getLogger(__name__)
MAX_TRACED_BATCH = 2048


class _ExportWrapper(nn.Module):
    """forward(pixels) -> the named outputs, in order."""

    def __init__(self, model: VisionTransformer, output_names: list[str]):
        super().__init__()
        self.model = model
        self.output_names = list(output_names)

    def forward(self, pixels: torch.Tensor):
        logits, embedding = self.model.forward_all(pixels)
        named = {"logits": logits, "embedding": embedding}
        return tuple(named[n] for n in self.output_names)


def export_copy(model: VisionTransformer, attention: str) -> VisionTransformer:
    """The model to trace: on the CPU, no data-dependent finite check, with the given
    attention path; shares the weights (no copy) when the model already fits."""
    device = next(model.parameters()).device
    if model.attention == attention and not model.check_finite and device.type == "cpu":
        return model.eval()
    with torch.device("meta"):  # no memory, no random init: the weights come next
        clone = VisionTransformer(model.config, attention=attention, check_finite=False)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    clone.load_state_dict(state, assign=True)
    return clone.eval()


def export_onnx(model: VisionTransformer, options: OnnxExportOptions) -> onnx.ModelProto:
    """The fp32 ONNX graph of ``model`` (not yet converted, optimised or verified)."""
    cfg = model.config
    output_names = options.output_names(cfg.num_classes)
    attention = {"math": "math", "native": model.attention, "onnx-attention": "sdpa"}[
        options.attention
    ]
    traced = _ExportWrapper(export_copy(model, attention), output_names).eval()
    table = custom_translation_table() if attention == "triton" else {}
    if attention == "triton" and not table:
        raise ExportError(
            "attention='triton': expected the custom op torch.ops.vit_deploy.attention to be "
            "registered (vit_deploy.kernels.attention), found none; export with attention='math'"
        )
    # batch 2, not 1: torch.export specialises a dimension of size 1 to a constant
    sample = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    # A bounded range: code that guards on the batch (the Triton op checks batch * heads
    # fits its grid) needs one. The ONNX graph does not record it; it takes any batch.
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=max(MAX_TRACED_BATCH, options.batch.max))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                traced,
                (sample,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=output_names,
                opset_version=options.opset,
                dynamic_shapes={INPUT_NAME: {0: batch}},
                custom_translation_table=table or None,
                optimize=True,
                verbose=False,
            )
            proto = program.model_proto
    except Exception as exc:  # the exporter raises many types; all mean "no graph"
        raise ExportError(
            f"torch.onnx.export (dynamo) failed: {type(exc).__name__}: {exc}"
        ) from exc
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset != options.opset:  # torch converts from its own opset and may keep its own
        raise ExportError(
            f"opset: expected the graph at opset {options.opset}, the exporter wrote {opset}"
        )
    _name_batch_axis(proto.graph)
    _decouple_outputs(proto.graph)
    _strip_node_metadata(proto.graph)
    got = [o.name for o in proto.graph.output]
    if got != output_names:
        raise ExportError(f"exported outputs: expected {output_names}, got {got}")
    return proto


def _name_batch_axis(graph: onnx.GraphProto) -> None:
    """Dim 0 of every input and output is the symbolic ``batch``; anything else is a bug."""
    for value in [*graph.input, *graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            raise ExportError(
                f"{value.name}: expected a symbolic batch dimension, got a fixed {dim.dim_value}"
            )
        dim.dim_param = BATCH_AXIS


def _decouple_outputs(graph: onnx.GraphProto) -> None:
    """A graph output that other nodes also read (``embedding`` feeds the head) gets its
    own Identity node, so the output can change dtype (fp16 ``keep_io_types``) or be
    marked as an engine output without changing what the inner nodes read."""
    outputs = {o.name for o in graph.output}
    read = {name for node in graph.node for name in node.input}
    for name in sorted(outputs & read):
        inner = f"{name}__inner"
        for node in graph.node:
            node.input[:] = [inner if i == name else i for i in node.input]
            node.output[:] = [inner if o == name else o for o in node.output]
        graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}_output"))


def _strip_node_metadata(graph: onnx.GraphProto) -> None:
    """Drop per-node stack traces and local paths the exporter records."""
    for node in graph.node:
        del node.metadata_props[:]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        del value.metadata_props[:]
