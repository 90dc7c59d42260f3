"""Exporters: ONNX (and FP16), TensorRT engines, manifests, parity gates."""
