"""ONNX Runtime: loads an exported artifact (checked against its manifest) or any .onnx file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from vit_deploy.config import ViTConfig
from vit_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError
from vit_deploy.manifest import artifact_path, check_graph_io, read_manifest, verify_checksum
from vit_deploy.runtime.base import INPUT_NAME, Backend, default_output_names, version_tuple

# Tried in this order when present in ort.get_available_providers(); CPU is always last.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
OUTPUT_NAMES = ("logits", "embedding")
# ONNX Runtime 1.26 made an idle worker's spin a time budget, the session config entry
# session.intra_op.spin_duration_us (microsoft/onnxruntime#27916); older versions spin a
# fixed count of pauses (tens of ms on recent x86) and ignore the key.
BOUNDED_SPIN_SINCE = (1, 26)

log = logging.getLogger("vit_deploy.runtime")


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"ONNX Runtime is not installed ({exc}); expected 'pip install onnxruntime'"
        ) from exc
    return onnxruntime


def pick_providers(requested: list[str] | None = None) -> list[str]:
    """The requested providers (each must be available), or the best available ones."""
    available = _ort().get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"execution providers {missing} are not available here; expected some of "
                f"{available}"
            )
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def session_options(
    threads: int | None = None,
    optimization: str = "all",
    optimized_model_path: str | os.PathLike | None = None,
    spin: bool | int = True,
):
    """SessionOptions: intra-op threads, graph optimisation level, and (optionally) where
    ONNX Runtime should save the graph it actually runs, for fusion counting.

    ``spin``, what an idle intra-op thread does before it sleeps: True, ORT's default (it
    spins for tens of ms, fastest when inference is all the process does); False or 0,
    it sleeps at once; N > 0, it spins at most N microseconds (ONNX Runtime >= 1.26;
    older ones get 0, with a warning). A server that decodes and answers HTTP on the same
    cores loses the spinning to it (measured: a third of the server's CPU time, see
    benchmarks/results/serve)."""
    ort = _ort()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ConfigError(f"optimization: expected one of {sorted(levels)}, got {optimization!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[optimization]
    so.log_severity_level = 3  # errors only: the NCHWc "hardware specific" notice is expected
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads: expected a positive int, got {threads}")
        so.intra_op_num_threads = threads
    for key, value in spin_entries(spin, ort.__version__).items():
        so.add_session_config_entry(key, value)
    if optimized_model_path is not None:
        so.optimized_model_filepath = os.fspath(optimized_model_path)
        # weights in a side file: the graph (what fusion counting reads) stays small
        data_name = Path(optimized_model_path).name + ".data"
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", data_name
        )
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    return so


def graph_io(session) -> tuple[list[tuple], list[tuple]]:
    """([(name, dtype, shape)] of the inputs, the same of the outputs) of a session."""
    return tuple(
        [(t.name, t.type, list(t.shape)) for t in tensors]
        for tensors in (session.get_inputs(), session.get_outputs())
    )


def spin_entries(spin: bool | int, ort_version: str) -> dict[str, str]:
    """The session config entries for ``spin`` (see ``session_options``)."""
    if spin is True:
        return {}
    if spin is not False and (not isinstance(spin, int) or spin < 0):
        raise ConfigError(f"spin: expected True, False or microseconds >= 0, got {spin!r}")
    if spin and version_tuple(ort_version) < BOUNDED_SPIN_SINCE:
        log.warning(
            "onnxruntime %s cannot bound its threads' spinning (expected >= %d.%d for "
            "spin=%d us): they will not spin", ort_version, *BOUNDED_SPIN_SINCE, spin,
        )  # fmt: skip
        spin = 0
    if not spin:
        return {"session.intra_op.allow_spinning": "0"}
    return {"session.intra_op.spin_duration_us": str(spin)}


class OrtBackend(Backend):
    name = "ort"
    thread_safe = True  # InferenceSession.run may be called from several threads

    def __init__(
        self,
        session,
        config: ViTConfig,
        manifest: dict | None = None,
        source: str = "model",
    ):
        if manifest is not None:  # before the checks below: say what the manifest gets wrong
            check_graph_io(manifest, *graph_io(session), source=source)
        outputs = [o.name for o in session.get_outputs()]
        unknown = [n for n in outputs if n not in OUTPUT_NAMES]
        if unknown:
            raise ArtifactError(
                f"{source}: expected outputs among {list(OUTPUT_NAMES)}, got {outputs}"
            )
        inputs = session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ArtifactError(
                f"{source}: expected one input named {INPUT_NAME!r}, got {[i.name for i in inputs]}"
            )
        want = [config.in_chans, config.img_size, config.img_size]
        if list(inputs[0].shape[1:]) != want:
            raise ArtifactError(
                f"{source}: input shape {inputs[0].shape} does not match the model config "
                f"(expected [batch, {', '.join(map(str, want))}])"
            )
        super().__init__(config, outputs, manifest)
        self.session = session
        self.providers = session.get_providers()

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        config: ViTConfig,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        optimization: str = "all",
        optimized_model_path: str | os.PathLike | None = None,
        manifest: dict | None = None,
        spin: bool | int = True,
    ) -> OrtBackend:
        """Any .onnx file that takes ``pixels`` and returns logits and/or embedding."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"expected an ONNX file, got {str(path)!r} (no such file)")
        ort = _ort()
        so = session_options(threads, optimization, optimized_model_path, spin)
        chosen = pick_providers(providers)
        try:
            session = ort.InferenceSession(str(path), so, providers=chosen)
        except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, ...)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            raise ArtifactError(
                f"{path}: expected an ONNX model that ONNX Runtime can load, could not load it "
                f"({first_line})"
            ) from exc
        return cls(session, config, manifest=manifest, source=str(path))

    @classmethod
    def from_artifact(
        cls,
        directory: str | os.PathLike,
        providers: list[str] | None = None,
        threads: int | None = None,
        *,
        verify: bool = True,
        optimization: str = "all",
        spin: bool | int = True,
    ) -> OrtBackend:
        """An exported directory: manifest read and checked (format version, sha256).
        ``spin``: see ``session_options``."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        fmt = manifest["artifact"]["format"]
        if fmt != "onnx":
            raise ArtifactError(
                f"{directory}: expected an 'onnx' artifact for ONNX Runtime, got {fmt!r}"
            )
        if verify:
            verify_checksum(directory, manifest)
        config = ViTConfig.from_dict(manifest["model"])
        return cls.from_onnx(
            artifact_path(directory, manifest["artifact"]["file"]),
            config,
            providers=providers,
            threads=threads,
            optimization=optimization,
            manifest=manifest,
            spin=spin,
        )

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {INPUT_NAME: pixels})
        return dict(zip(self.output_names, values, strict=True))


__all__ = [
    "OrtBackend",
    "default_output_names",
    "pick_providers",
    "session_options",
    "spin_entries",
]
