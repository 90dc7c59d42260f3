"""manifest.json: atomic write, checked read, format versions, checksums."""

import hashlib
import json

import pytest

from vit_deploy.errors import ArtifactError, ChecksumMismatchError, ManifestError
from vit_deploy.manifest import (
    FORMAT,
    MANIFEST_NAME,
    check_manifest,
    file_entry,
    read_manifest,
    verify_checksum,
    write_manifest,
)


def _artifact(tmp_path, payload=b"model bytes"):
    (tmp_path / "model.onnx").write_bytes(payload)
    return {
        "artifact": {"format": "onnx", **file_entry(tmp_path, "model.onnx")},
        "model": {"img_size": 32},
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": ["batch", 3, 32, 32]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}],
    }


def test_round_trip_sets_format_and_keeps_unknown_sections(tmp_path):
    manifest = _artifact(tmp_path)
    manifest["engine"] = {"tensorrt": "10.12", "gpu": "H100", "compute_capability": "9.0"}
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / MANIFEST_NAME
    got = read_manifest(tmp_path)
    assert got["format"] == FORMAT
    assert got["engine"]["gpu"] == "H100"
    assert got["artifact"]["sha256"] == hashlib.sha256(b"model bytes").hexdigest()
    assert got["artifact"]["size_bytes"] == len(b"model bytes")
    # atomic: no temp files left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, "model.onnx"]


def test_write_refuses_an_incomplete_manifest(tmp_path):
    with pytest.raises(ManifestError, match="missing required keys: .*outputs"):
        write_manifest(tmp_path, {"artifact": {}, "model": {}, "inputs": []})
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_newer_major_version_is_refused_with_the_supported_one(tmp_path):
    manifest = {**_artifact(tmp_path), "format": "vit_deploy.manifest/2"}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"newer .*expected major version <= 1"):
        read_manifest(tmp_path)


def test_newer_minor_version_is_accepted(tmp_path):
    manifest = {**_artifact(tmp_path), "format": "vit_deploy.manifest/1.7"}
    assert check_manifest(manifest)["format"].endswith("1.7")


@pytest.mark.parametrize("fmt", ["vit_deploy.manifest", "other/1", 1, "vit_deploy.manifest/x"])
def test_malformed_format_string(tmp_path, fmt):
    with pytest.raises(ManifestError, match="format: expected 'vit_deploy.manifest/<version>'"):
        check_manifest({**_artifact(tmp_path), "format": fmt})


def test_missing_keys_are_all_listed(tmp_path):
    manifest = {"format": FORMAT, "artifact": {"format": "onnx"}, "model": {}}
    with pytest.raises(ManifestError) as info:
        check_manifest(manifest)
    msg = str(info.value)
    for key in ("inputs", "outputs", "artifact.file", "artifact.sha256", "artifact.size_bytes"):
        assert key in msg


def test_unreadable_and_missing_manifests(tmp_path):
    with pytest.raises(ManifestError, match="expected manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="expected JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        read_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="not a directory"):
        read_manifest(tmp_path / MANIFEST_NAME)


def test_verify_checksum(tmp_path):
    write_manifest(tmp_path, _artifact(tmp_path))
    assert verify_checksum(tmp_path)["artifact"]["file"] == "model.onnx"
    (tmp_path / "model.onnx").write_bytes(b"model bytez")
    with pytest.raises(ChecksumMismatchError, match="expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        verify_checksum(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="expected model.onnx"):
        verify_checksum(tmp_path)


def test_verify_checksum_covers_extra_files(tmp_path):
    manifest = _artifact(tmp_path)
    (tmp_path / "model.engine").write_bytes(b"engine")
    manifest["artifact"]["extra_files"] = [file_entry(tmp_path, "model.engine")]
    write_manifest(tmp_path, manifest)
    verify_checksum(tmp_path)
    (tmp_path / "model.engine").write_bytes(b"engine2")
    with pytest.raises(ChecksumMismatchError, match="model.engine"):
        verify_checksum(tmp_path)
