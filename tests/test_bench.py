"""vit-bench: statistics against numpy, the measurement loop, the results.json schema,
skipped and failed cases (an injected backend that raises), every bad input (typed
error, exit 2, one line), and one tiny end-to-end CLI run writing all four outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vit_deploy import ViTConfig, create_model
from vit_deploy.bench import BenchConfig, report, run_bench, stats
from vit_deploy.bench import runner as bench_runner
from vit_deploy.bench.backends import REGISTRY, TRITON_CPU_REASON, BackendSpec, Loaded
from vit_deploy.bench.config import check_config
from vit_deploy.bench.timing import Budget, check_budget, measure
from vit_deploy.checkpoints.load import save_model
from vit_deploy.cli.bench import main
from vit_deploy.cli.common import error_text
from vit_deploy.config import Preprocess
from vit_deploy.errors import ConfigError
from vit_deploy.manifest import write_manifest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    cfg = ViTConfig(
        img_size=16,
        patch_size=8,
        num_classes=4,
        embed_dim=64,
        depth=1,
        num_heads=2,
        labels=("a", "b", "c", "d"),
        preprocess=Preprocess(img_size=16, crop_pct=1.0),
    )
    return save_model(create_model(cfg, seed=3), tmp_path_factory.mktemp("bench") / "tiny")


def _fast_peaks(on_gpu, sizes=None):
    """The real peak multiplies up to 2048 x 2048 matrices; 64 x 64 tests the plumbing."""
    from vit_deploy.bench import matmul_peak

    return matmul_peak.device_peaks(on_gpu, (64,), repeats=2, seconds_per_size=0.0)


@pytest.fixture(autouse=True)
def _fast_matmul_peak(monkeypatch):
    monkeypatch.setattr(bench_runner, "device_peaks", _fast_peaks)


# ------------------------------------------------------------------------------ statistics


def test_percentiles_match_numpy():
    values = list(np.random.default_rng(0).exponential(2.0, 101)) + [50.0, 0.01]
    for q in (0, 1, 37.5, 50, 90, 99, 100):
        assert stats.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)
    assert stats.percentile([3.0], 99) == 3.0
    with pytest.raises(ConfigError, match="at least one"):
        stats.percentile([], 50)


def test_latency_summary_mean_std_in_ms():
    times = [0.001, 0.002, 0.003, 0.004]  # seconds
    s = stats.latency_summary(times)
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["p50"] == pytest.approx(2.5) and s["min"] == 1.0 and s["max"] == 4.0
    assert stats.mean_std([7.0]) == (7.0, 0.0)


def test_throughput_flops_and_spread_from_known_timings():
    assert stats.throughput_ips(8, [0.1] * 10) == pytest.approx(80.0)
    assert stats.throughput_ips(1, [0.5, 1.5]) == pytest.approx(1.0)  # 2 images in 2 s
    assert stats.gflops_per_s(2e9, 80.0) == pytest.approx(160.0)
    assert stats.spread_pct([10.0, 10.5, 10.2]) == pytest.approx(5.0)


def test_measure_warmup_iters_and_seconds():
    calls = []

    class FakeTimer:
        name = "fake"

        def prepare(self):
            calls.append("sync")

        def time(self, fn):
            fn()
            return 0.25

    times = measure(lambda: calls.append(1), Budget(warmup=2, iters=5, seconds=None), FakeTimer())
    assert times == [0.25] * 5 and calls.count(1) == 7 and calls[2] == "sync"
    calls.clear()
    # a budget far shorter than one call still gives min_iters timings
    times = measure(lambda: None, Budget(warmup=0, iters=None, seconds=1e-9))
    assert len(times) == 3 and all(t >= 0 for t in times)


@pytest.mark.parametrize(
    "warmup, iters, seconds, match",
    [
        (0, 0, None, "iters: expected a positive int"),
        (0, -3, None, "iters: expected a positive int"),
        (0, None, 0, "seconds: expected a positive number"),
        (0, None, -1.5, "seconds: expected a positive number"),
        (-1, 5, None, "warmup"),
        (0, 5, 1.0, "not both"),
        (0, None, None, "got neither"),
    ],
)
def test_bad_budgets(warmup, iters, seconds, match):
    with pytest.raises(ConfigError, match=match):
        check_budget(warmup, iters, seconds)


def test_check_config_collects_every_problem():
    cfg = BenchConfig(backends=("torch", "tpu"), precisions=("bf8",), batch_sizes=(0,))
    with pytest.raises(ConfigError) as info:
        check_config(cfg, REGISTRY)
    message = str(info.value)  # library terms; the CLI shows each as its flag
    assert "backends: unknown ['tpu']" in message and "precisions: unknown ['bf8']" in message
    assert "batch_sizes: expected positive ints, got [0]" in message
    shown = error_text(info.value)
    assert "--backends: unknown" in shown and "--precision: unknown ['bf8']" in shown
    assert "--batch-sizes: expected positive ints" in shown
    with pytest.raises(ConfigError, match="at least one batch size"):
        check_config(BenchConfig(batch_sizes=()), REGISTRY)


# ------------------------------------------------------------------------------ a run


class _Crashing:
    """The torch backend's outputs, until a batch of 2 comes: then it raises."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.config, self.manifest = "crash", inner.config, None
        self.output_names = inner.output_names

    def __call__(self, pixels):
        if len(pixels) == 2:
            raise RuntimeError("injected failure: device lost")
        return self.inner(pixels)


