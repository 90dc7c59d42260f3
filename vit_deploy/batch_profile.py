"""The batch profile ``MIN:OPT:MAX``, shared by the ONNX export and TensorRT engines.

The ONNX graph takes any batch (a symbolic ``batch`` axis) and records the profile in
its manifest; a TensorRT engine is built for it (its optimisation profile) and accepts
only batches in ``MIN..MAX``. A batch outside the profile is split into chunks at
run time (``plan_chunks``).

One parser, ``BatchProfile.parse``, for every format and tool: it also refuses a single
number, which could mean two different engines. Its errors are about the ``batch`` option
(a CLI shows ``--batch``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vit_deploy.errors import ConfigError, ManifestError


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (min..max) and the one it is tuned for (opt)."""

    min: int = 1
    opt: int = 8
    max: int = 32

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

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
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
                f"expected MIN:OPT:MAX, got {raw!r}; a single number is ambiguous: write "
                f"{n}:{n}:{n} for a static batch of {n} or 1:{n}:{n} for any batch up to {n}",
                option="batch",
            )
        try:
            values = [int(p.strip()) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise ConfigError(
                f"expected MIN:OPT:MAX as three positive ints (e.g. 1:8:32), got {raw!r}",
                option="batch",
            )
        try:
            return cls(*values)
        except ConfigError:
            raise ConfigError(
                f"expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {raw!r}", option="batch"
            ) from None

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


def as_profile(value) -> BatchProfile:
    """A BatchProfile from "MIN:OPT:MAX", a BatchProfile, or anything with min/opt/max."""
    if isinstance(value, BatchProfile):
        return value
    if isinstance(value, str):
        return BatchProfile.parse(value)
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


__all__ = ["BatchProfile", "Chunk", "as_profile", "plan_chunks"]
