"""OpenVINO backend: runs our ONNX artifacts, checks options and manifests, and serves bf16
only where the manifest records OpenVINO's own bf16 parity."""

import json
import shutil
import threading

import numpy as np
import pytest

pytest.importorskip("openvino")

from vit_deploy.config import Preprocess, ViTConfig  # noqa: E402
from vit_deploy.errors import ArtifactError, ChecksumMismatchError, ConfigError  # noqa: E402
from vit_deploy.export.parity import cosine_rows  # noqa: E402
from vit_deploy.manifest import MANIFEST_NAME  # noqa: E402
from vit_deploy.model.vit import create_model  # noqa: E402
from vit_deploy.runtime import load_backend  # noqa: E402
from vit_deploy.runtime.openvino_backend import OpenVinoBackend  # noqa: E402
from vit_deploy.runtime.torch_backend import TorchBackend  # noqa: E402

CFG = ViTConfig(
    img_size=32,
    patch_size=8,
    embed_dim=64,
    depth=2,
    num_heads=2,
    num_classes=5,
    preprocess=Preprocess(img_size=32),
)


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=5)


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory):
    """fp32 artifact (default graph choice) verified through OpenVINO at f32 and bf16."""
    from vit_deploy.export.onnx.pipeline import export_onnx_artifact
    from vit_deploy.export.options import BatchProfile, OnnxExportOptions

    out = tmp_path_factory.mktemp("ov") / "tiny-fp32"
    options = OnnxExportOptions(
        verify_samples=16, batch=BatchProfile(1, 4, 8), verify_openvino=("f32", "bf16")
    )
    export_onnx_artifact(model, out, options)
    return out


def _pixels(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("batch", [1, 3])
def test_f32_matches_torch(model, artifact, batch):
    x = _pixels(batch, seed=batch)
    got = load_backend(artifact, backend="openvino")(x)
    ref = TorchBackend(model)(x)
    for name in ("logits", "embedding"):
        assert np.isfinite(got[name]).all()
        assert got[name].shape == ref[name].shape
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-3, atol=1e-4)


def test_manifest_records_openvino_parity_per_hint(artifact):
    serving = json.loads((artifact / MANIFEST_NAME).read_text())["serving"]["openvino"]
    assert set(serving) == {"f32", "bf16"}
    for hint, record in serving.items():
        assert record["passed"], (hint, record["gate"])
        assert record["report"]["outputs"]["embedding"]["cosine_min"] >= 0.99
    assert serving["bf16"]["gate"]["precision"] == "bf16"


def test_bf16_serving_is_close_to_torch_and_reports_what_it_runs(model, artifact):
    backend = OpenVinoBackend.from_artifact(artifact, precision="bf16", threads=1)
    x = _pixels(4, seed=7)
    got, ref = backend(x), TorchBackend(model)(x)
    assert np.isfinite(got["embedding"]).all()
    # bf16 keeps ~3 significant digits: close, not equal (the loosened tolerance is the gate's)
    assert cosine_rows(ref["embedding"], got["embedding"]).min() >= 0.99
    assert backend.inference_precision in ("bf16", "f32")  # f32 on CPUs without bf16


def test_bf16_refused_without_a_passing_record(artifact, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(artifact, copy)
    manifest_path = copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["serving"]["openvino"]["bf16"]["passed"] = False
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="got a failed check"):
        load_backend(copy, backend="openvino", precision="bf16")
    del manifest["serving"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="--verify-openvino bf16"):
        load_backend(copy, backend="openvino", precision="bf16")
    # opting out (the benchmark measures parity itself) still runs
    out = OpenVinoBackend.from_artifact(copy, precision="bf16", require_verified=False)(_pixels(1))
    assert np.isfinite(out["logits"]).all()


def test_options_are_checked_before_loading(artifact):
    with pytest.raises(ConfigError, match="precision: expected one of"):
        load_backend(artifact, backend="openvino", precision="fp8")
    with pytest.raises(ConfigError, match="mode: expected one of"):
        load_backend(artifact, backend="openvino", mode="fast")
    with pytest.raises(ConfigError, match="threads: expected a positive int"):
        load_backend(artifact, backend="openvino", threads=0)


def test_throughput_mode_and_concurrent_callers(artifact):
    backend = load_backend(artifact, backend="openvino", mode="throughput", threads=2)
    assert backend.thread_safe is True and backend.name == "openvino"
    x = [_pixels(2, seed=s) for s in range(4)]
    expected = [backend(xi)["embedding"] for xi in x]
    results = [None] * 4

    def work(i):
        results[i] = backend(x[i])["embedding"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_checksum_and_bad_file_are_typed_errors(artifact, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(artifact, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(ChecksumMismatchError):
        load_backend(copy, backend="openvino")
    (copy / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ArtifactError, match="OpenVINO can compile"):
        OpenVinoBackend.from_onnx(copy / "model.onnx", CFG)


def test_auto_stays_onnx_runtime(artifact):
    assert load_backend(artifact).name == "ort"
