"""Exporters: ONNX (and FP16), TensorRT engines, manifests, parity gates.

ONNX, one concern per module:

``options``          the declarative export config (opset, batch profile, outputs, policies)
``onnx_export``      PyTorch -> ONNX graph (``torch.onnx.export(dynamo=True)``)
``attention_onnx``   the ONNX form of the fused Triton op ``vit_deploy::attention``
``fp16``             fp16 conversion with fp32 I/O and an op block list
``attention_fusion`` fusion pass: attention block -> ``com.microsoft.Attention``
``ort_optimize``     graph candidates for ONNX Runtime, timed and gated
``fusion``           fused-op counts in the artifact and in ONNX Runtime's graph
``parity``           metrics and gate (backend-agnostic)
``verify``           run an artifact against the PyTorch model on real + random images
``pipeline``         the staged, atomic export that writes ``model.onnx`` + ``manifest.json``
``registry``         the formats ``vit-export --fmt`` offers
"""
