"""ONNX export, one concern per module:

``graph``            PyTorch -> ONNX graph (``torch.onnx.export(dynamo=True)``)
``attention_op``     the ONNX form of the fused Triton op ``vit_deploy::attention``
``fp16``             fp16 conversion with fp32 I/O and an op block list (the only converter)
``attention_fusion`` fusion pass: attention block -> ``com.microsoft.Attention``
``optimize``         graph candidates for ONNX Runtime, timed and gated
``fusion_report``    fused-op counts in the artifact and in ONNX Runtime's graph
``pipeline``         the staged, atomic export that writes ``model.onnx`` + ``manifest.json``
"""
