"""scripts/gpu_check.sh: the dry run (CI runs it), the plan's commands, timeouts, the file cap."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check", ROOT / "scripts" / "gpu_check.py")


def _env(cuda: bool, tensorrt: str | None = None) -> dict:
    modules = dict.fromkeys(gpu_check.OPTIONAL_MODULES, "1.0")
    modules["tensorrt"] = tensorrt
    return {"python": "3.12.0", "cuda_available": cuda, "modules": modules}


def test_dry_run_checks_the_environment_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    # the package came from the link directory, kernels included: importable without pip
    line = next(x for x in text.splitlines() if x.startswith("import path:"))
    assert "pythonpath/vit_deploy/__init__.py" in line
    assert "pythonpath/vit_deploy/kernels/__init__.py" in line
    for part in ("gpu tests", "attention fp16", "attention bf16", "vit-bench", "trt engine"):
        assert f". {part}" in text
    assert "dry run:" in text and not out.exists()


def test_plan_without_a_gpu_skips_every_part_with_the_reason(tmp_path):
    parts = gpu_check.plan(_env(cuda=False), tmp_path)
    assert parts and all("no CUDA GPU" in p.skip for p in parts)


def test_plan_without_tensorrt_benchmarks_the_rest(tmp_path):
    parts = {p.name: p for p in gpu_check.plan(_env(cuda=True), tmp_path)}
    assert "TensorRT does not import" in parts["trt engine"].skip
    bench = parts["vit-bench"]
    assert bench.skip is None and "trt not benchmarked" in bench.reason
    assert bench.command[bench.command.index("--backends") + 1] == "torch,torch-triton"
    with_trt = {p.name: p for p in gpu_check.plan(_env(True, "10.16.1.11"), tmp_path)}
    assert with_trt["trt engine"].skip is None
    assert with_trt["vit-bench"].command[bench.command.index("--backends") + 1].endswith(",trt")
    broken = {p.name: p for p in gpu_check.plan(_env(True, "broken (OSError: x)"), tmp_path)}
    assert "broken" in broken["trt engine"].skip


def test_plan_commands_parse_with_the_real_parsers(tmp_path):
    # a typo in a flag, a case or a model would only show on the GPU machine otherwise
    parts = {p.name: p for p in gpu_check.plan(_env(True, "10.16.1.11"), tmp_path)}
    bench_attention = _load("bench_attention", ROOT / "benchmarks" / "bench_attention.py")
    cmd = parts["attention bf16"].command
    args = bench_attention.parse_args(cmd[2:])
    assert sorted(c.seq for c in args.cases) == [197, 577, 785]
    assert {c.head_dim for c in args.cases} == {64} and args.dtype == "bf16"
    assert max(args.batches) == 256 and min(args.batches) == 1

    from vit_deploy.cli.bench import build_parser, config_from_args

    cmd = parts["vit-bench"].command
    assert cmd[1:3] == ["-m", "vit_deploy.cli.bench"]
    cfg = config_from_args(build_parser().parse_args(cmd[3:]))
    assert cfg.batch_sizes == (1, 32, 256) and cfg.precisions == ("fp16",)
    assert cfg.backends == ("torch", "torch-triton", "trt")
    tests = parts["gpu tests"].command
    assert all(Path(f).is_file() for f in tests if f.endswith(".py"))
    assert sum(p.timeout_s for p in parts.values()) <= gpu_check.TOTAL_BUDGET_S


def test_a_part_that_hangs_is_killed_and_the_next_still_runs(tmp_path):
    hang = gpu_check.Part("hang", 2, [sys.executable, "-c", "import time; time.sleep(60)"])
    fail = gpu_check.Part("fail", 30, [sys.executable, "-c", "raise SystemExit(4)"])
    ok = gpu_check.Part("ok", 30, [sys.executable, "-c", "print('fine')"])
    deadline = __import__("time").monotonic() + 60
    with open(tmp_path / "log", "w") as log:
        for part in (hang, fail, ok):
            gpu_check.run_part(part, {}, log, deadline, tmp_path)
    assert (hang.status, fail.status, ok.status) == ("timed out", "failed", "passed")
    assert hang.seconds < 10 and "killed after 2 s" in hang.reason
    assert fail.returncode == 4 and "exit 4" in fail.reason
    assert "fine" in (tmp_path / "log").read_text()
    late = gpu_check.Part("late", 30, [sys.executable, "-c", "pass"])
    with open(tmp_path / "log", "a") as log:
        gpu_check.run_part(late, {}, log, __import__("time").monotonic() + 1, tmp_path)
    assert late.status == "skipped" and "budget" in late.reason


def test_results_are_collected_into_at_most_eight_files(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    parts = gpu_check.plan(_env(True, "10.16.1.11"), work)
    for part in parts:  # every file a part can leave behind, plus clutter
        for src in part.collect:
            (work / src).parent.mkdir(parents=True, exist_ok=True)
            (work / src).write_text(json.dumps({"from": src}))
            (work / src).with_name("clutter.png").write_text("x")
    files = gpu_check.collect(parts, work, out)
    assert set(files) <= set(gpu_check.OUT_FILES) and len(gpu_check.OUT_FILES) <= 8
    merged = json.loads((out / "attention.json").read_text())
    assert sorted(merged) == ["bf16", "fp16"]


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="tests the refusal on a CPU machine"
)
def test_a_real_run_without_a_gpu_refuses(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == gpu_check.EXIT_ENV
    assert "no CUDA GPU here" in done.stderr and not (tmp_path / "r").exists()
