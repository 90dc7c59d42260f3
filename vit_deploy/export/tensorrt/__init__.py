"""TensorRT export (only ``build`` calls TensorRT; everything else runs without a GPU):

``export``           ``export_trt``: the staged export, its attempts and fp32 auto-repair
``build``            the TensorRT calls: ``build_engine``, ``inspect_engine``
``onnx_source``      the ONNX graph of one attempt, and its ONNX Runtime parity gate
``fp16``             who converts the ONNX to fp16 for an engine (ModelOpt AutoCast or ours)
``precision``        precision defaults, the fp32 keep list and its escalation
``graph``            which encoder block / attention part each ONNX node belongs to
``engine_info``      the engine inspector's JSON (TensorRT 10.x and 11.x schemas)
``fusion_report``    the per-block fused-attention report
``artifact``         the TensorRT artifact's ``manifest.json``

The engine's environment, compatibility check and manifest section live in
``vit_deploy.runtime.tensorrt.env``: the runtime needs them too, and runtime never
imports export.
"""
