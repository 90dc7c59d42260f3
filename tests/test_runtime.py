"""vit_deploy.runtime: one interface over PyTorch and ONNX Runtime, with checked inputs."""

import json
import shutil

import numpy as np
import pytest
import torch

from vit_deploy.config import Preprocess, ViTConfig
from vit_deploy.errors import (
    ArtifactError,
    BackendUnavailableError,
    ChecksumMismatchError,
    ConfigError,
    InputDTypeError,
    InputShapeError,
    ManifestError,
)
from vit_deploy.manifest import MANIFEST_NAME, file_entry, read_manifest, write_manifest
from vit_deploy.model.vit import create_model
from vit_deploy.runtime import load_backend
from vit_deploy.runtime.ort_backend import OrtBackend, pick_providers, spin_entries
from vit_deploy.runtime.torch_backend import TorchBackend

CFG = ViTConfig(
    img_size=16,
    patch_size=8,
    embed_dim=32,
    depth=1,
    num_heads=2,
    num_classes=5,
    preprocess=Preprocess(img_size=16),
)


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=3)


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory):
    from vit_deploy.export.onnx.pipeline import export_onnx_artifact
    from vit_deploy.export.options import BatchProfile, OnnxExportOptions

    out = tmp_path_factory.mktemp("runtime") / "tiny-fp32"
    options = OnnxExportOptions(optimize="plain", verify_samples=8, batch=BatchProfile(1, 2, 4))
    export_onnx_artifact(model, out, options)
    return out


@pytest.fixture
def artifact_copy(artifact, tmp_path):
    dst = tmp_path / "artifact"
    shutil.copytree(artifact, dst)
    return dst


def _pixels(batch, size=16, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size), dtype=np.float32)


def test_torch_backend_matches_forward_all(model):
    backend = load_backend(model)
    assert isinstance(backend, TorchBackend) and backend.name == "torch"
    assert backend.output_names == ["logits", "embedding"] and backend.manifest is None
    x = _pixels(3)
    out = backend(torch.from_numpy(x))
    logits, emb = model.forward_all(torch.from_numpy(x))
    np.testing.assert_allclose(out["logits"], logits.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["embedding"], emb.detach().numpy(), rtol=0, atol=1e-6)
    assert all(np.isfinite(v).all() for v in out.values())


def test_ort_backend_matches_torch_at_several_batch_sizes(model, artifact):
    ort_backend = load_backend(artifact)
    assert isinstance(ort_backend, OrtBackend) and ort_backend.name == "ort"
    assert ort_backend.manifest["artifact"]["format"] == "onnx"
    assert ort_backend.config == CFG and ort_backend.providers[-1] == "CPUExecutionProvider"
    reference = TorchBackend(model)
    for batch in (1, 3, 4):
        x = _pixels(batch, seed=batch)
        got, want = ort_backend(x), reference(x)
        assert set(got) == {"logits", "embedding"}
        for name in got:
            assert got[name].shape == want[name].shape and got[name].dtype == np.float32
            assert np.isfinite(got[name]).all()
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_ort_backend_threads_and_providers(artifact):
    backend = OrtBackend.from_artifact(artifact, providers=["CPUExecutionProvider"], threads=1)
    assert backend.providers == ["CPUExecutionProvider"]
    assert backend(_pixels(2))["logits"].shape == (2, 5)
    with pytest.raises(BackendUnavailableError, match="not available here"):
        OrtBackend.from_artifact(artifact, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ConfigError, match="threads: expected a positive int"):
        OrtBackend.from_artifact(artifact, threads=0)
    assert pick_providers()[-1] == "CPUExecutionProvider"


def test_spin_settings_become_session_entries(caplog):
    assert spin_entries(True, "1.32.0") == {}  # ONNX Runtime's own policy
    assert spin_entries(False, "1.32.0") == {"session.intra_op.allow_spinning": "0"}
    assert spin_entries(0, "1.32.0") == {"session.intra_op.allow_spinning": "0"}
    assert spin_entries(200, "1.26.0.dev20260505") == {"session.intra_op.spin_duration_us": "200"}
    # a version that ignores the duration would spin unbounded: it gets no spinning, said so
    assert spin_entries(200, "1.25.1") == {"session.intra_op.allow_spinning": "0"}
    assert "cannot bound" in caplog.text
    for bad in (-1, 2.5, "200"):
        with pytest.raises(ConfigError, match="spin: expected True, False or microseconds"):
            spin_entries(bad, "1.32.0")


def test_bounded_spin_reaches_the_session(artifact):
    backend = OrtBackend.from_artifact(artifact, spin=300)
    options = backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.spin_duration_us") == "300"
    assert backend(_pixels(2))["logits"].shape == (2, 5)


