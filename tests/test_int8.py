"""INT8 QDQ export: calibration, the int8 gate, the auto-repair loop and the manifest."""

import importlib.util
import json

import numpy as np
import onnx
import pytest
from PIL import Image

from vit_deploy.assets import heldout_set, load_default_model
from vit_deploy.errors import ArtifactError, ConfigError, ParityError
from vit_deploy.export.onnx import int8
from vit_deploy.export.onnx.calibration import calibration_set
from vit_deploy.export.onnx.pipeline import export_onnx_artifact
from vit_deploy.export.options import OnnxExportOptions
from vit_deploy.export.parity import Gate, GateFailure, GateResult, cosine_rows
from vit_deploy.manifest import MANIFEST_NAME
from vit_deploy.preprocess import preprocess_batch
from vit_deploy.runtime import load_backend

FLOAT_OPS = ("LayerNormalization", "Softmax", "Erf")


@pytest.fixture(scope="module")
def model():
    return load_default_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx_artifact(model, root / "fp32", OnnxExportOptions(optimize="plain"))
    ov = ("f32",) if importlib.util.find_spec("openvino") else ()
    options = OnnxExportOptions(precision="int8", verify_openvino=ov)
    q = export_onnx_artifact(model, root / "int8", options)
    return fp32, q


def _accuracy(directory):
    items = heldout_set()
    pixels = preprocess_batch([p for p, _ in items], load_default_model().config.preprocess)
    logits = load_backend(directory)(pixels.numpy())["logits"]
    assert np.isfinite(logits).all()
    return float((logits.argmax(1) == np.array([y for _, y in items])).mean())


def test_int8_artifact_is_qdq_with_sensitive_ops_in_float(exported):
    _, result = exported
    graph = onnx.load(str(result.directory / "model.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    for node in graph.node:
        if node.op_type in FLOAT_OPS:  # fed by float tensors, not by a DequantizeLinear
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name
    precision = result.manifest["precision"]
    assert precision["mode"] == "int8" and precision["quantized_nodes"] > 0
    assert set(FLOAT_OPS) <= set(precision["float_ops"])
    assert result.manifest["parity"]["gate"]["precision"] == "int8" and result.gate.passed
    assert precision["calibration"]["overlap_with_parity_images"] == 0


def test_int8_accuracy_close_to_fp32_and_file_smaller(exported):
    fp32, q = exported
    acc32, acc8 = _accuracy(fp32.directory), _accuracy(q.directory)
    assert acc8 >= acc32 - 0.01, (acc32, acc8)
    assert q.manifest["artifact"]["size_bytes"] < 0.5 * fp32.manifest["artifact"]["size_bytes"]


def test_openvino_serves_int8_only_at_the_hints_it_verified(exported, model):
    pytest.importorskip("openvino")
    directory = exported[1].directory
    record = exported[1].manifest["serving"]["openvino"]["f32"]
    assert record["passed"] and record["gate"]["precision"] == "int8"
    ov = load_backend(directory, backend="openvino")
    x = calibration_set(model.config, size=8).pixels
    got, want = ov(x)["embedding"], load_backend(directory)(x)["embedding"]
    assert np.isfinite(got).all()
    assert cosine_rows(got, want).min() >= 0.99  # the same QDQ graph on two runtimes
    with pytest.raises(ArtifactError, match="verified for OpenVINO bf16"):
        load_backend(directory, backend="openvino", precision="bf16")


def test_repair_keeps_the_lowest_sqnr_nodes_in_float(exported, tmp_path, model):
    float_path = exported[0].directory / "model.onnx"
    calibration = calibration_set(model.config, size=16)
    calls = []

    def gate(path):  # fails once, then passes: the loop must repair exactly once
        calls.append(path)
        failed = len(calls) == 1
        failures = (GateFailure("logits", "cosine_min", 0.5, 0.99),) if failed else ()
        return None, GateResult("int8", Gate(0.99, 0.98), failures)

    out = tmp_path / "q.onnx"
    int8.quantize_qdq(float_path, out, calibration, [])
    scores = int8.node_sensitivity(float_path, out, calibration.pixels[:8])
    record, _, result = int8.quantize_with_repair(float_path, out, calibration, gate)
    assert result.passed and len(calls) == 2
    total = len(int8.quantizable_nodes(onnx.load(str(float_path))))
    expected = sorted(scores, key=scores.get)[: max(1, int(np.ceil(0.1 * total)))]
    assert record["fp32_nodes"] == expected
    assert [a["passed"] for a in record["attempts"]] == [False, True]
    graph = onnx.load(str(out)).graph
    kept = {n.name: n for n in graph.node if n.name in expected}
    producers = {o: n.op_type for n in graph.node for o in n.output}
    for node in kept.values():  # a node kept in float reads no dequantized input
        assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name


def test_gate_failure_after_the_last_attempt_writes_nothing(model, tmp_path, monkeypatch):
    from vit_deploy.export import parity

    monkeypatch.setitem(parity.GATES, "int8", parity.Gate(min_cosine=0.9999999, min_top1=1.0))
    out = tmp_path / "never"
    options = OnnxExportOptions(precision="int8", int8_attempts=2, calibration_size=16)
    with pytest.raises(ParityError, match=r"parity gate \(int8\) failed"):
        export_onnx_artifact(model, out, options)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_calibration_from_a_user_folder(model, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        img.save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    cal = calibration_set(model.config, tmp_path, size=3)
    assert cal.pixels.shape == (3, 3, 32, 32) and np.isfinite(cal.pixels).all()
    want = preprocess_batch(sorted(tmp_path.glob("*.png"))[:3], model.config.preprocess).numpy()
    np.testing.assert_allclose(cal.pixels, want)
    batches = []
    reader = cal.reader()
    while (item := reader.get_next()) is not None:
        batches.append(item["pixels"])
    assert sum(len(b) for b in batches) == 3
    with pytest.raises(ConfigError, match="found none"):
        calibration_set(model.config, _empty(tmp_path), size=1)
    with pytest.raises(ConfigError, match="expected a positive int"):
        calibration_set(model.config, tmp_path, size=0)


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_cli_flags_reach_the_options():
    from vit_deploy.cli.export import build_parser, onnx_options

    args = build_parser().parse_args(
        ["--precision", "int8", "--calibration", "imgs", "--calibration-size", "64"]
        + ["--verify-openvino", "f32,bf16", "--int8-attempts", "2"]
    )
    options = onnx_options(args)
    assert (options.precision, options.calibration, options.calibration_size) == (
        "int8",
        "imgs",
        64,
    )
    assert options.verify_openvino == ("f32", "bf16") and options.int8_attempts == 2
    assert "--calibration-size" in options.cli_args()
    with pytest.raises(ConfigError, match="verify_openvino"):
        OnnxExportOptions(verify_openvino=("fp8",))


def test_manifest_on_disk_matches_the_result(exported):
    on_disk = json.loads((exported[1].directory / MANIFEST_NAME).read_text())
    assert on_disk["precision"]["attempts"] == exported[1].manifest["precision"]["attempts"]
