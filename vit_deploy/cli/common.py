"""Shared by the command-line tools: model resolution and error reporting.

One exit-code convention for every vit-* tool:

  0  everything asked for was done
  1  the work ran and did not (fully) succeed: a parity or verification failure, an
     export that failed, a partial result (some inputs failed, some cases failed)
  2  bad input or an unusable environment: a bad option, an unknown preset, a missing or
     lying artifact, no images, an output another process is writing, no GPU or library
     for what was asked
  130 interrupted

Errors print one line, ``prog: error: expected X, got Y``; no tracebacks (a traceback
means a bug in vit_deploy).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from vit_deploy.errors import (
    CheckpointError,
    ConfigError,
    ExportError,
    InputDTypeError,
    InputShapeError,
    ViTDeployError,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
USAGE_ERRORS = (ConfigError, CheckpointError, InputShapeError, InputDTypeError)
# the work itself ran and failed (ParityError is one); every other error we raise on purpose
# is bad input or an unusable environment
FAILURE_ERRORS = (ExportError,)


class UsageError(ConfigError):
    """A bad command-line argument."""


def exit_code(exc: BaseException) -> int:
    """1 for a failure of the work (``FAILURE_ERRORS``), 2 for any other error of ours
    (bad input or environment: a backend that is not here, a locked output, a bad
    artifact), 1 for anything else (a bug: it reached no check of ours)."""
    if isinstance(exc, USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(exc, FAILURE_ERRORS):
        return EXIT_FAILURE
    if isinstance(exc, ViTDeployError):
        return EXIT_USAGE
    return EXIT_FAILURE


# Library parameters whose flag is not their own name with dashes.
FLAG_NAMES = {"precisions": "--precision"}


def flag_name(option: str) -> str:
    """A library parameter name as the CLI spells it: ``img_size`` -> ``--img-size``."""
    return FLAG_NAMES.get(option) or "--" + option.replace("_", "-")


def error_text(exc: BaseException) -> str:
    """The message in CLI terms: the library options it is about shown as their flags."""
    if not isinstance(exc, ViTDeployError):
        return str(exc)
    if exc.problems:
        return "; ".join(f"{flag_name(o)}: {d}" if o else d for o, d in exc.problems)
    if exc.option:
        return f"{flag_name(exc.option)}: {exc.detail}"
    return str(exc)


def report_error(prog: str, exc: BaseException) -> int:
    """Print the error (no traceback) and return its exit code."""
    print(f"{prog}: error: {error_text(exc)}", file=sys.stderr)
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


def add_model_argument(parser: argparse.ArgumentParser, *, img_size: bool = False) -> None:
    """``--model`` and the options that change the weights (``ModelSpec``'s fields)."""
    parser.add_argument(
        "--model",
        default=None,
        metavar="PRESET|CHECKPOINT",
        help="a preset name (seeded random weights, with a warning) or a local checkpoint path "
        "(default: the bundled default model)",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="NAME",
        help="the architecture (a preset or known architecture name) for a checkpoint whose "
        "metadata does not say it",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        metavar="N",
        help="attention heads, for a checkpoint whose metadata does not say (shapes cannot)",
    )
    if img_size:
        parser.add_argument(
            "--img-size",
            type=int,
            default=None,
            metavar="N",
            help="run at this resolution (position embedding resampled); a multiple of the "
            "patch size",
        )


def model_spec(args: argparse.Namespace):
    """The ``ModelSpec`` named by ``--model`` and the options ``add_model_argument`` added."""
    from vit_deploy.checkpoints.spec import ModelSpec

    return ModelSpec.parse(
        args.model,
        img_size=getattr(args, "img_size", None),
        config=getattr(args, "config", None),
        num_heads=getattr(args, "num_heads", None),
    )
