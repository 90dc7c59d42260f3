"""What a benchmark run is asked to do, checked before anything long starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vit_deploy.bench.timing import check_budget
from vit_deploy.errors import ConfigError
from vit_deploy.export.options import PRECISIONS as EXPORT_PRECISIONS

# the export precisions, and bf16: an OpenVINO inference hint on the fp32 artifact
PRECISIONS = (*EXPORT_PRECISIONS, "bf16")

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SECONDS = 1.0
DEFAULT_WARMUP = 3


@dataclass(frozen=True)
class BenchConfig:
    """One ``vit-bench`` run. ``backends=None`` means every registered backend: those that
    cannot run here are then skipped with the reason; a backend named explicitly that
    cannot run here is an error (``BackendUnavailableError``) instead."""

    # a ModelSpec, or what ModelSpec.parse takes: preset, checkpoint path, None (the default)
    model: object = None
    backends: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = PRECISIONS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    img_size: int | None = None
    warmup: int = DEFAULT_WARMUP
    iters: int | None = None  # a fixed count per case ...
    seconds: float | None = DEFAULT_SECONDS  # ... or a wall-clock budget per case
    threads: int | None = None  # None: PyTorch's default, given to ONNX Runtime too
    repeats: int = 1  # timed rounds per case (their p50s give the run-to-run spread)
    out: str = "bench_out"
    artifacts: tuple[str, ...] = ()
    parity_samples: int | None = None  # None: the whole held-out set / the verifier's count
    matmul_sizes: tuple[int, ...] | None = None  # None: matmul_peak's defaults

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_config(cfg: BenchConfig, known_backends) -> None:
    """One ConfigError listing every problem (unknown names, empty lists, bad budgets)."""
    problems = []
    known = list(known_backends)
    if cfg.backends is not None:
        if not cfg.backends:
            problems.append(("backends", f"expected at least one of {known}, got none"))
        unknown = [b for b in cfg.backends if b not in known]
        if unknown:
            problems.append(("backends", f"unknown {unknown}; expected some of {known}"))
    if not cfg.precisions:
        problems.append(("precisions", f"expected at least one of {list(PRECISIONS)}, got none"))
    unknown = [p for p in cfg.precisions if p not in PRECISIONS]
    if unknown:
        problems.append(("precisions", f"unknown {unknown}; expected some of {list(PRECISIONS)}"))
    if not cfg.batch_sizes:
        problems.append(("batch_sizes", "expected at least one batch size, got none"))
    bad = [b for b in cfg.batch_sizes if not _positive_int(b)]
    if bad:
        problems.append(("batch_sizes", f"expected positive ints, got {bad}"))
    try:
        check_budget(cfg.warmup, cfg.iters, cfg.seconds)
    except ConfigError as exc:
        problems += exc.problems
    for name in ("threads", "parity_samples"):
        value = getattr(cfg, name)
        if value is not None and not _positive_int(value):
            problems.append((name, f"expected a positive int, got {value!r}"))
    if not _positive_int(cfg.repeats):
        problems.append(("repeats", f"expected a positive int, got {cfg.repeats!r}"))
    if problems:
        raise ConfigError(problems=problems)
