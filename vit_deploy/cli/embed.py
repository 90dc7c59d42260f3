"""vit-embed: embed a folder (or glob) of images into .npy or .parquet, streaming, resumable."""

from __future__ import annotations

import argparse
import json
import sys

from vit_deploy.cli.common import configure_logging, error_text
from vit_deploy.errors import ViTDeployError

DESCRIPTION = """\
Embed every image in a folder (recursively) or matching a glob pattern with an exported
artifact, in constant memory: decoding in worker threads, a bounded queue feeding the model,
rows written as they come. Preprocessing is the artifact's own (manifest "preprocess").

Outputs (written atomically: temp name, then renamed):
  OUT.npy      float32 (rows, D), plus OUT.npy.paths.txt: line i is row i's path
  OUT.parquet  columns path (string) and embedding (fixed_size_list<float32>[D])
  errors       one JSON line {"path", "reason"} per file that could not be decoded
               (default OUT.errors.jsonl; always written, empty when none failed)
Rows + failed = inputs, always.

Resume (on by default): work goes into OUT.partial/ in chunks, each written atomically. If
a run is interrupted, run the same command again: images already embedded (and unchanged
since) are not recomputed; failed ones are retried. --no-resume discards OUT.partial/."""

EPILOG = """\
exit status: 0 all embedded; 1 some files failed (listed in the errors file);
2 bad arguments (missing artifact, no images, unwritable or unknown --out) or another
vit-embed writing the same --out (it is named); 130 interrupted.

examples:
  vit-embed --artifact artifacts/default-fp32 --images photos/ --out photos.parquet
  vit-embed --artifact art/ --images 'shots/**/*.jpg' --out shots.npy --batch-size 128
  vit-embed --artifact art/ --images /shared/photos --out photos.parquet --ray auto --actors 8"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vit-embed",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--artifact", required=True, help="exported artifact directory (vit-export)")
    p.add_argument(
        "--images",
        required=True,
        help="a folder (searched recursively for image extensions), one file, or a glob "
        "pattern (quote it; ** matches folders at any depth)",
    )
    p.add_argument("--out", required=True, help="output file: .npy or .parquet")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per model call (64)")
    p.add_argument(
        "--workers",
        type=_non_negative,
        default=None,
        help="decode threads (default: one per core, at most 8; 0 decodes inline)",
    )
    p.add_argument("--errors", default=None, help="errors file (default OUT.errors.jsonl)")
    p.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="write raw embeddings (default: L2-normalised rows)",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an interrupted run from OUT.partial/ (default: on)",
    )
    p.add_argument("--backend", default="auto", help="runtime backend (default: auto)")
    p.add_argument("--threads", type=_positive, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--chunk-rows", type=_positive, default=1024, help="images per resumable chunk (1024)"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="local|auto|ADDRESS",
        help="embed on Ray Data actors: 'local' (the default with a bare --ray) starts Ray "
        "here, 'auto' joins this machine's cluster, ADDRESS is a head (HOST:6379 or "
        "ray://HOST:10001); same outputs and resume as without it",
    )
    p.add_argument("--actors", type=_positive, default=None, help="with --ray: actors (1)")
    p.add_argument(
        "--actor-threads",
        type=_positive,
        default=None,
        help="with --ray: CPUs (and ONNX Runtime threads) per actor (1); --backend trt "
        "actors take one GPU each",
    )
    p.add_argument(
        "--exif-transpose",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="turn each image by its EXIF orientation tag, as a viewer shows it (default: on; "
        "--no-exif-transpose embeds the stored pixels, as timm's loader does)",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive,
        default=None,
        metavar="N",
        help="refuse images with more pixels than N, read from the header before decoding, "
        "as a failure in the errors file (default: 89478485, Pillow's own warning threshold)",
    )
    p.add_argument("--report", default=None, help="also write the run's summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _decode_options(args) -> dict:
    opts = {"exif_transpose": args.exif_transpose}
    if args.max_pixels is not None:
        opts["max_pixels"] = args.max_pixels
    return opts


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("vit-embed")  # resumed or discarded work dirs: "vit-embed: warning: ..."
    if args.ray is not None or args.actors is not None or args.actor_threads is not None:
        return _main_ray(args)
    from vit_deploy.embed.embedder import Embedder
    from vit_deploy.embed.pipeline import OutputPlan, discover, embed_files

    try:
        OutputPlan.for_output(args.out, args.errors)  # unwritable or unknown --out: no work done
        inputs = discover(args.images)
        backend_kw = {"threads": args.threads} if args.threads else {}
        embedder = Embedder.from_artifact(args.artifact, backend=args.backend, **backend_kw)
        result = embed_files(
            embedder,
            inputs,
            args.out,
            errors=args.errors,
            resume=args.resume,
            batch_size=args.batch_size,
            workers=args.workers,
            normalize=args.normalize,
            chunk_rows=args.chunk_rows,
            progress=not args.quiet,
            **_decode_options(args),
        )
    except ViTDeployError as exc:
        return _fail(error_text(exc))
    except KeyboardInterrupt:
        print(
            f"\nvit-embed: interrupted; finished chunks are kept in {args.out}.partial/: run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(_summary(result, embedder))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(_report(result, embedder, args), f, indent=2)
            f.write("\n")
    return 1 if result.failed else 0


def _main_ray(args) -> int:
    """The --ray path: the same outputs and exit codes, with the model on Ray actors."""
    if args.ray is None:
        return _fail("--actors and --actor-threads need --ray")
    if args.workers is not None or args.threads is not None:
        return _fail("--workers and --threads are for the local run; with --ray use "
                     "--actors and --actor-threads")  # fmt: skip
    from vit_deploy.embed.pipeline import OutputPlan, discover
    from vit_deploy.embed.ray_files import embed_files_ray
    from vit_deploy.preprocess import DecodeOptions

    try:
        OutputPlan.for_output(args.out, args.errors)  # unwritable or unknown --out: no work done
        inputs = discover(args.images)
        result, info = embed_files_ray(
            args.artifact,
            inputs,
            args.out,
            address=args.ray,
            errors=args.errors,
            resume=args.resume,
            backend=args.backend,
            batch_size=args.batch_size,
            normalize=args.normalize,
            chunk_rows=args.chunk_rows,
            actors=args.actors or 1,
            actor_threads=args.actor_threads,
            progress=not args.quiet,
            decode=DecodeOptions(**_decode_options(args)),
        )
    except ViTDeployError as exc:
        return _fail(error_text(exc))
    except KeyboardInterrupt:
        print(
            f"\nvit-embed: interrupted; finished chunks are kept in {args.out}.partial/: run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(_summary(result, info))
    if args.report:
        report = {**_report(result, info, args), "ray": args.ray, "actors": args.actors or 1}
        with open(args.report, "w") as f:
            json.dump({**report, "actor_threads": args.actor_threads}, f, indent=2)
            f.write("\n")
    return 1 if result.failed else 0


def _fail(message: str) -> int:
    print(f"vit-embed: error: {message}", file=sys.stderr)
    return 2


def _summary(result, embedder) -> str:
    lines = [
        f"vit-embed: {result.inputs} inputs: {result.rows} rows, {result.failed} failed"
        + (f", {result.reused} reused from an interrupted run" if result.reused else ""),
        f"vit-embed: {result.processed} images in {result.seconds:.1f} s "
        f"({result.images_per_s:.0f} img/s, backend {embedder.name}, D={embedder.dim})",
        f"vit-embed: wrote {result.out}"
        + (f" (paths in {result.paths_file})" if result.paths_file else ""),
    ]
    if result.failed:
        lines.append(f"vit-embed: {result.failed} failed: reasons in {result.errors_file}")
    if result.ignored:
        lines.append(f"vit-embed: ignored {result.ignored} files without an image extension")
    return "\n".join(lines)


def _report(result, embedder, args) -> dict:
    return {
        "inputs": result.inputs,
        "rows": result.rows,
        "failed": result.failed,
        "reused": result.reused,
        "processed": result.processed,
        "ignored": result.ignored,
        "seconds": round(result.seconds, 4),
        "images_per_s": round(result.images_per_s, 2),
        "backend": embedder.name,
        "dim": embedder.dim,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "out": str(result.out),
        "errors_file": str(result.errors_file),
    }


if __name__ == "__main__":
    sys.exit(main())
