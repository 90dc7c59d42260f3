"""Shared by the command-line tools: model resolution and error reporting.

Errors the user can fix (a bad option, an unknown preset, a missing file) print one
line, ``prog: error: expected X, got Y``, and exit 2. Failures of the work itself
(a parity gate, a backend that is not here) exit 1, with their table when they have
one. No tracebacks for either; a traceback means a bug in vit_deploy.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vit_deploy.errors import (
    CheckpointError,
    ConfigError,
    InputDTypeError,
    InputShapeError,
    ViTDeployError,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
USAGE_ERRORS = (ConfigError, CheckpointError, InputShapeError, InputDTypeError)


class UsageError(ConfigError):
    """A bad command-line argument."""


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, USAGE_ERRORS):
        return EXIT_USAGE
    return EXIT_FAILURE


def report_error(prog: str, exc: BaseException) -> int:
    """Print the error (no traceback) and return its exit code."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return exit_code(exc)


def run_main(prog: str, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except ViTDeployError as exc:
        return report_error(prog, exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class _LineFormatter(logging.Formatter):
    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prog}: {record.levelname.lower()}: {record.getMessage()}"


def configure_logging(prog: str, verbose: bool = False) -> None:
    """Our warnings on stderr as ``prog: warning: ...``; library chatter muted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(prog))
    root = logging.getLogger("vit_deploy")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="PRESET|CHECKPOINT",
        help="a preset name (random weights, with a warning) or a checkpoint path "
        "(default: the bundled default model)",
    )


@dataclass
class ResolvedModel:
    model: object  # VisionTransformer
    description: str
    name: str  # short, for default output paths
    warning: str | None = None


def check_img_size(img_size: int | None, patch_size: int) -> None:
    if img_size is None:
        return
    if img_size <= 0 or img_size % patch_size:
        raise UsageError(
            f"--img-size: expected a positive multiple of the patch size {patch_size}, "
            f"got {img_size}"
        )


def resolve_model(
    spec: str | None, *, img_size: int | None = None, attention: str = "math"
) -> ResolvedModel:
    """``--model``: None (the bundled default), a preset name, or a checkpoint path.
    ``img_size`` resamples the position embedding to a new resolution."""
    from vit_deploy.config import PRESETS

    if img_size is not None and img_size <= 0:
        raise UsageError(f"--img-size: expected a positive int, got {img_size}")
    if spec is None:
        from vit_deploy.assets import load_default_model

        model = load_default_model(attention=attention)
        if img_size is not None and img_size != model.config.img_size:
            check_img_size(img_size, model.config.patch_size)
            model = load_default_model(attention=attention, img_size=img_size)
        return ResolvedModel(model, "the bundled default model", "default")
    if spec in PRESETS:
        from vit_deploy.model.vit import create_model

        check_img_size(img_size, PRESETS[spec].patch_size)
        overrides = {"img_size": img_size} if img_size else {}
        model = create_model(spec, attention=attention, **overrides)
        warning = (
            f"{spec} is a preset without weights: exporting random weights; pass a checkpoint "
            "path to export a trained model"
        )
        return ResolvedModel(model, f"preset {spec} (random weights)", spec, warning)
    path = Path(spec)
    if not path.exists():
        close = difflib.get_close_matches(spec, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"--model: expected a preset name ({', '.join(sorted(PRESETS))}) or a checkpoint "
            f"path, got {spec!r} (no such preset, file or directory){hint}"
        )
    from vit_deploy.checkpoints.load import load_model

    model = load_model(path, attention=attention)
    if img_size is not None and img_size != model.config.img_size:
        check_img_size(img_size, model.config.patch_size)
        model = load_model(path, attention=attention, img_size=img_size)
    name = path.stem if path.is_file() else path.name
    return ResolvedModel(model, f"checkpoint {spec}", name or "model")
