"""TensorRT at run time: ``backend`` (engine in, torch tensors through CUDA) and ``env``
(where an engine was built and where it runs; checked before an engine is deserialised)."""
