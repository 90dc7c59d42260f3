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
from pathlib import Path, PurePosixPath, PureWindowsPath

from vit_deploy.errors import ArtifactError, ChecksumMismatchError, ManifestError
from vit_deploy.storage import atomic_write_text

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
    for entry in artifact_files(manifest):
        check_file_name(entry.get("file") if isinstance(entry, dict) else entry, source)
    return manifest


def check_file_name(name: object, source: str = "manifest") -> str:
    """A manifest's file entry must name a file inside the artifact folder: relative, no
    ``..``; anything else could make a reader load (and trust) a file from elsewhere."""
    text = name if isinstance(name, str) else None
    parts = PurePosixPath(text).parts if text else ()
    if (
        not text
        or PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or "\\" in text
        or ".." in parts
    ):
        raise ManifestError(
            f"{source}: artifact file: expected a file name inside the artifact folder, "
            f"got {name!r}"
        )
    return text


def artifact_path(directory: str | os.PathLike, name: str) -> Path:
    """``directory / name``, refused (ManifestError) when it resolves outside ``directory``
    (a ``..`` or a symlink that leads out)."""
    directory = Path(directory)
    path = directory / check_file_name(name, str(directory / MANIFEST_NAME))
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise ManifestError(
            f"{directory / MANIFEST_NAME}: artifact file {name!r}: expected a file inside "
            f"{str(root)!r}, got one that resolves to {str(path.resolve())!r}"
        )
    return path


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temp file + rename). Sets ``format`` if absent."""
    directory = Path(directory)
    manifest = {"format": FORMAT, **manifest}
    check_manifest(manifest, source="manifest to write")
    text = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_text(directory / MANIFEST_NAME, text)


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
        path = artifact_path(directory, entry["file"])
        if not path.is_file():
            raise ArtifactError(f"expected {entry['file']} in {directory}, found no such file")
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise ChecksumMismatchError(
                f"{path}: sha256 mismatch: expected {entry['sha256']}, got {got} "
                "(the file changed after export; re-export it)"
            )
    return manifest


# ---------------------------------------------------------------------- graph I/O


BATCH_DIM = "batch"
# ONNX Runtime spells element types "tensor(float)"; everything else compares numpy names
_ORT_DTYPES = {
    "float": "float32",
    "double": "float64",
    "float16": "float16",
    "bfloat16": "bfloat16",
}


def dtype_name(dtype: object) -> str:
    """numpy's name of a dtype as a runtime reports it: ``"tensor(float)"`` -> ``"float32"``."""
    text = str(dtype)
    if text.startswith("tensor(") and text.endswith(")"):
        inner = text[len("tensor(") : -1]
        return _ORT_DTYPES.get(inner, inner)
    try:
        import numpy as np

        return np.dtype(dtype).name
    except TypeError:
        return text


def expected_io(manifest: dict) -> tuple[list[dict], list[dict]]:
    """What ``manifest["model"]`` implies for the I/O: pixels (batch, C, S, S), logits
    (batch, classes), embedding (batch, width)."""
    model = manifest.get("model", {})
    chans, size = model.get("in_chans", 3), model.get("img_size")
    dims = {"logits": model.get("num_classes"), "embedding": model.get("embed_dim")}
    inputs = [{"name": "pixels", "shape": [BATCH_DIM, chans, size, size]}]
    outputs = [
        {"name": o.get("name"), "shape": [BATCH_DIM, dims.get(o.get("name"))]}
        for o in manifest.get("outputs", [])
        if isinstance(o, dict)
    ]
    return inputs, outputs


def _shape_differences(where: str, want: list, got: list) -> list[str]:
    if len(want) != len(got):
        return [f"{where}: manifest shape {want}, graph has rank {len(got)} ({got})"]
    diffs = []
    for axis, (w, g) in enumerate(zip(want, got, strict=True)):
        static = isinstance(g, int) and not isinstance(g, bool) and g >= 0
        if isinstance(w, int) and static and w != g:
            diffs.append(f"{where} dim {axis}: manifest {w}, graph {g}")
        elif w == BATCH_DIM and static:
            diffs.append(f"{where} dim {axis} (batch): manifest dynamic, graph fixed at {g}")
    return diffs


def _io_differences(kind: str, declared: list, graph: list, compare_dtype: bool) -> list[str]:
    want = {d.get("name"): d for d in declared if isinstance(d, dict)}
    got = {name: (dtype, list(shape)) for name, dtype, shape in graph}
    diffs = []
    if sorted(want) != sorted(got):
        diffs.append(f"{kind} names: manifest {sorted(map(str, want))}, graph {sorted(got)}")
    for name in sorted(set(want) & set(got)):
        entry, (dtype, shape) = want[name], got[name]
        if compare_dtype and "dtype" in entry and entry["dtype"] != dtype_name(dtype):
            diffs.append(
                f"{kind} {name} dtype: manifest {entry['dtype']}, graph {dtype_name(dtype)}"
            )
        if "shape" in entry:
            diffs += _shape_differences(f"{kind} {name}", list(entry["shape"]), shape)
    return diffs


def check_graph_io(manifest: dict, inputs, outputs, source: str = "artifact") -> None:
    """Refuse an artifact whose graph is not the one its manifest describes.

    ``inputs``/``outputs``: ``[(name, dtype, shape)]`` as the runtime reports them (dtype in
    any spelling ``dtype_name`` knows; a dynamic dim as a string, None or -1). Checked: the
    manifest's I/O against its own model config (classes, embedding width, image size), its
    labels against the class count, and the graph's names, dtypes and dims against the
    manifest's I/O (the batch axis must be dynamic). Every difference in one ManifestError.
    """
    diffs = []
    implied_in, implied_out = expected_io(manifest)
    diffs += _io_differences(
        "input",
        manifest.get("inputs", []),
        [(d["name"], None, d["shape"]) for d in implied_in],
        False,
    )
    for d in implied_out:
        declared = next(o for o in manifest["outputs"] if o.get("name") == d["name"])
        diffs += _shape_differences(
            f"output {d['name']} (vs model config)", list(declared.get("shape", [])), d["shape"]
        )
    labels = manifest.get("labels")
    classes = manifest.get("model", {}).get("num_classes")
    if isinstance(labels, list) and labels and classes and len(labels) != classes:
        diffs.append(f"labels: {len(labels)} names, model config says {classes} classes")
    diffs += _io_differences("input", manifest.get("inputs", []), inputs, True)
    diffs += _io_differences("output", manifest.get("outputs", []), outputs, True)
    if diffs:
        raise ManifestError(
            f"{source}: the manifest does not describe this graph (re-export the artifact): "
            + "; ".join(diffs)
        )


def check_outputs(outputs: dict, rows: int, config) -> dict:
    """A backend's outputs for a batch of ``rows``: (rows, num_classes) logits and (rows,
    embed_dim) embeddings, else ArtifactError (the artifact is not what it says it is);
    returns ``outputs`` unchanged."""
    widths = {"logits": config.num_classes, "embedding": config.embed_dim}
    for name, value in outputs.items():
        want = (rows, widths[name]) if name in widths else None
        got = tuple(getattr(value, "shape", ()))
        if want is not None and got != want:
            raise ArtifactError(
                f"output {name}: expected shape {want} (batch, "
                f"{'classes' if name == 'logits' else 'embedding width'} of the model config), "
                f"got {got}; the artifact's graph does not match its config: re-export it"
            )
    return outputs


def _json_default(obj):
    # numpy scalars and paths show up in reports; store them as plain JSON values
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a manifest")
