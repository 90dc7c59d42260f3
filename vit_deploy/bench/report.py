"""The four outputs of a run: a terminal table, results.json, results.md and a PNG plot.

results.json schema (``schema_version`` 1; keys are always present, ``null`` where
a value does not apply or was not measured; new keys may be added, existing ones
keep their meaning until the version changes):

- ``schema_version`` (int), ``tool`` ("vit-bench"), ``wall_s`` (float)
- ``environment``: ``created_utc``, ``platform``, ``python``, ``cpu_model``,
  ``cpu_flags``, ``cpu_cores_logical`` / ``_physical`` / ``_usable``,
  ``memory_total_mb``, ``torch_threads``, ``gpu`` (null or ``{name,
  compute_capability, memory_mb, count, cuda_version}``), ``triton_interpret``,
  ``versions`` ({package: version or null}), ``git_commit``, ``load_average_start`` /
  ``_end`` ([1, 5, 15 min]), ``matmul_peak`` ({"cpu_fp32" | "cuda_fp16" | "cuda_fp32":
  {gflops_per_s, library, size, by_library: {library: {size: GFLOP/s}}, before_gflops_per_s,
  after_gflops_per_s, method, threads, device, dtype}}: see ``bench.matmul_peak``)
- ``config``: the options (``backends``, ``precisions``, ``batch_sizes``, ``warmup``,
  ``iters``, ``seconds``, ``threads``, ``repeats``, ``out``, ``artifacts``,
  ``parity_samples``, ...), ``device`` ("cpu" | "cuda"), ``model`` ({spec, source,
  config, flops_per_image, params}), ``inputs`` ({parity_samples, labeled,
  description})
- ``reference``: {backend "torch", precision "fp32", attention "math", accuracy,
  accuracy_note}
- ``artifacts``: [{backend, precision, path, exported, export_s, used}]
- ``cases``: one per backend x precision x batch size, each with
  ``backend``, ``precision``, ``batch_size``, ``status`` ("ok" | "skipped" | "failed"),
  ``reason`` (why skipped), ``error`` (why failed: "Type during load|run: message"),
  ``device``, ``timer`` ("perf_counter" | "cuda_events"), ``timing_valid`` (false: a
  correctness-only run, e.g. the Triton interpreter), ``iterations``,
  ``latency_ms`` {p50, p90, p99, mean, std, min, max}, ``p50_rounds_ms`` (one p50 per
  timed round), ``p50_spread_pct``, ``throughput_ips`` (images/s),
  ``speedup_vs_torch_fp32`` (torch fp32 p50 / this p50, same batch, same run),
  ``load_s`` (model load, session creation or engine deserialisation; export excluded),
  ``peak_mem_mb`` and ``memory`` {kind, rss_start_mb, rss_peak_mb, hwm_reset,
  gpu_torch_peak_mb} (see ``bench.memory`` for what the numbers count),
  ``others_cpu_pct`` (CPU time other processes used while the case was timed, percent of
  all cores: how contended the machine was; see ``environment.OtherProcesses``),
  ``gflops_per_s`` (ViTConfig.flops_per_image() x throughput), ``frac_of_peak`` and
  ``peak_ref`` (the ``matmul_peak`` entry it is relative to), ``parity`` {output,
  samples, cosine_min, cosine_mean, max_abs_diff, p99_abs_diff, top1_agreement,
  outputs: per-output metrics} against the reference, ``accuracy`` (top-1 on the
  labeled held-out set) and ``accuracy_note`` (why it is null), ``notes`` [str].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

FILES = ("results.json", "results.md", "latency_throughput.png")
NOISY_OTHERS_PCT = 10.0

COLUMNS = (
    "backend",
    "prec",
    "batch",
    "status",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean±std ms",
    "img/s",
    "x torch",
    "GFLOP/s",
    "% peak",
    "load s",
    "peak MB",
    "others%",
    "cos min",
    "max|diff|",
    "top-1 agr",
    "accuracy",
)


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    for limit, digits in ((10, 3), (100, 2), (1000, 1)):
        if abs(v) < limit:
            return f"{v:.{digits}f}"
    return f"{v:.0f}"


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _cos(v) -> str:
    if v is None:
        return "-"
    if v >= 1.0:
        return "1.0"
    return f"1-{1.0 - v:.1e}" if v > 0.999 else f"{v:.4f}"


def case_row(c: dict, mark: str = "") -> list[str]:
    lat = c["latency_ms"] or {}
    parity = c["parity"] or {}
    timed = c["status"] == "ok" and c["timing_valid"]
    star = "" if timed or c["status"] != "ok" else "*"
    mean_std = f"{fmt_ms(lat['mean'])}±{fmt_ms(lat['std'])}" if lat else "-"
    return [
        c["backend"],
        c["precision"],
        str(c["batch_size"]),
        c["status"] + mark,
        fmt_ms(lat.get("p50")) + star,
        fmt_ms(lat.get("p90")) + star,
        fmt_ms(lat.get("p99")) + star,
        mean_std + star if lat else "-",
        _num(c["throughput_ips"], ".1f") + (star if lat else ""),
        _num(c["speedup_vs_torch_fp32"], ".2f"),
        _num(c["gflops_per_s"], ".1f") + (star if lat else ""),
        _pct(c["frac_of_peak"]),
        _num(c["load_s"], ".3f"),
        _num(c["peak_mem_mb"], ".0f"),
        _num(c["others_cpu_pct"], ".0f"),
        _cos(parity.get("cosine_min")),
        _num(parity.get("max_abs_diff"), ".1e"),
        _pct(parity.get("top1_agreement")),
        _accuracy(c),
    ]


def _accuracy(c: dict) -> str:
    if c["status"] != "ok":
        return "-"
    return "n/a" if c["accuracy"] is None else _pct(c["accuracy"])


def footnotes(results: dict) -> list[str]:
    """One line per skipped or failed case group, and the markers used in the table."""
    lines, seen = [], set()
    for c in results["cases"]:
        if c["status"] == "ok":
            continue
        text = c["reason"] if c["status"] == "skipped" else c["error"]
        key = (c["backend"], c["precision"], c["status"], text)
        if key in seen:
            continue
        seen.add(key)
        first = (text or "").strip().splitlines()[0] if text else ""
        lines.append(f"{c['backend']} {c['precision']} {c['status']}: {first}")
    if any(c["status"] == "ok" and not c["timing_valid"] for c in results["cases"]):
        lines.append("* not a timing: a correctness-only run (e.g. under the Triton interpreter)")
    notes = {n for c in results["cases"] if c["status"] == "ok" for n in c["notes"]}
    lines.extend(f"note: {n}" for n in sorted(notes))
    busy = [c["others_cpu_pct"] for c in results["cases"] if c["others_cpu_pct"] is not None]
    if busy and max(busy) >= NOISY_OTHERS_PCT:
        lines.append(
            f"warning: other processes used up to {max(busy):.0f}% of the CPU while cases were "
            "timed (column others%): those timings are noisy"
        )
    acc = {c["accuracy_note"] for c in results["cases"] if c["accuracy_note"]}
    lines.extend(f"accuracy {n}" for n in sorted(acc))
    return lines


def _align(rows: list[list[str]]) -> list[str]:
    """Left-align the label columns, right-align the numbers."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.ljust(w) if i < 4 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_table(results: dict) -> str:
    rows = [list(COLUMNS)] + [case_row(c) for c in results["cases"]]
    lines = _align(rows)
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + [""] + footnotes(results))


