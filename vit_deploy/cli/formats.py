"""The export formats ``vit-export --fmt`` offers, registered in one place.

A format names its exporter as ``"module:function"`` (imported only when used) with
the signature ``fn(model, args, *, source, stages) -> ExportResult``, where ``args``
is the parsed ``vit-export`` namespace. ``available()`` returns None when the format
can run here, else the one-line reason it cannot; ``arguments`` optionally names a
function that adds the format's own options to the parser. To add a format
call ``register_format``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from vit_deploy.errors import BackendUnavailableError, ConfigError


def _always() -> str | None:
    return None


@dataclass(frozen=True)
class ExportFormat:
    name: str
    help: str
    exporter: str | None  # "module:function"
    available: Callable[[], str | None] = _always
    # "module:function" taking the argparse parser, to add this format's own options
    arguments: str | None = None
    # "module:function" taking the parsed args and returning the exit code: a format made
    # from an exported artifact, not a model, runs the whole command itself
    command: str | None = None

    def load(self) -> Callable:
        reason = self.available()
        if reason is not None or self.exporter is None:
            raise BackendUnavailableError(reason or f"{self.name} export is not implemented")
        return _resolve(self.exporter)

    def run_command(self, args) -> int:
        return _resolve(self.command)(args)

    def add_arguments(self, parser) -> None:
        if self.arguments is not None:
            _resolve(self.arguments)(parser)


def _resolve(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _tensorrt_unavailable() -> str | None:
    from vit_deploy.cli.export_trt import trt_unavailable_reason

    return trt_unavailable_reason()


FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> None:
    FORMATS[fmt.name] = fmt


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ConfigError(f"--fmt: expected one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name]


register_format(
    ExportFormat(
        "onnx",
        "ONNX (fp32 or fp16 with fp32 I/O) for ONNX Runtime, and the TensorRT source",
        "vit_deploy.cli.export:export_onnx_from_args",
    )
)
register_format(
    ExportFormat(
        "trt",
        "TensorRT engine (fp16 by default), built from the verified ONNX of the same precision",
        "vit_deploy.cli.export_trt:export_trt_from_args",
        _tensorrt_unavailable,
        arguments="vit_deploy.cli.export_trt:add_trt_arguments",
    )
)
register_format(
    ExportFormat(
        "triton",
        "Triton Inference Server model repository entry from an onnx or trt artifact (--from)",
        None,
        arguments="vit_deploy.cli.export_triton:add_triton_arguments",
        command="vit_deploy.cli.export_triton:export_triton_from_args",
    )
)
