"""Where an engine was built and where it runs: environment, manifest section, checks.

- ``environment`` / ``capture_environment``: TensorRT, CUDA, GPU and compute capability;
- ``check_engine_section``: checks the "engine" section of ``manifest.json`` (written by
  ``vit_deploy.export.tensorrt.artifact.engine_manifest_section``);
- ``check_engine_compat``: what differs between the engine's build machine and this one
  (an engine built for another TensorRT or GPU is refused), and ``rebuild_command``,
  the exact command that rebuilds it;
- ``tensorrt_problems`` / ``require_tensorrt``: the one-line reason TensorRT cannot run
  here, and what works instead.

TensorRT is imported lazily, inside the functions that ask for its version.
"""

from __future__ import annotations

import platform
import shlex
from collections.abc import Mapping, Sequence

from vit_deploy.batch_profile import BatchProfile
from vit_deploy.errors import BackendUnavailableError, ManifestError
from vit_deploy.runtime.base import version_tuple

ENGINE_SECTION_FORMAT = "vit_deploy.engine/1"
# The oldest release whose API surface CI checks (tests/data/trt_api). STRONGLY_TYPED exists
# since 10.0; 10.12 deprecated the weak-typing builder flags that 11.x removed.
MIN_TENSORRT = (10, 12)
ENGINE_FILE = "model.engine"

# --------------------------------------------------------------------------------------
# Environment, the manifest's "engine" section, and the compatibility check
# --------------------------------------------------------------------------------------


def environment(
    tensorrt_version: str | None,
    cuda_version: str | None,
    gpu_name: str | None,
    compute_capability: str | None,
    **extra,
) -> dict:
    """The environment dict an engine is built in / loaded in (plain values, JSON-ready)."""
    env = {
        "tensorrt_version": tensorrt_version,
        "cuda_version": cuda_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    env.update(extra)
    return env


def capture_environment() -> dict:
    """This machine's environment (TensorRT, CUDA, GPU); None where something is missing."""
    trt_version = cuda_version = gpu_name = capability = torch_version = None
    try:
        import tensorrt as trt  # noqa: F401  (lazy: only where installed)

        trt_version = str(trt.__version__)
    except Exception:
        pass
    try:
        import torch

        torch_version = torch.__version__
        cuda_version = torch.version.cuda
        if torch.cuda.is_available():
            gpu_name = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            capability = f"{major}.{minor}"
    except Exception:
        pass
    return environment(trt_version, cuda_version, gpu_name, capability, torch_version=torch_version)


def rebuild_command(section: Mapping) -> str:
    """The command that rebuilds the engine described by ``section``, from the model spec
    its ``build`` record stores (``vit_deploy.checkpoints.spec.ModelSpec.cli_args``)."""
    build = section.get("build", {})
    profile = section.get("profile", {})
    if "model_args" in build:
        model_args = build["model_args"]
        if model_args is None:
            return (
                "(none: the engine was exported from a model built in Python; save it with "
                "vit_deploy.save_model and export the saved directory)"
            )
        args = ["vit-export", *model_args]
    else:  # manifests written before the model spec: "model" and "img_size" only
        args = ["vit-export"] + (["--model", str(build["model"])] if build.get("model") else [])
        if build.get("img_size"):
            args += ["--img-size", str(build["img_size"])]
    args += ["--fmt", "trt", "--precision", str(section.get("precision", "fp16"))]
    if profile:
        args += ["--batch", f"{profile.get('min')}:{profile.get('opt')}:{profile.get('max')}"]
    for key in ("opt_level", "workspace_gib", "timing_cache"):
        if build.get(key) is not None:
            args += ["--" + key.replace("_", "-"), str(build[key])]
    if build.get("out"):
        args += ["--out", str(build["out"])]
    return shlex.join(args)


def check_engine_section(section: Mapping) -> None:
    """Raise ManifestError naming every missing or malformed field of an engine section."""
    if not isinstance(section, Mapping):
        raise ManifestError(f"engine section: expected an object, got {type(section).__name__}")
    fmt = section.get("format")
    if fmt != ENGINE_SECTION_FORMAT:
        raise ManifestError(
            f"engine section: expected format {ENGINE_SECTION_FORMAT!r}, got {fmt!r}"
        )
    needed = ("file", "sha256", "tensorrt_version", "compute_capability", "gpu_name", "profile")
    missing = [k for k in needed if section.get(k) in (None, "")]
    if missing:
        raise ManifestError(f"engine section: missing {', '.join(missing)}")
    BatchProfile.from_dict(section["profile"])


def check_engine_compat(section: Mapping, current_env: Mapping) -> list[str]:
    """What differs between where the engine was built and here (empty: compatible).

    Refused: another TensorRT version (engines are not portable across versions),
    another GPU compute capability, another GPU model. A different CUDA version
    is only informational (TensorRT ships its own CUDA runtime dependencies).
    """
    checks = (
        ("TensorRT version", "tensorrt_version"),
        ("GPU compute capability", "compute_capability"),
        ("GPU", "gpu_name"),
    )
    diffs = []
    for label, key in checks:
        built, here = section.get(key), current_env.get(key)
        if here is None:
            diffs.append(f"{label}: built with {built}, none here")
        elif str(built) != str(here):
            diffs.append(f"{label}: built with {built}, here {here}")
    return diffs


# --------------------------------------------------------------------------------------
# Can TensorRT run here?
# --------------------------------------------------------------------------------------


def tensorrt_problems() -> list[str]:
    """What stops TensorRT from running here (empty: nothing)."""
    problems = []
    try:
        import torch

        if not torch.cuda.is_available():
            problems.append("no CUDA GPU (torch.cuda.is_available() is False)")
    except Exception as exc:  # torch is a dependency, but say so if it is broken
        problems.append(f"PyTorch with CUDA is not importable ({exc})")
    try:
        import tensorrt as trt

        version = str(getattr(trt, "__version__", "0"))
        if version_tuple(version) < MIN_TENSORRT:
            wanted = ".".join(map(str, MIN_TENSORRT))
            problems.append(f"TensorRT {version} is too old (expected >= {wanted})")
    except ImportError as exc:
        problems.append(f"TensorRT is not installed (import tensorrt: {exc})")
    except Exception as exc:  # an installed but broken TensorRT (missing libnvinfer, ...)
        problems.append(f"TensorRT does not load (import tensorrt: {exc})")
    return problems


def unavailable_message(problems: Sequence[str], what: str = "vit-export --fmt trt") -> str:
    return (
        f"{what} needs TensorRT >= {'.'.join(map(str, MIN_TENSORRT))} and a CUDA GPU: "
        + "; ".join(problems)
        + ". What works here instead: vit-export --fmt onnx (ONNX Runtime, CPU or GPU). "
        "To build engines, use a machine with an NVIDIA GPU and "
        "`pip install 'vit-deploy[trt]'`, then run `vit-deploy doctor`."
    )


def require_tensorrt(what: str = "vit-export --fmt trt") -> None:
    """Raise BackendUnavailableError (one line: what is missing, what works instead)."""
    problems = tensorrt_problems()
    if problems:
        raise BackendUnavailableError(unavailable_message(problems, what))


__all__ = [
    "ENGINE_FILE",
    "ENGINE_SECTION_FORMAT",
    "MIN_TENSORRT",
    "capture_environment",
    "check_engine_compat",
    "check_engine_section",
    "environment",
    "rebuild_command",
    "require_tensorrt",
    "tensorrt_problems",
    "unavailable_message",
]