def headline(results: dict) -> str:
    env, cfg = results["environment"], results["config"]
    peak = env["matmul_peak"].get("cpu_fp32", {})
    gpu = env["gpu"]["name"] if env["gpu"] else "no GPU"
    load = env["load_average_start"], env["load_average_end"]
    return (
        f"{cfg['model']['source']}, {cfg['model']['flops_per_image'] / 1e9:.3f} GFLOP/image; "
        f"{env['cpu_model']} ({env['cpu_cores_usable']} cores, {cfg['threads']} threads), "
        f"{gpu}; CPU fp32 matmul peak {peak.get('gflops_per_s', float('nan')):.1f} GFLOP/s; "
        f"load average {load[0]} -> {load[1]}"
    )


def write_json(results: dict, path: Path) -> Path:
    def default(obj):
        if hasattr(obj, "item"):
            return obj.item()
        return str(obj)

    def clean(v):  # NaN/Inf are not JSON: store null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    path.write_text(json.dumps(clean(results), indent=2, default=default) + "\n")
    return path


def markdown_table(results: dict) -> str:
    rows = [list(COLUMNS)] + [case_row(c) for c in results["cases"]]
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    out[0] = out[0].replace("max|diff|", "max\\|diff\\|")
    return "\n".join(out)


def _peak_text(key: str, peak: dict) -> str:
    libraries = ", ".join(
        f"{lib} {max(rates.values()):.0f}" for lib, rates in peak["by_library"].items()
    )
    return (
        f"{key} {peak['gflops_per_s']:.1f} GFLOP/s ({peak['library']}, n={peak['size']}; best "
        f"per library: {libraries}; before the cases {peak['before_gflops_per_s']:.0f}, after "
        f"{peak['after_gflops_per_s']:.0f})"
    )


