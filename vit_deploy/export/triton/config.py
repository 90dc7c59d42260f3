"""``config.pbtxt`` for Triton Inference Server, from an artifact's manifest.

Written as protobuf text format by hand (no tritonclient at export time); the tests
parse it with Triton's own ``ModelConfig`` message. Field names follow
``model_config.proto``: ``platform``, ``max_batch_size``, ``input``/``output``
(dims without the batch axis: with ``max_batch_size > 0`` Triton adds it),
``dynamic_batching`` and ``instance_group``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vit_deploy.errors import ArtifactError

# manifest artifact format -> (Triton platform, the file name Triton loads by default)
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "trt": ("tensorrt_plan", "model.plan")}
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class TritonModelConfig:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, TYPE_*, dims)
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    preferred_batch_sizes: tuple[int, ...]
    queue_delay_us: int
    kind: str  # KIND_CPU | KIND_GPU
    instances: int

    def to_pbtxt(self, header: str = "") -> str:
        lines = [f"# {line}" for line in header.splitlines()]
        lines += [
            f"name: {_quote(self.name)}",
            f"platform: {_quote(self.platform)}",
            f"max_batch_size: {self.max_batch_size}",
            *_tensors("input", self.inputs),
            *_tensors("output", self.outputs),
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]",
            f"  max_queue_delay_microseconds: {self.queue_delay_us}",
            "}",
            "instance_group [",
            f"  {{ count: {self.instances} kind: {self.kind} }}",
            "]",
        ]
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text string for our names


def _tensors(field: str, specs) -> list[str]:
    out = [f"{field} ["]
    for i, (name, dtype, dims) in enumerate(specs):
        comma = "," if i < len(specs) - 1 else ""
        out += [
            "  {",
            f"    name: {_quote(name)}",
            f"    data_type: {dtype}",
            f"    dims: [ {', '.join(map(str, dims))} ]",
            f"  }}{comma}",
        ]
    return [*out, "]"]


def tensor_specs(entries: list[dict], what: str) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Manifest I/O entries -> (name, TYPE_*, dims without the batch axis)."""
    specs = []
    for entry in entries:
        shape = list(entry.get("shape", []))
        if not shape or isinstance(shape[0], int):
            raise ArtifactError(
                f"{what} {entry.get('name')!r}: expected a symbolic batch axis first "
                f"(shape ['batch', ...]), got shape {shape}; Triton batches along it"
            )
        dims = shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ArtifactError(
                f"{what} {entry.get('name')!r}: expected fixed dims after the batch axis, "
                f"got {dims}"
            )
        dtype = DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise ArtifactError(
                f"{what} {entry.get('name')!r}: expected a dtype in {sorted(DTYPES)}, "
                f"got {entry.get('dtype')!r}"
            )
        specs.append((str(entry["name"]), dtype, tuple(dims)))
    return tuple(specs)


def preferred_sizes(opt: int, max_batch_size: int) -> tuple[int, ...]:
    """The profile's OPT (what the engine is tuned for) and the largest batch allowed."""
    return tuple(sorted({min(opt, max_batch_size), max_batch_size}))


__all__ = ["DTYPES", "KINDS", "PLATFORMS", "TritonModelConfig", "preferred_sizes", "tensor_specs"]
