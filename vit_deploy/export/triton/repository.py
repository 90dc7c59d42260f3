"""A Triton Inference Server model repository entry from an exported artifact.

``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/`` holding the model file under the name
Triton loads (``model.onnx`` or ``model.plan``) beside our ``manifest.json`` (the
artifact's, with that file as the artifact and a ``triton`` section), so the version
directory is itself a vit_deploy artifact (``Embedder.from_artifact(REPO/NAME/1)``).

``max_batch_size`` is the artifact's batch profile MAX, or less when asked, never more:
a TensorRT engine refuses batches beyond its profile, and Triton refuses to load a
config that promises more than the engine takes. Preprocessing is not in the repository:
a client resizes and normalises with the manifest's ``preprocess`` values.

The entry is written to a hidden staging directory inside REPO and renamed into place
(``vit_deploy.storage.staged_dir``: ``REPO/NAME``'s lock is held meanwhile, so a second
writer of the same entry stops with ``OutputLockedError`` naming the first, and staging
dirs of killed runs are removed), so Triton (or a reader) never sees half a model.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vit_deploy.batch_profile import BatchProfile
from vit_deploy.errors import ArtifactError, ConfigError
from vit_deploy.export.triton.config import (
    KINDS,
    PLATFORMS,
    TritonModelConfig,
    preferred_sizes,
    tensor_specs,
)
from vit_deploy.manifest import (
    MANIFEST_NAME,
    artifact_path,
    file_entry,
    verify_checksum,
    write_manifest,
)
from vit_deploy.storage import StagedDir, staged_dir

CONFIG_NAME = "config.pbtxt"
VERSION = "1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_QUEUE_DELAY_US = 1000


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None  # default: the artifact directory's name
    instances: int = 1
    kind: str | None = None  # "cpu" | "gpu"; default gpu for plans, cpu for ONNX
    max_batch: int | None = None  # default: the profile's MAX
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US


@dataclass(frozen=True)
class TritonModel:
    directory: Path  # REPO/NAME
    config: TritonModelConfig
    profile: BatchProfile
    manifest: dict


def artifact_profile(manifest: dict) -> BatchProfile:
    """The batch sizes the artifact was built (TensorRT) or verified for (ONNX)."""
    fmt = manifest["artifact"]["format"]
    recorded = manifest.get("batch_profile")
    if fmt == "trt":
        engine = (manifest.get("engine") or {}).get("profile")
        if engine is None:
            raise ArtifactError("engine.profile: expected the engine's batch profile, got none")
        profile = BatchProfile.from_dict(engine)
        if recorded is not None and BatchProfile.from_dict(recorded) != profile:
            raise ArtifactError(
                f"batch_profile: expected the engine's {profile}, got "
                f"{BatchProfile.from_dict(recorded)}"
            )
        return profile
    if recorded is None:
        raise ArtifactError(
            "batch_profile: expected MIN:OPT:MAX in the manifest (Triton's max_batch_size "
            "comes from it), got none; re-export with vit-export --batch"
        )
    return BatchProfile.from_dict(recorded)


def model_config(manifest: dict, name: str, options: TritonOptions) -> TritonModelConfig:
    fmt = manifest["artifact"]["format"]
    if fmt not in PLATFORMS:
        raise ArtifactError(f"artifact format: expected one of {sorted(PLATFORMS)}, got {fmt!r}")
    profile = artifact_profile(manifest)
    max_batch = profile.max if options.max_batch is None else options.max_batch
    if not 1 <= max_batch <= profile.max:
        raise ConfigError(
            f"expected 1..{profile.max} (the artifact's batch profile {profile}), got {max_batch}",
            option="max_batch",
        )
    if fmt == "trt" and profile.min > 1:
        raise ArtifactError(
            f"engine profile: expected MIN 1 (Triton sends any batch from 1 to max_batch_size), "
            f"got {profile}; rebuild with --batch 1:{profile.opt}:{profile.max}"
        )
    kind = options.kind or ("gpu" if fmt == "trt" else "cpu")
    if kind not in KINDS or (fmt == "trt" and kind != "gpu"):
        allowed = ["gpu"] if fmt == "trt" else sorted(KINDS)
        raise ConfigError(
            f"expected one of {allowed} for a {fmt} model, got {kind!r}", option="kind"
        )
    if options.instances < 1:
        raise ConfigError(f"expected >= 1, got {options.instances}", option="instances")
    if options.queue_delay_us < 0:
        raise ConfigError(f"expected >= 0, got {options.queue_delay_us}", option="queue_delay_us")
    return TritonModelConfig(
        name=name,
        platform=PLATFORMS[fmt][0],
        max_batch_size=max_batch,
        inputs=tensor_specs(manifest["inputs"], "input"),
        outputs=tensor_specs(manifest["outputs"], "output"),
        preferred_batch_sizes=preferred_sizes(profile.opt, max_batch),
        queue_delay_us=options.queue_delay_us,
        kind=KINDS[kind],
        instances=options.instances,
    )


def write_triton_model(
    artifact: str | os.PathLike, repo: str | os.PathLike, options: TritonOptions | None = None
) -> TritonModel:
    """Write ``repo/NAME`` for ``artifact`` (checked against its manifest's sha256 first)."""
    options = options or TritonOptions()
    artifact, repo = Path(artifact), Path(repo)
    manifest = verify_checksum(artifact)
    name = options.name or artifact.resolve().name
    if not NAME_RE.match(name):
        raise ConfigError(
            f"expected letters, digits, '_', '.', '-' (a directory name), got {name!r}",
            option="name",
        )
    config = model_config(manifest, name, options)
    target = repo / name
    _check_replaceable(target)
    with _staged(repo, target) as stage:
        staging = stage.path
        model_file = PLATFORMS[manifest["artifact"]["format"]][1]
        version = staging / VERSION
        version.mkdir()
        shutil.copyfile(artifact_path(artifact, manifest["artifact"]["file"]), version / model_file)
        extra = []
        if manifest["artifact"]["format"] == "onnx":  # ONNX external data files stay beside it
            for entry in manifest["artifact"].get("extra_files", []):
                shutil.copyfile(artifact_path(artifact, entry["file"]), version / entry["file"])
                extra.append(file_entry(version, entry["file"]))
        written = _repository_manifest(manifest, version, model_file, extra, artifact, config)
        write_manifest(version, written)
        header = f"written by vit-export --fmt triton from {artifact.resolve()}"
        (staging / CONFIG_NAME).write_text(config.to_pbtxt(header))
        _check_replaceable(target)  # checked again under the lock
        stage.publish()  # storage.replace_dir: an earlier entry stays until this rename
    return TritonModel(target, config, artifact_profile(manifest), written)


def _repository_manifest(manifest, version: Path, model_file, extra, source: Path, config):
    out = {k: v for k, v in manifest.items() if k != "format"}
    out["artifact"] = {
        "format": manifest["artifact"]["format"],
        **file_entry(version, model_file),
        **({"extra_files": extra} if extra else {}),
    }
    out["triton"] = {
        "name": config.name,
        "platform": config.platform,
        "max_batch_size": config.max_batch_size,
        "source": os.fspath(source.resolve()),
        "source_sha256": manifest["artifact"]["sha256"],
        "preprocessing": "on the client, with this manifest's 'preprocess' values",
    }
    return out


def _check_replaceable(target: Path) -> None:
    """A new name, or an entry this function wrote before (it is replaced)."""
    if not target.exists():
        return
    if not (target / VERSION / MANIFEST_NAME).is_file() or not (target / CONFIG_NAME).is_file():
        raise ConfigError(
            f"expected a new model name or an earlier vit-export triton entry to replace, got "
            f"{str(target)!r} (exists, and is not one)",
            option="name",
        )


def _staged(repo: Path, target: Path) -> StagedDir:
    try:
        repo.mkdir(parents=True, exist_ok=True)
        return staged_dir(target)
    except OSError as exc:
        raise ConfigError(
            f"expected a writable directory, got {str(repo)!r} ({exc.strerror or exc})",
            option="out",
        ) from exc


__all__ = ["CONFIG_NAME", "TritonModel", "TritonOptions", "artifact_profile", "write_triton_model"]
