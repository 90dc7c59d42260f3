"""Run every case (backend x precision x batch size) and collect one results dict.

Order of work: every option, artifact and explicitly requested backend is checked
first (typed errors, nothing long has started); then the environment and the
device's matmul peak are measured, the inputs and the PyTorch fp32 reference outputs
(reference ``math`` attention) computed once; then, per backend and precision, the
backend is loaded (exporting an artifact first if none was given) and every batch size
timed and compared with the reference. A backend that fails to load fails its cases;
a case that raises is recorded as failed with the error; the other cases go on and are
kept. The results dict follows ``report.SCHEMA`` (see that module's docstring).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vit_deploy.bench import environment, stats
from vit_deploy.bench.artifacts import ArtifactInfo, check_artifacts, read_artifact
from vit_deploy.bench.backends import REGISTRY, BackendSpec, Loaded
from vit_deploy.bench.config import PRECISIONS, BenchConfig, check_config
from vit_deploy.bench.inputs import NO_LABELS, BenchInputs, build_inputs
from vit_deploy.bench.matmul_peak import best_of, device_peaks
from vit_deploy.bench.memory import PeakMemory
from vit_deploy.bench.timing import Budget, measure
from vit_deploy.checkpoints.spec import ModelSpec
from vit_deploy.errors import BackendUnavailableError

SCHEMA_VERSION = 1
REFERENCE = {"backend": "torch", "precision": "fp32", "attention": "math"}


@dataclass(frozen=True)
class Case:
    backend: str
    precision: str
    batch_size: int
    skip_reason: str | None = None


@dataclass
class BenchContext:
    """What loaders need: the model source, device, threads, artifacts, output directory."""

    config: BenchConfig
    source: ModelSpec
    device: str
    threads: int | None
    explicit_backends: frozenset[str]
    artifacts: list[ArtifactInfo]
    reference_model: object = None
    artifact_log: list[dict] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.config.batch_sizes)))

    def artifact_for(self, backend: str, precision: str) -> Path | None:
        for a in self.artifacts:
            if (a.backend, a.precision) == (backend, precision):
                self.record_artifact(backend, precision, a.path, exported=False, seconds=None)
                return a.path
        return None

    def record_artifact(self, backend, precision, path, *, exported, seconds) -> None:
        self.artifact_log.append(
            {
                "backend": backend,
                "precision": precision,
                "path": str(path),
                "exported": exported,
                "export_s": None if seconds is None else round(seconds, 3),
            }
        )


def prepare(cfg: BenchConfig, registry: dict[str, BackendSpec]) -> BenchContext:
    """Every check that can fail fast; loads the reference model last."""
    import torch

    check_config(cfg, registry)
    source = (
        cfg.model
        if isinstance(cfg.model, ModelSpec)
        else ModelSpec.parse(cfg.model, img_size=cfg.img_size)
    )
    artifacts = [read_artifact(p) for p in cfg.artifacts]
    check_artifacts(artifacts, cfg.batch_sizes, None)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    ctx = BenchContext(
        config=cfg,
        source=source,
        device="cuda" if torch.cuda.is_available() else "cpu",
        threads=cfg.threads or torch.get_num_threads(),
        explicit_backends=frozenset(cfg.backends or ()),
        artifacts=artifacts,
    )
    for name in ctx.explicit_backends:
        reason = registry[name].unavailable(ctx)
        if reason:
            raise BackendUnavailableError(f"{name} cannot run here: {reason}", option="backends")
    ctx.reference_model = source.load(attention="math")
    check_artifacts(artifacts, cfg.batch_sizes, ctx.reference_model.config)
    return ctx


def plan_cases(ctx: BenchContext, registry: dict[str, BackendSpec]) -> list[Case]:
    names = [n for n in registry if ctx.config.backends is None or n in ctx.config.backends]
    precisions = [p for p in PRECISIONS if p in ctx.config.precisions]
    cases = []
    for name in names:
        spec = registry[name]
        down = spec.unavailable(ctx)
        for precision in precisions:
            if down:
                reason = f"unavailable here: {down}"
            elif precision not in spec.precisions:
                reason = f"{name} has no {precision} path"
            else:
                reason = spec.skip(ctx, precision)
            cases.extend(Case(name, precision, b, reason) for b in ctx.batch_sizes)
    return cases


def empty_record(case: Case) -> dict:
    """A case with every schema key present (numbers None until measured)."""
    return {
        "backend": case.backend,
        "precision": case.precision,
        "batch_size": case.batch_size,
        "status": "skipped" if case.skip_reason else "ok",
        "reason": case.skip_reason,
        "error": None,
        "device": None,
        "timer": None,
        "timing_valid": None,
        "iterations": None,
        "latency_ms": None,
        "p50_rounds_ms": None,
        "p50_spread_pct": None,
        "throughput_ips": None,
        "speedup_vs_torch_fp32": None,
        "load_s": None,
        "peak_mem_mb": None,
        "memory": None,
        "others_cpu_pct": None,
        "gflops_per_s": None,
        "frac_of_peak": None,
        "peak_ref": None,
        "parity": None,
        "accuracy": None,
        "accuracy_note": None,
        "notes": [],
    }


def run_padded(backend, pixels: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Every row's outputs with every call at the case's batch size."""
    from vit_deploy.runtime.base import run_batched

    return run_batched(backend, pixels, batch, pad=True)


