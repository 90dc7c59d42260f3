"""``vit-export --fmt triton``: a Triton Inference Server model repository entry.

vit-export --fmt triton --from ARTIFACT --out REPO [--name NAME] [--instances N]
           [--kind cpu|gpu] [--max-batch N] [--queue-delay-us US]

Made from an exported artifact (``--fmt onnx`` or ``--fmt trt``), not from a model:
the artifact was verified when it was exported; its sha256 is checked again here.
"""

from __future__ import annotations

import argparse

from vit_deploy.cli.common import EXIT_OK, UsageError


def add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    """The Triton-only options of ``vit-export`` (``--out`` is the repository)."""
    from vit_deploy.export.triton.repository import DEFAULT_QUEUE_DELAY_US

    group = parser.add_argument_group("Triton Inference Server (--fmt triton; --out is REPO)")
    group.add_argument(
        "--from", dest="from_artifact", default=None, metavar="ARTIFACT",
        help="the exported artifact (onnx or trt) to put into the repository",
    )  # fmt: skip
    group.add_argument(
        "--name", default=None, help="model name in the repository (default: ARTIFACT's name)"
    )
    group.add_argument(
        "--instances", type=int, default=1, metavar="N", help="model instances (default: 1)"
    )
    group.add_argument(
        "--kind", default=None, choices=("cpu", "gpu"),
        help="instance kind (default: gpu for TensorRT plans, which only run there; cpu for ONNX)",
    )  # fmt: skip
    group.add_argument(
        "--max-batch", type=int, default=None, metavar="N",
        help="Triton's max_batch_size: at most the artifact's batch profile MAX (the default)",
    )  # fmt: skip
    group.add_argument(
        "--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US, metavar="US",
        help=f"dynamic batching's max queue delay (default: {DEFAULT_QUEUE_DELAY_US})",
    )  # fmt: skip


def export_triton_from_args(args: argparse.Namespace) -> int:
    """The 'triton' format's command: the whole of ``vit-export --fmt triton``."""
    from vit_deploy.export.triton import TritonOptions, write_triton_model

    if args.from_artifact is None:
        raise UsageError("--from: expected the artifact directory to serve, got none")
    if args.out is None:
        raise UsageError("--out: expected the model repository directory, got none")
    if args.model is not None:
        raise UsageError(
            f"--model: expected none with --fmt triton (it packages --from ARTIFACT), got "
            f"{args.model!r}; export the model first with --fmt onnx or --fmt trt"
        )
    options = TritonOptions(
        name=args.name,
        instances=args.instances,
        kind=args.kind,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
    )
    model = write_triton_model(args.from_artifact, args.out, options)
    cfg = model.config
    pre = model.manifest.get("preprocess", {})
    print(f"wrote Triton model {cfg.name!r} -> {model.directory}")
    print(
        f"  platform {cfg.platform}, max_batch_size {cfg.max_batch_size} (artifact profile "
        f"{model.profile}), preferred batches {list(cfg.preferred_batch_sizes)}, "
        f"{cfg.instances} x {cfg.kind}"
    )
    print(
        f"  inputs {', '.join(n for n, _, _ in cfg.inputs)}; outputs "
        f"{', '.join(n for n, _, _ in cfg.outputs)}"
    )
    print(
        f"  preprocessing stays on the client: resize {pre.get('resize_size')}, crop "
        f"{pre.get('img_size')}, mean {pre.get('mean')}, std {pre.get('std')} (manifest.json)"
    )
    print(f"  serve: tritonserver --model-repository {model.directory.parent.resolve()}")
    return EXIT_OK