@pytest.mark.parametrize("make_backend", ["torch", "ort"])
def test_inputs_are_checked_before_inference(model, artifact, make_backend):
    backend = TorchBackend(model) if make_backend == "torch" else load_backend(artifact)
    with pytest.raises(InputDTypeError, match="expected float32 pixels, got float64"):
        backend(_pixels(2).astype(np.float64))
    with pytest.raises(InputDTypeError, match="expected float32 pixels, got torch.float16"):
        backend(torch.zeros(1, 3, 16, 16, dtype=torch.float16))
    with pytest.raises(InputDTypeError, match="got list"):
        backend([[0.0]])
    with pytest.raises(InputShapeError, match=r"expected a 4-D batch .* got 3-D"):
        backend(_pixels(1)[0])
    with pytest.raises(
        InputShapeError, match=r"expected shape \('B', 3, 16, 16\).*got \(2, 3, 32, 32\)"
    ):
        backend(_pixels(2, size=32))
    with pytest.raises(InputShapeError, match="got \\(0, 3, 16, 16\\)"):
        backend(np.zeros((0, 3, 16, 16), np.float32))


def test_missing_model_file(artifact_copy):
    (artifact_copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="expected model.onnx"):
        load_backend(artifact_copy)


def test_corrupt_model_file_with_a_matching_checksum(artifact_copy):
    (artifact_copy / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    manifest = read_manifest(artifact_copy)
    manifest["artifact"].update(file_entry(artifact_copy, "model.onnx"))
    write_manifest(artifact_copy, manifest)
    with pytest.raises(ArtifactError, match="could not load it"):
        load_backend(artifact_copy)


def test_checksum_mismatch(artifact_copy):
    import onnx

    proto = onnx.load(artifact_copy / "model.onnx")
    proto.doc_string = "edited after export"  # still a valid model, no longer the exported one
    onnx.save_model(proto, artifact_copy / "model.onnx")
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch: expected"):
        load_backend(artifact_copy)
    # skipping the check is possible, and then the (still valid) file loads
    assert OrtBackend.from_artifact(artifact_copy, verify=False)(_pixels(1))["logits"].shape == (
        1,
        5,
    )


def test_manifest_from_a_newer_format(artifact_copy):
    path = artifact_copy / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["format"] = "vit_deploy.manifest/9"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="newer than this vit_deploy supports"):
        load_backend(artifact_copy)


def test_missing_manifest_and_missing_dir(artifact_copy, tmp_path):
    (artifact_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="expected manifest.json"):
        load_backend(artifact_copy)
    with pytest.raises(ArtifactError, match="no such path"):
        load_backend(tmp_path / "nowhere")


def test_backend_names_have_one_spelling():
    from vit_deploy.runtime import BACKEND_NAMES, canonical_backend

    assert canonical_backend("tensorrt") == "trt" and canonical_backend("onnxruntime") == "ort"
    assert all(canonical_backend(n) == n for n in BACKEND_NAMES)
    assert canonical_backend("tpu") == "tpu"  # unknown: left for the caller to refuse


def test_backends_say_whether_they_are_thread_safe(artifact_copy, model):
    assert load_backend(artifact_copy).thread_safe is True  # InferenceSession.run
    assert load_backend(model).thread_safe is False  # torch modules: called under a lock


def test_unknown_artifact_format_and_backend(artifact_copy, model):
    with pytest.raises(ConfigError, match=r"expected one of \['auto', 'ort', 'openvino'\]"):
        load_backend(artifact_copy, backend="trt")
    with pytest.raises(ConfigError, match="got 'trt'"):  # aliases are canonicalised first
        load_backend(artifact_copy, backend="TensorRT")
    with pytest.raises(ConfigError, match="runs on 'torch'"):
        load_backend(model, backend="ort")
    with pytest.raises(ConfigError, match="expected an artifact directory or a VisionTransformer"):
        load_backend(42)
    manifest = read_manifest(artifact_copy)
    manifest["artifact"]["format"] = "openvino"
    write_manifest(artifact_copy, manifest)
    with pytest.raises(BackendUnavailableError, match="no backend here runs 'openvino' artifacts"):
        load_backend(artifact_copy)
    # a TensorRT artifact has a loader, which refuses here (no GPU, no TensorRT)
    manifest["artifact"]["format"] = "trt"
    write_manifest(artifact_copy, manifest)
    with pytest.raises(BackendUnavailableError, match="TensorRT|CUDA"):
        load_backend(artifact_copy)
    with pytest.raises(ArtifactError, match="expected an 'onnx' artifact"):
        OrtBackend.from_artifact(artifact_copy)


def test_onnx_file_that_does_not_fit_the_config(artifact):
    other = CFG.replace(img_size=24)
    with pytest.raises(ArtifactError, match="does not match the model config"):
        OrtBackend.from_onnx(artifact / "model.onnx", other)