def parity_fields(report) -> dict:
    """The schema's parity dict: headline numbers from ``logits`` (else ``embedding``)."""
    d = report.to_dict()
    head = "logits" if "logits" in report.outputs else next(iter(report.outputs))
    o = report.outputs[head]
    return {
        "output": head,
        "samples": report.samples,
        "cosine_min": o.cosine_min,
        "cosine_mean": o.cosine_mean,
        "max_abs_diff": o.max_abs_diff,
        "p99_abs_diff": o.p99_abs_diff,
        "top1_agreement": o.top1_agreement,
        "outputs": d["outputs"],
    }


def accuracy_of(outputs: dict, labels: np.ndarray | None, n_total: int) -> tuple:
    """(accuracy or None, note or None)."""
    if labels is None:
        return None, NO_LABELS
    if "logits" not in outputs:
        return None, "n/a: the model has no classification head"
    n = len(outputs["logits"])
    if n < n_total:
        return None, f"n/a: parity ran on {n} of {n_total} labeled images only"
    return float((outputs["logits"].argmax(axis=1) == labels).mean()), None


def run_case(
    ctx: BenchContext,
    case: Case,
    loaded: Loaded,
    load_s: float,
    inputs: BenchInputs,
    reference: dict,
    peaks: dict,
) -> dict:
    from vit_deploy.export.parity import compare_outputs

    cfg = ctx.config
    rec = empty_record(case)
    rec.update(device=loaded.device, timer=loaded.timer.name, load_s=round(load_s, 4))
    rec["timing_valid"] = loaded.timing_valid
    rec["notes"] = list(loaded.notes)
    x = np.ascontiguousarray(inputs.timing[: case.batch_size])
    call = loaded.timed_call(x)
    if loaded.timing_valid:
        budgets = [
            Budget(cfg.warmup if r == 0 else 0, cfg.iters, cfg.seconds) for r in range(cfg.repeats)
        ]
    else:  # correctness only: one call, no warm-up, one round
        budgets = [Budget(0, 1, None)]
    memory, others = PeakMemory(loaded.device).start(), environment.OtherProcesses().start()
    rounds = [measure(call, budget, loaded.timer) for budget in budgets]
    rec.update(memory.stop())
    rec["others_cpu_pct"] = others.stop()
    times = [t for r in rounds for t in r]
    rec["iterations"] = len(times)
    rec["latency_ms"] = stats.latency_summary(times)
    rec["p50_rounds_ms"] = [stats.percentile(r, 50) * 1e3 for r in rounds]
    rec["p50_spread_pct"] = stats.spread_pct(rec["p50_rounds_ms"])
    ips = stats.throughput_ips(case.batch_size, times)
    rec["throughput_ips"] = ips
    rec["gflops_per_s"] = stats.gflops_per_s(ctx.reference_model.config.flops_per_image(), ips)
    key = f"{loaded.device}_{case.precision}"
    rec["peak_ref"] = key if key in peaks else f"{loaded.device}_fp32"

    pixels = inputs.parity
    if loaded.parity_limit is not None:
        pixels = pixels[: loaded.parity_limit]
    outputs = run_padded(loaded.backend, pixels, case.batch_size)
    names = [n for n in outputs if n in reference]
    report = compare_outputs({n: reference[n][: len(pixels)] for n in names}, outputs)
    rec["parity"] = parity_fields(report)
    labels = None if inputs.labels is None else inputs.labels[: len(pixels)]
    rec["accuracy"], rec["accuracy_note"] = accuracy_of(outputs, labels, len(inputs.parity))
    return rec


def failed_record(case: Case, exc: BaseException, stage: str) -> dict:
    rec = empty_record(case)
    message = str(exc).strip() or "(no message)"
    rec.update(status="failed", error=f"{type(exc).__name__} during {stage}: {message}")
    return rec


def _load(spec: BackendSpec, ctx: BenchContext, precision: str) -> tuple[Loaded, float]:
    exported_before = sum(a["export_s"] or 0 for a in ctx.artifact_log)
    start = time.perf_counter()
    loaded = spec.load(ctx, precision)
    elapsed = time.perf_counter() - start
    exported = sum(a["export_s"] or 0 for a in ctx.artifact_log) - exported_before
    return loaded, loaded.load_s if loaded.load_s is not None else elapsed - exported