def _crash_load(ctx, precision):
    from vit_deploy.runtime.torch_backend import TorchBackend

    return Loaded(_Crashing(TorchBackend(ctx.source.load("math"))))


def _broken_load(ctx, precision):
    raise OSError("injected: cannot open the library")


def _registry():
    return {
        "torch": REGISTRY["torch"],
        "torch-triton": REGISTRY["torch-triton"],
        "trt": REGISTRY["trt"],
        "crash": BackendSpec("crash", ("fp32",), _crash_load),
        "broken": BackendSpec("broken", ("fp32",), _broken_load),
    }


@pytest.fixture(scope="module")
def results(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = BenchConfig(
        model=str(tiny_dir),
        batch_sizes=(1, 2),
        warmup=1,
        iters=3,
        seconds=None,
        repeats=2,
        parity_samples=5,
        out=str(out),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_runner, "device_peaks", _fast_peaks)
        res = run_bench(cfg, _registry(), progress=False)
    report.write_all(res, out)
    return res, out


def _cases(res, backend, precision="fp32"):
    return [c for c in res["cases"] if c["backend"] == backend and c["precision"] == precision]


def check_schema(res: dict) -> None:
    """The documented results.json schema: keys present, with the documented types."""
    assert res["schema_version"] == bench_runner.SCHEMA_VERSION
    for key in ("environment", "config", "reference", "artifacts", "cases"):
        assert key in res
    env = res["environment"]
    for key in ("cpu_model", "cpu_cores_usable", "versions", "load_average_start", "matmul_peak"):
        assert key in env
    assert env["matmul_peak"]["cpu_fp32"]["gflops_per_s"] > 0
    assert set(res["config"]["model"]) >= {"spec", "source", "flops_per_image", "config"}
    numbers = ("throughput_ips", "load_s", "peak_mem_mb", "gflops_per_s", "frac_of_peak")
    for c in res["cases"]:
        assert set(c) == set(bench_runner.empty_record(bench_runner.Case("x", "fp32", 1)))
        assert c["status"] in ("ok", "skipped", "failed")
        assert isinstance(c["backend"], str) and isinstance(c["batch_size"], int)
        if c["status"] == "skipped":
            assert isinstance(c["reason"], str) and c["reason"]
        if c["status"] == "failed":
            assert isinstance(c["error"], str) and c["error"]
        if c["status"] != "ok":
            assert c["latency_ms"] is None
            continue
        assert set(c["latency_ms"]) >= {"p50", "p90", "p99", "mean", "std"}
        lat = c["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        for key in numbers:
            assert isinstance(c[key], float) and math.isfinite(c[key]) and c[key] > 0, key
        assert set(c["parity"]) >= {
            "cosine_min",
            "cosine_mean",
            "max_abs_diff",
            "p99_abs_diff",
            "top1_agreement",
        }
        assert c["accuracy"] is None or 0 <= c["accuracy"] <= 1
        assert c["accuracy"] is not None or c["accuracy_note"]


def test_results_schema(results):
    res, out = results
    check_schema(res)
    check_schema(json.loads((out / "results.json").read_text()))  # and after the round trip


def test_torch_case_measured_and_matches_reference(results):
    res, _ = results
    ok = _cases(res, "torch")
    assert [c["status"] for c in ok] == ["ok", "ok"]
    c = ok[0]
    assert c["iterations"] == 6 and len(c["p50_rounds_ms"]) == 2  # 3 iters x 2 rounds
    assert c["parity"]["samples"] == 5 and c["parity"]["cosine_min"] > 0.99999
    assert c["parity"]["top1_agreement"] == 1.0
    assert c["accuracy"] is None and "no labeled" in c["accuracy_note"]
    assert c["speedup_vs_torch_fp32"] == pytest.approx(1.0)


def test_unavailable_backends_are_skipped_with_reason(results):
    res, _ = results
    trt = _cases(res, "trt") + _cases(res, "trt", "fp16")
    assert trt and all(c["status"] == "skipped" for c in trt)
    assert all("unavailable here" in c["reason"] for c in trt)
    assert all(("CUDA" in c["reason"]) or ("TensorRT" in c["reason"]) for c in trt)
    torch_fp16 = _cases(res, "torch", "fp16")
    assert all(c["status"] == "skipped" and "CPU" in c["reason"] for c in torch_fp16)
    triton = _cases(res, "torch-triton")
    assert all(c["status"] == "skipped" and TRITON_CPU_REASON in c["reason"] for c in triton)


def test_crashing_backend_fails_and_others_are_kept(results):
    res, out = results
    crash = {c["batch_size"]: c for c in _cases(res, "crash")}
    assert crash[1]["status"] == "ok"  # crashed mid-run, at its second case
    assert crash[2]["status"] == "failed"
    assert "RuntimeError during run: injected failure" in crash[2]["error"]
    broken = _cases(res, "broken")
    assert all(c["status"] == "failed" and "OSError during load" in c["error"] for c in broken)
    written = json.loads((out / "results.json").read_text())
    assert [c["status"] for c in written["cases"] if c["backend"] == "torch"][:2] == ["ok", "ok"]
    table = report.format_table(res)
    assert "crash fp32 failed: RuntimeError during run: injected failure" in table
    assert "trt fp32 skipped: unavailable here" in table


def test_outputs_written(results):
    _, out = results
    assert (out / "latency_throughput.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "results.md").read_text()
    assert "| torch | fp32 | 1 | ok |" in md and "Load average" in md


# ------------------------------------------------------------------------------ bad input


def _fake_onnx_artifact(path: Path, sha: str = "0" * 64) -> Path:
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"not an onnx model")
    write_manifest(
        path,
        {
            "artifact": {"format": "onnx", "file": "model.onnx", "sha256": sha, "size_bytes": 17},
            "model": {},
            "inputs": [],
            "outputs": [],
        },
    )
    return path


def _fake_engine(path: Path) -> Path:
    """A TensorRT artifact as vit-export writes it, with bytes no GPU will ever run."""
    from vit_deploy.manifest import file_entry
    from vit_deploy.runtime.tensorrt.env import ENGINE_SECTION_FORMAT

    path.mkdir(parents=True)
    (path / "model.engine").write_bytes(b"engine")
    entry = file_entry(path, "model.engine")
    section = {
        "format": ENGINE_SECTION_FORMAT,
        "file": "model.engine",
        "sha256": entry["sha256"],
        "tensorrt_version": "10.13.0",
        "compute_capability": "9.0",
        "gpu_name": "NVIDIA H100",
        "precision": "fp16",
        "profile": {"min": 1, "opt": 8, "max": 32},
    }
    manifest = {"artifact": {"format": "trt", **entry}, "model": {}, "inputs": [], "outputs": []}
    write_manifest(path, {**manifest, "engine": section})
    return path


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--backends", "torch,tpu"], "unknown ['tpu']"),
        (["--precision", "int4"], "unknown ['int4']"),
        (["--batch-sizes", ""], "at least one batch size"),
        (["--batch-sizes", "1,x"], "comma-separated integers"),
        (["--batch-sizes", "0,8"], "positive ints, got [0]"),
        (["--iters", "0"], "iters: expected a positive int"),
        (["--seconds", "-2"], "seconds: expected a positive number"),
        (["--iters", "5", "--seconds", "1"], "not both"),
        (["--backends", "trt"], "--backends: trt cannot run here"),
        (["--model", "no_such_model_xyz"], "expected a preset name"),
        (["--artifacts", "/no/such/artifact"], "expected an exported artifact directory"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, match, capsys, tmp_path):
    code = main([*argv, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("vit-bench: error:"), err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing long started, nothing written


def test_cli_corrupt_artifact_and_engine_profile(tiny_dir, capsys, tmp_path):
    bad = _fake_onnx_artifact(tmp_path / "corrupt")
    assert main(["--model", str(tiny_dir), "--artifacts", str(bad), "--no-progress"]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    engine = _fake_engine(tmp_path / "engine")
    argv = ["--model", str(tiny_dir), "--artifacts", str(engine), "--batch-sizes", "8,64"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "[64] outside the engine's profile 1:8:32" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ end to end


def test_cli_end_to_end_torch_and_ort(tiny_dir, tmp_path, capsys):
    """torch + ort timed; torch-triton named explicitly on a CPU: a correctness check."""
    out = tmp_path / "bench"
    argv = ["--model", str(tiny_dir), "--backends", "torch,torch-triton,ort", "--precision", "fp32"]
    argv += ["--batch-sizes", "1", "--iters", "3", "--warmup", "1", "--parity-samples", "4"]
    code = main([*argv, "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "torch" in printed and "ort" in printed and "p50 ms" in printed  # the table
    for name in report.FILES:
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    check_schema(res)
    by_backend = {c["backend"]: c for c in res["cases"]}
    assert by_backend["ort"]["status"] == "ok" and by_backend["torch"]["status"] == "ok"
    assert by_backend["ort"]["parity"]["cosine_min"] > 0.9999
    triton = by_backend["torch-triton"]
    assert triton["status"] == "ok" and triton["timing_valid"] is False
    assert triton["iterations"] == 1 and triton["parity"]["cosine_min"] > 0.9999
    assert TRITON_CPU_REASON in triton["notes"] and triton["speedup_vs_torch_fp32"] is None
    assert res["artifacts"][0]["exported"] and (out / "artifacts" / "onnx-fp32").is_dir()
