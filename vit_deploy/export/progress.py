"""A progress bar over named stages, with per-stage wall time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


class Stages:
    def __init__(self, names: tuple[str, ...], enabled: bool = True, desc: str = "export"):
        self.names = names
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self._bar = tqdm(
            total=len(names),
            desc=desc,
            disable=not enabled,
            bar_format="{desc}: {n}/{total} |{bar:20}| {elapsed} {postfix}",
            leave=False,
        )

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
        self._bar.update(1)

    def skip(self, name: str, reason: str) -> None:
        self.seconds[name] = 0.0
        self.notes[name] = f"skipped: {reason}"
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
