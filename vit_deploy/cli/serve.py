"""vit-serve: serve an exported artifact's embeddings over HTTP, with dynamic batching.

vit-serve --artifact DIR [--host 127.0.0.1] [--port 8000] [--backend auto] [--name NAME]
          [--max-batch N] [--max-delay-ms T] [--batch-wait incoming|window]
          [--max-queue Q] [--max-body-mb M]
          [--max-pixels P] [--decode-threads N] [--threads N]
          [--ort-spin | --ort-spin-us US | --ort-spin-idle]
          [--drain-timeout S]
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path

from vit_deploy.cli.common import EXIT_OK, EXIT_USAGE, UsageError, configure_logging, run_main

PROG = "vit-serve"
log = logging.getLogger("vit_deploy.cli.serve")

EPILOG = """\
endpoints: POST /v1/embeddings, POST /v1/classify, GET /v1/models, /health, /ready, /metrics

exit status: 0 stopped by SIGTERM/SIGINT after finishing in-flight requests; 1 the model
failed to load or warm up; 2 bad arguments or the address cannot be bound.

examples:
  vit-serve --artifact artifacts/default-fp32
  vit-serve --artifact artifacts/vit_small_patch16_224-fp32 --port 9000 --max-batch 32 \\
            --max-delay-ms 5"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _microseconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected microseconds >= 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from vit_deploy.serve.batcher import WAIT_POLICIES
    from vit_deploy.serve.decode import DEFAULT_MAX_PIXELS

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve an exported artifact (vit-export) over HTTP: OpenAI-shaped "
        "embeddings, top-k classification, health and Prometheus metrics. Images from "
        "concurrent requests are batched; each answer equals Embedder's for the same image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--artifact", required=True, metavar="DIR", help="an exported artifact")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: 8000)")
    p.add_argument("--backend", default="auto", help="runtime backend (default: auto)")
    p.add_argument("--name", default=None, help="model name clients send (default: DIR's name)")
    p.add_argument(
        "--max-batch", type=_positive, default=None, metavar="N",
        help="images per model call (default: the artifact's batch profile MAX, else 32)",
    )  # fmt: skip
    p.add_argument(
        "--max-delay-ms", type=_non_negative, default=5.0, metavar="T",
        help="longest an image waits for others before a call (default: 5)",
    )  # fmt: skip
    p.add_argument(
        "--batch-wait", choices=WAIT_POLICIES, default="incoming",
        help="incoming: wait only while other requests are still being decoded, so a lone "
        "request runs at once; window: always wait out --max-delay-ms unless the batch "
        "fills, as Triton's max_queue_delay does (default: incoming)",
    )  # fmt: skip
    p.add_argument(
        "--max-queue", type=_positive, default=256, metavar="Q",
        help="images admitted and unanswered; beyond it requests get 503 (default: 256)",
    )  # fmt: skip
    p.add_argument("--max-body-mb", type=float, default=32.0, metavar="M", help="(default: 32)")
    p.add_argument(
        "--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, metavar="P",
        help=f"largest image accepted, width x height (default: {DEFAULT_MAX_PIXELS})",
    )  # fmt: skip
    p.add_argument(
        "--exif-transpose", action=argparse.BooleanOptionalAction, default=True,
        help="turn each image by its EXIF orientation tag, as a viewer shows it (default: on)",
    )  # fmt: skip
    p.add_argument("--decode-threads", type=_positive, default=None, metavar="N")
    p.add_argument(
        "--threads", type=_positive, default=None, metavar="N", help="ONNX Runtime threads"
    )
    spin = p.add_mutually_exclusive_group()
    spin.add_argument(
        "--ort-spin-us", type=_microseconds, default=0, metavar="US",
        help="an idle ONNX Runtime thread spins at most this long before it sleeps; 0: it "
        "sleeps at once (default: 0; ONNX Runtime >= 1.26, else 0)",
    )  # fmt: skip
    spin.add_argument(
        "--ort-spin", action="store_true",
        help="ONNX Runtime's own spinning (tens of ms after each call): CPU that decoding "
        "and HTTP need under load",
    )  # fmt: skip
    spin.add_argument(
        "--ort-spin-idle", action="store_true",
        help="ONNX Runtime's own spinning, its intra-op threads at idle priority (Linux "
        "SCHED_IDLE): they spin only on CPU no other thread wants, and yield to other "
        "processes too",
    )  # fmt: skip
    p.add_argument(
        "--drain-timeout", type=_non_negative, default=30.0, metavar="S",
        help="on SIGTERM, wait this long for in-flight requests (default: 30)",
    )  # fmt: skip
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_embedder(args: argparse.Namespace):
    """The model, loaded and warmed up, or a one-line error (before anything is bound)."""
    from vit_deploy.embed.embedder import Embedder
    from vit_deploy.runtime import artifact_backend
    from vit_deploy.serve.app import warm_up
    from vit_deploy.serve.threads import set_idle_priority, with_started_threads

    kw = {"threads": args.threads} if args.threads else {}
    if artifact_backend(args.artifact, args.backend) == "ort":
        # the cores are shared with decoding and HTTP: see session_options
        kw["spin"] = True if args.ort_spin or args.ort_spin_idle else args.ort_spin_us
    elif args.ort_spin_idle:
        raise UsageError("--ort-spin-idle: expected an ONNX Runtime artifact and backend")

    def load():
        return Embedder.from_artifact(Path(args.artifact), backend=args.backend, **kw)

    if args.ort_spin_idle:
        import onnxruntime  # noqa: F401 - its import starts a thread that is not the session's

        embedder, started = with_started_threads(load)
        set_idle_priority(started)
    else:
        embedder = load()
    if args.max_batch is None:
        profile = (embedder.backend.manifest or {}).get("batch_profile") or {}
        args.max_batch = int(profile.get("max", 32))
    warm_up(embedder, args.max_batch)
    return embedder


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it a keep-alive response waits ~40 ms (Nagle against the client's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"--host/--port: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    # listen now, not when uvicorn starts: the address is announced before server.run,
    # and a client that connects in between must queue, not be refused
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from vit_deploy.serve.app import ServeSettings, create_app

    try:
        embedder = load_embedder(args)
    except Exception as exc:  # noqa: BLE001 - one line, whatever the loader raised
        from vit_deploy.errors import ViTDeployError

        if isinstance(exc, ViTDeployError):
            raise
        print(f"{PROG}: error: could not load {args.artifact}: {exc}", file=sys.stderr)
        return EXIT_USAGE  # an artifact that cannot be loaded is bad input
    name = args.name or Path(args.artifact).resolve().name
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        batch_wait=args.batch_wait,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=args.max_pixels,
        exif_transpose=args.exif_transpose,
        **({"decode_threads": args.decode_threads} if args.decode_threads else {}),
    )
    app = create_app(embedder, name=name, settings=settings)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_level="info" if args.verbose else "warning",
        access_log=args.access_log,
        timeout_graceful_shutdown=args.drain_timeout,
    )
    server = uvicorn.Server(config)
    app.state.is_draining = lambda: server.should_exit
    # uvicorn re-raises the signal it handled once it has shut down; a no-op handler
    # here turns that into a normal return, so a drained SIGTERM exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    print(
        f"{PROG}: serving {name!r} ({embedder.name}, dim {embedder.dim}, max batch "
        f"{settings.max_batch}, max delay {settings.max_delay_ms:g} ms, wait "
        f"{settings.batch_wait}) on http://{host}:{port}",
        flush=True,
    )
    server.run(sockets=[sock])
    print(f"{PROG}: stopped", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(PROG, args.verbose)
    if args.max_body_mb <= 0:
        print(
            f"{PROG}: error: --max-body-mb: expected > 0, got {args.max_body_mb}", file=sys.stderr
        )
        return EXIT_USAGE
    return run_main(PROG, run, args)


if __name__ == "__main__":
    sys.exit(main())
