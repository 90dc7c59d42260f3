"""One call over PyTorch, ONNX Runtime and TensorRT backends."""
