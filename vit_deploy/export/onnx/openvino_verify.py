"""Parity of an ONNX artifact served through OpenVINO, per precision hint, for the manifest.

bf16 inference is not what the ONNX Runtime gate verified, so a bf16 serving choice gets
its own parity run, through OpenVINO, against the same PyTorch fp32 reference and inputs.
The record names the CPU it ran on: bf16 numerics depend on the instructions OpenVINO
uses (AVX512_BF16, AMX), so it holds for CPUs of that kind.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vit_deploy.export.verify import verify_artifact

log = logging.getLogger(__name__)


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"))


def gate_for(hint: str, artifact_precision: str) -> str:
    """The gate a hint must pass: bf16's, or the artifact's own when that is looser (int8)."""
    if hint == "bf16" and artifact_precision in ("fp32", "fp16"):
        return "bf16"
    return artifact_precision


def verify_openvino(model_path: Path, config, hints, artifact_precision: str, parity, batch: int):
    """{hint: parity record}; a failed hint is recorded (the backend then refuses it)."""
    import openvino

    from vit_deploy.runtime.openvino_backend import OpenVinoBackend

    records = {}
    for hint in hints:
        backend = OpenVinoBackend.from_onnx(model_path, config, precision=hint)
        gate_name = gate_for(hint, artifact_precision)
        inputs, reference = parity.inputs, parity.outputs
        if gate_name == "int8":  # the int8 gate's own rows (real images, see int8.gate_inputs)
            from vit_deploy.export.onnx.int8 import gate_inputs

            inputs, reference = gate_inputs(parity)
        report, gate = verify_artifact(
            backend,
            parity.reference_model,
            gate_name,
            inputs=inputs,
            reference=reference,
            batch=batch,
            raise_on_failure=False,
        )
        records[hint] = {
            "passed": gate.passed,
            "inference_precision": backend.inference_precision,
            "gate": gate.to_dict(),
            "report": report.to_dict(),
            "openvino": openvino.__version__,
            "cpu_flags": _cpu_flags(),
        }
        if not gate.passed:
            log.warning("OpenVINO %s parity failed:\n%s", hint, gate.failure_table())
        del backend
    return records
