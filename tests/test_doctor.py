"""vit-deploy doctor: the checks, the table, the exit status.

On this machine (no GPU, no TensorRT) the doctor must say exactly what is missing
and exit non-zero; the all-green path is checked with the checks replaced.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from vit_deploy.cli import doctor
from vit_deploy.cli.doctor import Check

NO_GPU = not torch.cuda.is_available()


def test_check_status_words():
    assert Check("a", True, "fine").status == "PASS"
    assert Check("a", True, "fine", "optional: x").status == "WARN"
    assert Check("a", False, "broken", "fix it").status == "FAIL"
    assert Check("a", None, "skipped (--no-tests)").status == "SKIP"


@pytest.mark.skipif(not NO_GPU, reason="checks the report of a machine without a GPU")
def test_doctor_without_gpu_reports_what_is_missing(capsys):
    rc = doctor.main(["doctor", "--no-tests"])
    out = capsys.readouterr().out
    assert rc == 1
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.strip()}
    assert "FAIL" in rows["CUDA"] and "torch.cuda.is_available() is False" in rows["CUDA"]
    assert "FAIL" in rows["GPU"]
    assert "FAIL" in rows["Triton"] and "cannot compile for a GPU" in rows["Triton"]
    assert "SKIP" in rows["GPU tests (pytest -m gpu)"]
    assert "FAIL" in rows["engine build"] and "not run: no CUDA GPU" in rows["engine build"]
    assert "PASS" in rows["ONNX Runtime"] or "WARN" in rows["ONNX Runtime"]
    assert "CPUExecutionProvider" in rows["ONNX Runtime"]
    # every failure carries its next step
    assert out.count("next: ") >= sum(" FAIL " in line for line in out.splitlines())
    summary = out.strip().splitlines()[-1]
    assert "Missing for the GPU path: CUDA, GPU" in summary
    assert "vit-export --fmt onnx" in summary


def test_tensorrt_row_reports_import_failure(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    check = doctor.check_tensorrt()
    assert check.ok is False and "not installed" in check.detail
    assert "pip install 'vit-deploy[trt]'" in check.next_step


def test_old_tensorrt_is_a_failure(monkeypatch):
    import sys

    fake = type(sys)("tensorrt")
    fake.__version__ = "8.6.1"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    check = doctor.check_tensorrt()
    assert check.ok is False and "8.6.1 is too old (expected >= 10.12)" in check.detail


def test_skip_flags_skip(capsys):
    checks = doctor.check_engine(build=False)
    assert [c.status for c in checks] == ["SKIP", "SKIP", "SKIP"]
    assert doctor.check_gpu_tests(run=False).status == "SKIP"


def test_all_green_exits_zero(monkeypatch, capsys):
    for name in ("check_cuda", "check_gpu", "check_tensorrt", "check_onnxruntime", "check_triton"):
        monkeypatch.setattr(doctor, name, lambda name=name: Check(name, True, "ok"))
    monkeypatch.setattr(
        doctor, "check_gpu_tests", lambda run=True: Check("tests", True, "3 passed")
    )
    monkeypatch.setattr(
        doctor, "check_engine", lambda build=True: [Check("engine build", True, "built")]
    )
    assert doctor.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "all checks passed" in out


def test_table_lists_next_steps_for_failures_only():
    table = doctor.format_table(
        [
            Check("CUDA", False, "no GPU", "get one"),
            Check("ORT", True, "1.20"),
            Check("x", None, "skipped"),
        ]
    )
    lines = table.splitlines()
    assert lines[0].startswith("check") and "status" in lines[0]
    assert any("CUDA" in line and "FAIL" in line for line in lines)
    assert sum("next: " in line for line in lines) == 1


def test_pytest_summary_parsing():
    counts = doctor._pytest_counts("== 3 passed, 2 skipped, 1 deselected, 1 error in 0.5s ==")
    assert counts == {"passed": 3, "skipped": 2, "deselected": 1, "error": 1}


def _write_suite(root, body):
    tests = root / "tests"
    tests.mkdir()
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    (tests / "test_fake.py").write_text(textwrap.dedent(body))
    return tests


def test_gpu_tests_that_only_skip_are_a_failure(tmp_path):
    tests = _write_suite(
        tmp_path,
        """
        import pytest

        @pytest.mark.gpu
        @pytest.mark.skipif(True, reason="needs a CUDA GPU; none here")
        def test_engine():
            pass
        """,
    )
    check = doctor.check_gpu_tests(True, tests)
    assert check.ok is False
    assert "no GPU test ran" in check.detail and "needs a CUDA GPU; none here" in check.detail


def test_gpu_tests_pass_and_fail(tmp_path):
    tests = _write_suite(
        tmp_path,
        """
        import pytest

        @pytest.mark.gpu
        def test_ok():
            pass

        @pytest.mark.gpu
        def test_broken():
            assert False

        def test_not_gpu():
            assert False  # deselected by -m gpu
        """,
    )
    check = doctor.check_gpu_tests(True, tests)
    assert check.ok is False and "1 failed" in check.detail and "1 passed" in check.detail
    assert "pytest -m gpu" in check.next_step
    (tests / "test_fake.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_ok():\n    pass\n"
    )
    assert doctor.check_gpu_tests(True, tests).status == "PASS"


def test_missing_test_suite_is_reported(tmp_path):
    check = doctor.check_gpu_tests(True, tmp_path / "nope")
    assert check.ok is False and "no test suite" in check.detail
