"""Exporters, one package per format, and what every format shares.

``options``     the declarative export config (opset, batch profile, outputs, policies)
``parity``      metrics and gate (backend-agnostic)
``verify``      run an artifact against the PyTorch model on real + random images
``progress``    a progress bar over named stages
``onnx/``       PyTorch -> verified ONNX artifact (fp32, fp16)
``tensorrt/``   verified ONNX -> verified TensorRT engine

The formats ``vit-export --fmt`` offers are registered in ``vit_deploy.cli.formats``.
"""
