"""Typed errors. Every error says what was expected and what was got.

One base class, ``ViTDeployError``, so callers can catch everything we raise;
the subclasses also inherit the matching builtin (ValueError, TypeError, ...)
so generic code keeps working.
"""

from __future__ import annotations


class ViTDeployError(Exception):
    """Base class of every error vit_deploy raises on purpose.

    ``option``: the library parameter the error is about (``"batch"``, ``"img_size"``);
    the message reads ``"batch: expected ..."`` and a CLI shows its own flag instead
    (``"--batch: expected ..."``, see ``vit_deploy.cli.common.report_error``).
    """

    def __init__(self, *args, option: str | None = None, problems=None):
        # ``problems``: [(option or None, detail), ...] when one error collects several
        self.problems = [tuple(p) for p in problems] if problems else []
        if self.problems and not args:
            args = ("; ".join(_prefixed(o, d) for o, d in self.problems),)
        super().__init__(*args)
        self.option = option

    @property
    def detail(self) -> str:
        """The message without the option prefix."""
        return super().__str__()

    def __str__(self) -> str:
        return _prefixed(self.option, self.detail)


def _prefixed(option: str | None, detail: str) -> str:
    return f"{option}: {detail}" if option else detail


class ConfigError(ViTDeployError, ValueError):
    """A model configuration or option that cannot work."""


class UnknownPresetError(ConfigError):
    """A preset name that is not registered."""


class InputShapeError(ViTDeployError, ValueError):
    """An input tensor of the wrong rank, channel count or size."""


class InputDTypeError(ViTDeployError, TypeError):
    """An input tensor of a dtype the model or backend does not take."""


class InputDeviceError(ViTDeployError, ValueError):
    """A device tensor on another device than the backend's."""


class NonFiniteInputError(ViTDeployError, ValueError):
    """NaN or Inf in an input (only raised when the opt-in check is on)."""


class CheckpointError(ViTDeployError):
    """A checkpoint that cannot be read or does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """Missing, unexpected or wrongly shaped tensors, all listed in one error."""

    def __init__(
        self,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        wrong_shape: list[tuple[str, tuple, tuple]] | None = None,
        source: str = "checkpoint",
        features: list[str] | None = None,
    ):
        self.features = list(features or [])
        self.missing = sorted(missing or [])
        self.unexpected = sorted(unexpected or [])
        self.wrong_shape = sorted(wrong_shape or [])
        lines = [f"{source} does not fit the model:"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for name, expected, got in self.wrong_shape:
            lines.append(f"  wrong shape: {name}: expected {tuple(expected)}, got {tuple(got)}")
        if self.features:
            lines.append(f"  features that differ: {'; '.join(self.features)}")
        super().__init__("\n".join(lines))


class UnsupportedArchitectureError(CheckpointError):
    """A checkpoint of a family this ViT cannot compute exactly (RoPE, SwiGLU, ...)."""

    def __init__(self, feature: str, architecture: str, source: str, evidence: str = ""):
        self.feature, self.architecture = feature, architecture
        super().__init__(
            f"{source}: {feature} ({architecture}) cannot be represented exactly by this ViT; "
            "refused rather than loaded approximately"
            + (f" (found {evidence})" if evidence else "")
        )


class AmbiguousCheckpointError(CheckpointError):
    """A checkpoint whose tensors and metadata leave a hyper-parameter undecided."""


class KernelError(ViTDeployError, ValueError):
    """Inputs the fused attention kernel does not support."""


class KernelUnavailableError(ViTDeployError, RuntimeError):
    """The fused kernel cannot run here (no Triton, no CUDA and no interpreter)."""


class TritonNotInstalledError(KernelUnavailableError, ImportError):
    """Triton is missing. Also an ImportError, so ``attention='triton'`` fails when the
    model is built (as a ConfigError), not at its first forward."""


class ArtifactError(ViTDeployError):
    """A missing, corrupt or incompatible exported artifact."""


class ManifestError(ArtifactError):
    """A manifest that is missing, malformed or from a newer format."""


class ChecksumMismatchError(ArtifactError):
    """An artifact file whose sha256 differs from its manifest."""


class ExportError(ViTDeployError, RuntimeError):
    """An export that failed before producing an artifact."""


class ParityError(ExportError):
    """An artifact whose outputs do not match the PyTorch reference."""


class BackendUnavailableError(ViTDeployError, RuntimeError):
    """A backend whose library or device is missing on this machine."""


class EngineMismatchError(ArtifactError):
    """A TensorRT engine built for another TensorRT version or GPU than this machine's."""


class NoClassifierError(ViTDeployError, ValueError):
    """classify() on a model without a classification head or without label names."""


class EmbedInputError(ViTDeployError, ValueError):
    """No images to embed: an empty folder, or a pattern that matches nothing."""


class OutputPathError(ViTDeployError, ValueError):
    """An output path that cannot be written, or an output format that is not known."""


class ResumeError(ViTDeployError, ValueError):
    """An unfinished run's work directory that does not belong to the run asked for."""


class OutputLockedError(ViTDeployError, RuntimeError):
    """An output another live process is writing (its lock names that process)."""


class ImageTooLargeError(ViTDeployError, ValueError):
    """An image whose header says it has more pixels than the configured limit."""
