"""The manifest (``manifest.json``) that sits beside every exported artifact.

A manifest is a plain JSON dict. The fields every reader relies on:

``format``      ``"vit_deploy.manifest/<major>"``; a reader refuses a newer major version
``artifact``    ``{"format": "onnx" | "trt" | ..., "file", "sha256", "size_bytes"}``, plus
                optional ``"extra_files"``: ``[{"file", "sha256", "size_bytes"}, ...]``
``model``       ``ViTConfig.to_dict()``
``inputs``      ``[{"name", "dtype", "shape"}]`` with ``"batch"`` as the symbolic batch dim
``outputs``     the same, for ``"logits"`` and/or ``"embedding"``

Everything else is a section of its own, written by whoever knows it: ``preprocess``,
``labels``, ``precision``, ``onnx``, ``batch_profile``, ``fusion``, ``parity``,
``versions``, ``export``. A new backend adds its own section (TensorRT: ``"engine"``
with the TensorRT and CUDA versions, GPU name and compute capability) without
touching this module; unknown sections are kept as they are on read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from vit_deploy.errors import ArtifactError, ChecksumMismatchError, ManifestError

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "vit_deploy.manifest"
FORMAT_MAJOR = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_MAJOR}"
REQUIRED_KEYS = ("format", "artifact", "model", "inputs", "outputs")
REQUIRED_ARTIFACT_KEYS = ("format", "file", "sha256", "size_bytes")

_FORMAT_RE = re.compile(rf"^{re.escape(FORMAT_NAME)}/(\d+)(?:\.(\d+))?$")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(directory: str | os.PathLike, name: str) -> dict:
    """``{"file", "sha256", "size_bytes"}`` for a file inside an artifact directory."""
    path = Path(directory) / name
    return {"file": name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def format_major(value: object) -> int:
    """The major version of a manifest ``format`` string; ManifestError if it is not one."""
    match = _FORMAT_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ManifestError(f"format: expected '{FORMAT_NAME}/<version>', got {value!r}")
    return int(match.group(1))


def check_manifest(manifest: object, source: str = "manifest") -> dict:
    """Check the format version and the required keys; return the manifest unchanged."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{source}: expected a JSON object, got {type(manifest).__name__}")
    if "format" not in manifest:
        raise ManifestError(f"{source}: expected a 'format' key ('{FORMAT}'), found none")
    major = format_major(manifest["format"])
    if major > FORMAT_MAJOR:
        raise ManifestError(
            f"{source}: format {manifest['format']!r} is newer than this vit_deploy supports "
            f"(expected major version <= {FORMAT_MAJOR}, i.e. '{FORMAT}'); upgrade vit_deploy"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    artifact = manifest.get("artifact")
    if isinstance(artifact, dict):
        missing += [f"artifact.{k}" for k in REQUIRED_ARTIFACT_KEYS if k not in artifact]
    elif "artifact" in manifest:
        missing.append("artifact (expected an object)")
    if missing:
        raise ManifestError(f"{source}: missing required keys: {', '.join(missing)}")
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename). Sets ``format`` if absent."""
    directory = Path(directory)
    manifest = {"format": FORMAT, **manifest}
    check_manifest(manifest, source="manifest to write")
    text = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, directory / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / MANIFEST_NAME


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and check ``manifest.json`` from an artifact directory."""
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise ArtifactError(
            f"expected an artifact directory, got {str(directory)!r} (not a directory)"
        )
    if not path.is_file():
        raise ManifestError(f"expected {MANIFEST_NAME} in {directory}, found no such file")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: expected JSON, could not parse it ({exc})") from exc
    return check_manifest(manifest, source=str(path))


def artifact_files(manifest: dict) -> list[dict]:
    """The main artifact file entry followed by any extra file entries."""
    return [manifest["artifact"], *manifest["artifact"].get("extra_files", [])]


def verify_checksum(directory: str | os.PathLike, manifest: dict | None = None) -> dict:
    """Check every artifact file's size and sha256 against the manifest; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    for entry in artifact_files(manifest):
        path = directory / entry["file"]
        if not path.is_file():
            raise ArtifactError(f"expected {entry['file']} in {directory}, found no such file")
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise ChecksumMismatchError(
                f"{path}: sha256 mismatch: expected {entry['sha256']}, got {got} "
                "(the file changed after export; re-export it)"
            )
    return manifest


def _json_default(obj):
    # numpy scalars and paths show up in reports; store them as plain JSON values
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a manifest")