def write_markdown(results: dict, path: Path) -> Path:
    env, cfg, ref = results["environment"], results["config"], results["reference"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    budget = f"{cfg['iters']} iterations" if cfg["iters"] else f"{cfg['seconds']} s"
    peaks = "; ".join(
        f"{k} {v['gflops_per_s']:.1f} GFLOP/s (n={v['size']})"
        for k, v in env["matmul_peak"].items()
    )
    ref_acc = "n/a" if ref["accuracy"] is None else f"{ref['accuracy']:.2%}"
    lines = [
        f"# vit-bench: {cfg['model']['source']}",
        "",
        f"- Machine: {env['cpu_model']}, {env['cpu_cores_usable']} usable cores "
        f"({', '.join(env['cpu_flags'] or [])}), {cfg['threads']} threads, "
        f"{env['gpu']['name'] if env['gpu'] else 'no GPU'}; {env['platform']}",
        f"- Load average (1/5/15 min): {env['load_average_start']} at the start, "
        f"{env['load_average_end']} at the end",
        f"- Matmul peak measured in this run: {peaks}",
        f"- Versions: {versions}; commit {env['git_commit']}; {env['created_utc']}",
        f"- Model: {cfg['model']['flops_per_image'] / 1e9:.3f} GFLOP/image, "
        f"{cfg['model']['params'] / 1e6:.2f} M parameters",
        f"- Timing: {cfg['warmup']} warm-up calls, then {budget} per case x {cfg['repeats']} "
        f"round(s); p50/p90/p99 over all timed calls",
        f"- Parity inputs: {cfg['inputs']['description']}; reference: PyTorch fp32, math "
        f"attention (accuracy {ref_acc})",
        "",
        markdown_table(results),
        "",
    ]
    lines += [f"- {n}" for n in footnotes(results)]
    lines += [
        "",
        "`x torch`: PyTorch fp32 p50 / this p50 at the same batch size, in this run. `% peak`: "
        "achieved FLOP/s over the matmul rate measured above. `peak MB`: the process's "
        "resident-set high-water mark during the case (process-wide: it includes the "
        "interpreter, the reference model and the inputs), or PyTorch's allocator peak on a GPU. "
        "`others%`: CPU time used by other processes while the case was timed, in percent of "
        "all cores (a shared machine: read timings with a high value as noisy).",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    timed = [c for c in results["cases"] if c["status"] == "ok" and c["timing_valid"]]
    series: dict[str, list[dict]] = {}
    for c in timed:
        series.setdefault(f"{c['backend']} {c['precision']}", []).append(c)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(12, 4.5))
    batches = sorted({c["batch_size"] for c in timed})
    width = 0.8 / max(len(series), 1)
    for k, (label, cases) in enumerate(series.items()):
        cases = sorted(cases, key=lambda c: c["batch_size"])
        xs = [c["batch_size"] for c in cases]
        p50 = [c["latency_ms"]["p50"] for c in cases]
        p90 = [c["latency_ms"]["p90"] - c["latency_ms"]["p50"] for c in cases]
        ax_lat.errorbar(xs, p50, yerr=[[0] * len(p50), p90], marker="o", capsize=3, label=label)
        pos = [batches.index(b) + (k - (len(series) - 1) / 2) * width for b in xs]
        ax_tp.bar(pos, [c["throughput_ips"] for c in cases], width, label=label)
    ax_lat.set(xscale="log", yscale="log", xlabel="batch size", ylabel="latency p50 (ms)")
    ax_lat.set_title("Latency (bar: up to p90)")
    ax_lat.set_xticks(batches or [1], [str(b) for b in batches] or ["1"])
    ax_lat.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_tp.set(xlabel="batch size", ylabel="images / s", title="Throughput")
    ax_tp.set_xticks(range(len(batches)), [str(b) for b in batches])
    for ax in (ax_lat, ax_tp):
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    if not series:
        ax_tp.text(0.5, 0.5, "no timed cases", ha="center", transform=ax_tp.transAxes)
    fig.suptitle(headline(results), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(results: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "json": write_json(results, out / FILES[0]),
        "markdown": write_markdown(results, out / FILES[1]),
        "plot": plot(results, out / FILES[2]),
    }
