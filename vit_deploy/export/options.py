"""The declarative export config: one place for opset, axes, profile and policies."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vit_deploy.batch_profile import BatchProfile  # the field type of OnnxExportOptions.batch
from vit_deploy.errors import ConfigError
from vit_deploy.runtime.base import INPUT_NAME  # noqa: F401  (one name, re-exported here)

BATCH_AXIS = "batch"
OUTPUT_CHOICES = ("logits", "embedding")
PRECISIONS = ("fp32", "fp16", "int8")  # int8: QDQ ONNX (export/onnx/int8.py)
OPENVINO_HINTS = ("f32", "bf16")  # OpenVINO inference precision hints a manifest can verify
MIN_OPSET = 17  # LayerNormalization is a single op from opset 17
MAX_OPSET = 23  # the highest opset whose export ONNX Runtime ran here (tests check 18)
DEFAULT_OPSET = 18  # torch.onnx's own target (its torchlib): no version conversion
ATTENTION_EXPORTS = ("math", "native", "onnx-attention")
ATTENTION_OP_OPSET = 23
OPTIMIZE_CHOICES = ("auto", "plain", "ort-attention", "ort-transformers")

# Ops that overflow or lose too much in fp16; kept in fp32 by default.
DEFAULT_FP32_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Exp",
)


@dataclass(frozen=True)
class OnnxExportOptions:
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    batch: BatchProfile = dataclasses.field(default_factory=BatchProfile)
    outputs: tuple[str, ...] | None = None  # None: both when the model has a head
    fp32_ops: tuple[str, ...] = DEFAULT_FP32_OPS
    fp32_nodes: tuple[str, ...] = ()  # node names kept in fp32 too (beyond the op types)
    optimize: str = "auto"
    verify: bool = True
    # also compare our model with the checkpoint's own library (timm, transformers,
    # open_clip) when it is installed: what catches a loader error
    source_parity: bool = True
    verify_samples: int | None = None  # None: scaled to the model's FLOPs
    # "math": export a copy of the model with the reference attention path (same weights);
    # "native": export the model as built (a 'triton' model maps its custom op to ONNX);
    # "onnx-attention": one ONNX Attention op per block (opset >= 23; from torch's SDPA).
    attention: str = "math"
    timing_iters: int = 3
    # int8 only: calibration images (None: the bundled held-out digits), how many, the
    # repair loop's attempts, and node names kept in float from the start
    calibration: str | None = None
    calibration_size: int = 128
    int8_attempts: int = 3
    int8_float_nodes: tuple[str, ...] = ()
    # OpenVINO precision hints to verify through OpenVINO and record in the manifest
    verify_openvino: tuple[str, ...] = ()

    def __post_init__(self):
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if not (isinstance(self.opset, int) and MIN_OPSET <= self.opset <= MAX_OPSET):
            problems.append(
                f"opset: expected an int in [{MIN_OPSET}, {MAX_OPSET}] (LayerNormalization "
                f"needs >= {MIN_OPSET}), got {self.opset!r}"
            )
        if self.outputs is not None:
            bad = [o for o in self.outputs if o not in OUTPUT_CHOICES]
            if bad or not self.outputs or len(set(self.outputs)) != len(self.outputs):
                problems.append(
                    f"outputs: expected distinct names among {OUTPUT_CHOICES}, "
                    f"got {list(self.outputs)}"
                )
        if self.optimize not in OPTIMIZE_CHOICES:
            problems.append(f"optimize: expected one of {OPTIMIZE_CHOICES}, got {self.optimize!r}")
        if self.attention not in ATTENTION_EXPORTS:
            problems.append(
                f"attention: expected one of {ATTENTION_EXPORTS}, got {self.attention!r}"
            )
        elif self.attention == "onnx-attention" and self.opset < ATTENTION_OP_OPSET:
            problems.append(
                f"attention='onnx-attention' needs opset >= {ATTENTION_OP_OPSET} (the ONNX "
                f"Attention op), got opset {self.opset}"
            )
        if self.verify_samples is not None and self.verify_samples < 1:
            problems.append(f"verify_samples: expected >= 1, got {self.verify_samples}")
        if not (isinstance(self.calibration_size, int) and self.calibration_size >= 1):
            problems.append(f"calibration_size: expected >= 1, got {self.calibration_size!r}")
        if not (isinstance(self.int8_attempts, int) and self.int8_attempts >= 1):
            problems.append(f"int8_attempts: expected >= 1, got {self.int8_attempts!r}")
        bad_hints = [h for h in self.verify_openvino if h not in OPENVINO_HINTS]
        if bad_hints:
            problems.append(f"verify_openvino: expected some of {OPENVINO_HINTS}, got {bad_hints}")
        if problems:
            raise ConfigError("; ".join(problems))

    def cli_args(self) -> list[str]:
        """The ``vit-export`` flags that give these options (for the manifest's command)."""
        b = self.batch
        args = ["--precision", self.precision, "--opset", str(self.opset)]
        args += ["--batch", f"{b.min}:{b.opt}:{b.max}"]
        if self.outputs is not None:
            args += ["--outputs", ",".join(self.outputs)]
        if self.precision != "fp32" and tuple(self.fp32_ops) != DEFAULT_FP32_OPS:
            args += ["--fp32-ops", ",".join(self.fp32_ops)]
        if self.optimize != "auto":
            args += ["--optimize", self.optimize]
        if self.attention != "math":
            args += ["--attention", "triton" if self.attention == "native" else self.attention]
        if self.precision == "int8":
            if self.calibration is not None:
                args += ["--calibration", self.calibration]
            args += ["--calibration-size", str(self.calibration_size)]
        if self.verify_openvino:
            args += ["--verify-openvino", ",".join(self.verify_openvino)]
        if not self.verify:
            args.append("--no-verify")
        if not self.source_parity:
            args.append("--no-source-parity")
        return args

    def output_names(self, num_classes: int) -> list[str]:
        if self.outputs is None:
            return ["logits", "embedding"] if num_classes else ["embedding"]
        if "logits" in self.outputs and not num_classes:
            raise ConfigError(
                "outputs: 'logits' needs a classification head; this model has num_classes=0 "
                "(expected --outputs embedding)"
            )
        return list(self.outputs)
