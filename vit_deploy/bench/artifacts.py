"""``--artifacts DIR...``: exported models to benchmark instead of exporting new ones.

Each directory's manifest says what it is: an ``onnx`` artifact runs on ONNX Runtime,
an artifact with an ``engine`` section on TensorRT; its precision comes from the
manifest too. Everything is checked before anything long starts: the manifest, every
file's sha256 (a corrupt or truncated file is refused), that the artifact was
exported from the model being benchmarked, and, for an engine, that every batch size
asked for lies inside its optimisation profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vit_deploy.errors import ArtifactError, ConfigError


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path
    backend: str  # "ort" or "trt"
    precision: str
    profile: object | None  # an export.batch_profile.BatchProfile for engines
    model: dict  # the manifest's ViTConfig dict

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "path": str(self.path),
            "profile": str(self.profile) if self.profile is not None else None,
        }


def read_artifact(path: str | Path) -> ArtifactInfo:
    from vit_deploy.manifest import artifact_path, check_graph_io, read_manifest, verify_checksum

    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(
            f"expected an exported artifact directory, got {str(path)!r} (no such directory)",
            option="artifacts",
        )
    manifest = read_manifest(path)
    fmt = manifest["artifact"]["format"]
    if fmt == "onnx":
        backend, profile = "ort", None
        precision = manifest.get("precision", {}).get("mode", "fp32")
    elif fmt == "trt":
        from vit_deploy.batch_profile import BatchProfile
        from vit_deploy.runtime.tensorrt.backend import read_engine_manifest

        manifest = read_engine_manifest(path)
        section = manifest["engine"]
        precision = section.get("requested_precision") or section.get("precision", "fp16")
        backend = "trt"
        profile = BatchProfile.from_dict(section["profile"])
    else:
        raise ArtifactError(
            f"{path}: expected an 'onnx' or 'trt' artifact (vit-export), got format {fmt!r}"
        )
    verify_checksum(path, manifest)  # ChecksumMismatchError for a corrupt or changed file
    if fmt == "onnx":  # a graph its manifest does not describe: refused now, not mid-run
        check_graph_io(manifest, *onnx_graph_io(artifact_path(path, manifest["artifact"]["file"])),
                       source=str(path))  # fmt: skip
    return ArtifactInfo(path, backend, precision, profile, manifest["model"])


def onnx_graph_io(path: Path) -> tuple[list[tuple], list[tuple]]:
    """([(name, dtype, shape)] of the graph inputs, the same of the outputs), read from the
    ONNX file without its external data and without a session; a symbolic dim as its name."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(path, load_external_data=False).graph

    def io(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out.append((v.name, tensor_dtype_to_np_dtype(t.elem_type), dims))
        return out

    return io(graph.input), io(graph.output)


def check_artifacts(artifacts: list[ArtifactInfo], batch_sizes, config) -> None:
    """ConfigError for duplicates, batches outside an engine's profile, or another model."""
    from vit_deploy.config import ViTConfig

    seen: dict[tuple[str, str], Path] = {}
    for a in artifacts:
        key = (a.backend, a.precision)
        if key in seen:
            raise ConfigError(
                f"expected one {a.backend} {a.precision} artifact, got two: "
                f"{seen[key]} and {a.path}",
                option="artifacts",
            )
        seen[key] = a.path
        if a.profile is not None:
            outside = [b for b in batch_sizes if not a.profile.contains(b)]
            if outside:
                raise ConfigError(
                    f"{outside} outside the engine's profile {a.profile} (MIN:OPT:MAX) in "
                    f"{a.path}; expected batch sizes in [{a.profile.min}, {a.profile.max}], "
                    "or an engine rebuilt with a wider batch profile",
                    option="batch_sizes",
                )
        if config is not None and a.model:
            theirs = ViTConfig.from_dict(a.model)
            if theirs != config:
                raise ArtifactError(
                    f"{a.path}: exported from another model than the one benchmarked "
                    f"(expected img {config.img_size}, width {config.embed_dim}, depth "
                    f"{config.depth}; got img {theirs.img_size}, width {theirs.embed_dim}, "
                    f"depth {theirs.depth}); pass the matching --model"
                )
