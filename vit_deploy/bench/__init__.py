"""vit-bench's library: one run over backends x precisions x batch sizes.

>>> from vit_deploy.bench import BenchConfig, run_bench, write_all
>>> results = run_bench(BenchConfig(backends=("torch", "ort"), batch_sizes=(1,), iters=5))
>>> write_all(results, "bench_out")   # results.json, results.md, latency_throughput.png

Modules: ``stats`` (percentiles, mean ± std, throughput), ``timing`` (CPU and CUDA-event
timers, the warm-up/repeat loop), ``memory`` (per-case peak RSS / CUDA memory),
``environment``, ``matmul_peak`` (the device's measured peak), ``inputs`` (model and
inputs), ``artifacts`` (--artifacts), ``backends`` (the registry), ``runner``, ``report``
(table, JSON schema, markdown, plot).
"""

from vit_deploy.bench.config import BenchConfig
from vit_deploy.bench.report import format_table, write_all
from vit_deploy.bench.runner import SCHEMA_VERSION, prepare, run_bench

__all__ = ["SCHEMA_VERSION", "BenchConfig", "format_table", "prepare", "run_bench", "write_all"]
