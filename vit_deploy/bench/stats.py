"""Summary statistics of repeated timings: percentiles, mean ± std, throughput, FLOP/s.

Pure functions over lists of seconds, so they are tested against numpy on known data.
Percentiles interpolate linearly between order statistics (numpy's default method);
``std`` is the sample standard deviation (ddof=1; 0 for a single timing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vit_deploy.errors import ConfigError

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the two nearest ranks."""
    if not values:
        raise ConfigError("percentile: expected at least one value, got none")
    if not 0 <= q <= 100:
        raise ConfigError(f"percentile: expected q in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one value)."""
    if not values:
        raise ConfigError("mean_std: expected at least one value, got none")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


def latency_summary(times_s: Sequence[float]) -> dict[str, float]:
    """Milliseconds: p50, p90, p99, mean, std, min, max of per-iteration times in seconds."""
    ms = [t * 1e3 for t in times_s]
    mean, std = mean_std(ms)
    summary = {f"p{q}": percentile(ms, q) for q in PERCENTILES}
    summary.update(mean=mean, std=std, min=min(ms), max=max(ms))
    return summary


def throughput_ips(batch_size: int, times_s: Sequence[float]) -> float:
    """Images per second: every image timed over the total time (= batch / mean latency)."""
    total = math.fsum(times_s)
    if total <= 0:
        raise ConfigError(f"throughput: expected a positive total time, got {total} s")
    return batch_size * len(times_s) / total


def gflops_per_s(flops_per_image: float, images_per_s: float) -> float:
    return flops_per_image * images_per_s / 1e9


def spread_pct(values: Sequence[float]) -> float:
    """(max - min) / min in percent: how far apart repeated measurements landed."""
    if not values:
        raise ConfigError("spread: expected at least one value, got none")
    lo = min(values)
    if lo <= 0:
        raise ConfigError(f"spread: expected positive values, got min {lo}")
    return (max(values) - lo) / lo * 100.0
