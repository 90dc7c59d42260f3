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
``batch_profile``    ``--batch MIN:OPT:MAX`` (one class for ONNX and TensorRT), engine chunking

TensorRT (only ``trt_build`` calls TensorRT; everything else runs without a GPU):

``trt_export``       ``export_trt``: the staged export, its attempts and fp32 auto-repair
``trt_cli``          ``vit-export`` options, availability, registry entry point, summary
``trt_build``        the TensorRT calls: ``build_engine``, ``inspect_engine`` (doc URLs beside)
``trt_onnx``         the ONNX graph of one attempt, and its ONNX Runtime parity gate
``trt_fp16``         fp16 converters: ModelOpt AutoCast or onnxconverter-common
``trt_precision``    precision defaults, the fp32 keep list and its escalation
``trt_graph``        which encoder block / attention part each ONNX node belongs to
``trt_inspect``      the engine inspector's JSON (TensorRT 10.x and 11.x schemas)
``trt_fusion``       the per-block fused-attention report
``trt_env``          environment, the manifest's ``engine`` section, compatibility checks,
                     the rebuild command, ``require_tensorrt``
``trt_artifact``     the TensorRT artifact's ``manifest.json``
"""