def add_peak_fractions(records: list[dict], peaks: dict) -> None:
    for r in records:
        if r["status"] == "ok" and r["peak_ref"] in peaks:
            r["frac_of_peak"] = r["gflops_per_s"] / peaks[r["peak_ref"]]["gflops_per_s"]


def add_speedups(records: list[dict]) -> None:
    """p50 of torch fp32 / p50 of this case, at the same batch size (same run)."""
    base = {
        r["batch_size"]: r["latency_ms"]["p50"]
        for r in records
        if (r["backend"], r["precision"], r["status"]) == ("torch", "fp32", "ok")
        and r["timing_valid"]
    }
    for r in records:
        if r["status"] == "ok" and r["timing_valid"] and r["batch_size"] in base:
            r["speedup_vs_torch_fp32"] = base[r["batch_size"]] / r["latency_ms"]["p50"]


def run_bench(
    cfg: BenchConfig,
    registry: dict[str, BackendSpec] | None = None,
    progress: bool = True,
    ctx: BenchContext | None = None,
) -> dict:
    """Run the benchmark; return the results dict (write it with ``report.write_all``).
    ``ctx``: from ``prepare(cfg, registry)`` when the caller checked the request first."""
    from tqdm import tqdm

    from vit_deploy.export.verify import reference_outputs
    from vit_deploy.runtime.base import default_output_names

    registry = dict(registry or REGISTRY)
    started = time.perf_counter()
    ctx = ctx or prepare(cfg, registry)
    cases = plan_cases(ctx, registry)
    env = environment.collect()
    model_cfg = ctx.reference_model.config
    with tqdm(total=3, desc="matmul peak", disable=not progress, leave=False) as bar:
        peaks = device_peaks(ctx.device == "cuda", cfg.matmul_sizes)
        bar.update()
        bar.set_description("inputs")
        inputs = build_inputs(ctx.source, model_cfg, max(ctx.batch_sizes), cfg.parity_samples)
        bar.update()
        bar.set_description("reference outputs")
        names = default_output_names(model_cfg)
        reference = reference_outputs(ctx.reference_model, inputs.parity, names)
        bar.update()
    ref_acc, ref_note = accuracy_of(reference, inputs.labels, len(inputs.parity))

    records: list[dict | None] = [None] * len(cases)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, case in enumerate(cases):
        if case.skip_reason:
            records[i] = empty_record(case)
        else:
            groups.setdefault((case.backend, case.precision), []).append(i)
    with tqdm(total=len(cases), desc="vit-bench", unit="case", disable=not progress) as bar:
        bar.update(len(cases) - sum(len(v) for v in groups.values()))  # skipped
        for (name, precision), indices in groups.items():
            bar.set_description(f"{name} {precision}: load")
            try:
                loaded, load_s = _load(registry[name], ctx, precision)
            except Exception as exc:  # a backend that cannot load fails its cases only
                for i in indices:
                    records[i] = failed_record(cases[i], exc, "load")
                bar.update(len(indices))
                continue
            for i in indices:
                case = cases[i]
                bar.set_description(f"{name} {precision} batch {case.batch_size}")
                try:
                    records[i] = run_case(ctx, case, loaded, load_s, inputs, reference, peaks)
                except Exception as exc:  # recorded; the other cases go on
                    records[i] = failed_record(case, exc, "run")
                bar.update()
            del loaded
            gc.collect()
    add_speedups(records)
    env["load_average_end"] = environment.load_average()
    with tqdm(total=1, desc="matmul peak, again", disable=not progress, leave=False) as bar:
        peaks = best_of(peaks, device_peaks(ctx.device == "cuda", cfg.matmul_sizes))
        bar.update()
    add_peak_fractions(records, peaks)
    env["matmul_peak"] = peaks
    used = {(a["backend"], a["precision"]) for a in ctx.artifact_log}
    unused = [
        {**a.to_dict(), "exported": False, "export_s": None, "used": False}
        for a in ctx.artifacts
        if (a.backend, a.precision) not in used
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "vit-bench",
        "environment": env,
        "config": {
            **cfg.to_dict(),
            "threads": ctx.threads,
            "batch_sizes": list(ctx.batch_sizes),
            "device": ctx.device,
            "model": {
                "spec": ctx.source.to_dict(),
                "source": ctx.source.description,
                "config": model_cfg.to_dict(),
                "flops_per_image": model_cfg.flops_per_image(),
                "params": sum(p.numel() for p in ctx.reference_model.parameters()),
            },
            "inputs": inputs.to_dict(),
        },
        "reference": {**REFERENCE, "accuracy": ref_acc, "accuracy_note": ref_note},
        "artifacts": [{**a, "used": True} for a in ctx.artifact_log] + unused,
        "cases": records,
        "wall_s": round(time.perf_counter() - started, 2),
    }
