"""OpenVINO: runs our ONNX artifacts (fp32 and INT8 QDQ) on the CPU, f32 or bf16.

One ``CompiledModel`` per backend, shared; each call takes an idle ``InferRequest`` from
a small pool (a new one when all are busy) and gives it back after copying the outputs
out, so concurrent callers never share a request: ``thread_safe = True``.

``precision="bf16"`` asks OpenVINO for bf16 inference (fast on CPUs with AVX512_BF16 or
AMX; elsewhere OpenVINO may fall back to f32, see ``inference_precision``). Because bf16
is not what the ONNX gate verified, an artifact is served in bf16 (and an INT8 artifact at
all) only when its manifest holds a passing OpenVINO parity record for that hint
(``vit-export --verify-openvino bf16``),
unless ``require_verified=False`` (the benchmark, which measures parity itself).
``mode``: "latency" (one stream, all threads on one request) or "throughput" (several
streams: faster only with concurrent callers).
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

import numpy as np

from vit_deploy.config import ViTConfig
from vit_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError
from vit_deploy.manifest import artifact_path, check_graph_io, read_manifest, verify_checksum
from vit_deploy.runtime.base import INPUT_NAME, Backend

PRECISION_HINTS = ("f32", "bf16")
MODES = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
OUTPUT_NAMES = ("logits", "embedding")
DEVICE = "CPU"


def _ov():
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            f"OpenVINO is not installed ({exc}); expected 'pip install vit-deploy[openvino]'"
        ) from exc
    return openvino


def compile_config(precision: str, threads: int | None, mode: str) -> dict[str, str]:
    """OpenVINO CPU properties for a precision hint, thread count and performance mode."""
    problems = []
    if precision not in PRECISION_HINTS:
        problems.append(f"precision: expected one of {PRECISION_HINTS}, got {precision!r}")
    if mode not in MODES:
        problems.append(f"mode: expected one of {sorted(MODES)}, got {mode!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        problems.append(f"threads: expected a positive int, got {threads!r}")
    if problems:
        raise ConfigError("; ".join(problems))
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": MODES[mode]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def verified_hints(manifest: dict | None) -> dict[str, dict]:
    """The OpenVINO precision hints this artifact's manifest records parity for."""
    return ((manifest or {}).get("serving") or {}).get("openvino") or {}


def graph_io(compiled) -> tuple[list[tuple], list[tuple]]:
    """([(name, dtype, shape)] of the inputs, the same of the outputs) of a compiled model;
    a dynamic dim as None."""

    def port(p):
        dims = [None if d.is_dynamic else d.get_length() for d in p.get_partial_shape()]
        return (p.get_any_name(), p.get_element_type().to_dtype(), dims)

    return [port(p) for p in compiled.inputs], [port(p) for p in compiled.outputs]


class OpenVinoBackend(Backend):
    name = "openvino"
    thread_safe = True  # one InferRequest per concurrent call, from a pool

    def __init__(
        self,
        compiled,
        config: ViTConfig,
        manifest: dict | None = None,
        source: str = "model",
        precision: str = "f32",
    ):
        if manifest is not None:  # before the checks below: say what the manifest gets wrong
            check_graph_io(manifest, *graph_io(compiled), source=source)
        outputs = [o.get_any_name() for o in compiled.outputs]
        unknown = [n for n in outputs if n not in OUTPUT_NAMES]
        if unknown:
            raise ArtifactError(
                f"{source}: expected outputs among {list(OUTPUT_NAMES)}, got {outputs}"
            )
        inputs = [i.get_any_name() for i in compiled.inputs]
        if inputs != [INPUT_NAME]:
            raise ArtifactError(f"{source}: expected one input named {INPUT_NAME!r}, got {inputs}")
        shape = compiled.input(0).get_partial_shape()
        want = [config.in_chans, config.img_size, config.img_size]
        if shape.rank.get_length() != 4 or [d.get_length() for d in shape[1:]] != want:
            raise ArtifactError(
                f"{source}: input shape {shape} does not match the model config "
                f"(expected [batch, {', '.join(map(str, want))}])"
            )
        super().__init__(config, outputs, manifest)
        self.compiled = compiled
        self.precision = precision
        # what OpenVINO actually runs at (bf16 falls back to f32 on CPUs without it)
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._ports = [compiled.output(n) for n in outputs]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        config: ViTConfig,
        *,
        precision: str = "f32",
        threads: int | None = None,
        mode: str = "latency",
        manifest: dict | None = None,
    ) -> OpenVinoBackend:
        """Any .onnx file that takes ``pixels`` and returns logits and/or embedding."""
        properties = compile_config(precision, threads, mode)
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"expected an ONNX file, got {str(path)!r} (no such file)")
        ov = _ov()
        try:
            compiled = ov.Core().compile_model(str(path), DEVICE, properties)
        except Exception as exc:  # OpenVINO raises RuntimeError with a long C++ trace
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            raise ArtifactError(
                f"{path}: expected an ONNX model that OpenVINO can compile, could not compile "
                f"it ({first_line})"
            ) from exc
        return cls(compiled, config, manifest=manifest, source=str(path), precision=precision)

    @classmethod
    def from_artifact(
        cls,
        directory: str | os.PathLike,
        precision: str = "f32",
        threads: int | None = None,
        mode: str = "latency",
        *,
        verify: bool = True,
        require_verified: bool = True,
    ) -> OpenVinoBackend:
        """An exported ONNX directory: manifest read and checked (format, sha256); bf16
        only when the manifest records a passing OpenVINO bf16 parity check."""
        compile_config(precision, threads, mode)  # bad options fail before any file work
        directory = Path(directory)
        manifest = read_manifest(directory)
        fmt = manifest["artifact"]["format"]
        if fmt != "onnx":
            raise ArtifactError(
                f"{directory}: expected an 'onnx' artifact for OpenVINO, got {fmt!r}"
            )
        if verify:
            verify_checksum(directory, manifest)
        # f32 of an fp32/fp16 graph is what ONNX Runtime verified; bf16, and any int8 graph
        # (OpenVINO lowers QDQ its own way), need OpenVINO's own parity record
        int8 = manifest.get("precision", {}).get("mode") == "int8"
        if (precision != "f32" or int8) and require_verified:
            record = verified_hints(manifest).get(precision)
            if not (record and record.get("passed")):
                got = "a failed check" if record else "no OpenVINO parity record"
                raise ArtifactError(
                    f"{directory}: expected an artifact verified for OpenVINO {precision} "
                    f"(vit-export ... --verify-openvino {precision}), got {got}"
                )
        return cls.from_onnx(
            artifact_path(directory, manifest["artifact"]["file"]),
            ViTConfig.from_dict(manifest["model"]),
            precision=precision,
            threads=threads,
            mode=mode,
            manifest=manifest,
        )

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer({INPUT_NAME: pixels})
            # copies: the request's output buffers are reused by its next call
            return {
                n: np.array(request.get_tensor(p).data, copy=True)
                for n, p in zip(self.output_names, self._ports, strict=True)
            }
        finally:
            self._idle.put(request)


__all__ = ["OpenVinoBackend", "compile_config", "verified_hints", "PRECISION_HINTS"]
