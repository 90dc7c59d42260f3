"""vit-inspect: see what the ViT sees.

Writes four PNG figures (the preprocessed input with its patch grid, the
position-embedding similarity, one layer's attention maps, attention rollout)
and prints the top-k predictions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vit_deploy.cli.common import (
    EXIT_OK,
    UsageError,
    add_model_argument,
    configure_logging,
    model_spec,
    run_main,
)

PROG = "vit-inspect"
log = logging.getLogger("vit_deploy.cli.inspect")

DESCRIPTION = """\
See what the ViT sees: writes PNG figures of the preprocessed input with its patch
grid, the position-embedding similarity, one layer's attention maps and the attention
rollout across all layers, and prints the top-k predictions.

Attention probabilities come from the reference (math) attention path: the fused
kernel never forms the N x N attention matrix, by design, so there is nothing to read
out of it. The weights are the same either way."""

EPILOG = """\
token rows (--query): with a class token, row 0 is CLS and patch (r, c) is row
1 + r*G + c on a G x G patch grid; without one, patch (r, c) is row r*G + c.
Models without a class token need --query ROW, and their rollout averages all rows.

examples:
  vit-inspect --image cat.png
  vit-inspect --model ckpt/ --image cat.png --layer 3 --heads 0 2 --query 42 --out figs/"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument("--image", required=True, help="the image file to inspect")
    p.add_argument(
        "--exif-transpose",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="turn the image by its EXIF orientation tag, as a viewer shows it (default: on)",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="layer of the attention maps, 0..depth-1 (default: the last)",
    )
    p.add_argument(
        "--heads",
        nargs="+",
        default=None,
        metavar="H",
        help="heads to draw, e.g. '--heads 0 3' or '--heads 0,3' (default: all)",
    )
    p.add_argument(
        "--query",
        default="cls",
        help="whose attention to draw: 'cls' (default) or a token row (see below)",
    )
    p.add_argument(
        "--top-k", type=int, default=5, help="how many predictions to print (default: 5)"
    )
    p.add_argument(
        "--out", default="inspect_out", help="directory for the PNGs (default: inspect_out)"
    )
    return p


def _parse_heads(values: list[str] | None) -> list[int] | None:
    if values is None:
        return None
    items = [v for value in values for v in value.split(",") if v.strip()]
    if [v.strip().lower() for v in items] == ["all"]:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UsageError(f"--heads: expected head indices (ints) or 'all', got {values}") from None


def _load_model(args: argparse.Namespace):
    """(model, description, warning or None)."""
    spec = model_spec(args)
    warning = None
    if spec.warning:  # the shared warning is about weights; say what it means here
        warning = (
            f"{spec.value} is a preset with random weights: predictions and attention show an "
            "untrained model; pass a checkpoint to see a trained one"
        )
    return spec.load("math"), spec.description, warning


def _load_pixels(model, image: str, exif_transpose: bool = True):
    from PIL import UnidentifiedImageError

    from vit_deploy.inspect.maps import as_pixels
    from vit_deploy.preprocess import DecodeOptions, load_image

    try:
        return as_pixels(model, load_image(Path(image), DecodeOptions(exif_transpose)))
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"--image: could not read {image!r} as an image ({exc})") from None


def run(args: argparse.Namespace) -> int:
    from vit_deploy.inspect import maps as vz
    from vit_deploy.inspect import plots

    if not Path(args.image).is_file():  # before loading a model, which can take a while
        raise UsageError(f"--image: expected an image file, got {args.image!r} (no such file)")
    model, described, warning = _load_model(args)
    if warning:
        log.warning(warning)
    cfg = model.config
    # check every option before the (slow) forward passes
    layer = cfg.depth - 1 if args.layer is None else vz.check_layer(model, args.layer)
    heads = vz.check_heads(model, _parse_heads(args.heads))
    row = vz.query_row(model, args.query)
    if args.top_k < 1:
        raise UsageError(f"--top-k: expected a positive int, got {args.top_k}")
    pixels = _load_pixels(model, args.image, args.exif_transpose)

    print(
        f"model: {described} ({cfg.depth} layers x {cfg.num_heads} heads, "
        f"{cfg.grid_size}x{cfg.grid_size} patches of {cfg.patch_size} px)"
    )
    print(f"image: {args.image}")
    if cfg.num_classes:
        _, note = vz.label_names(model)
        if note:
            print(f"note: {note}")
        print(f"top-{min(args.top_k, cfg.num_classes)} predictions:")
        for rank, (label, prob) in enumerate(vz.top_k(model, pixels, args.top_k), start=1):
            print(f"  {rank:>2}. {prob:7.2%}  {label}")
    else:
        print("no classification head (num_classes=0): no predictions to print")

    probs = vz.attention_probs(model, pixels)  # one pass for both attention figures
    image = vz.denormalize(model, pixels)
    out = Path(args.out)
    offset = int(cfg.class_token)
    if cfg.class_token and row == 0:
        query_desc, query_tag, query_patch = "CLS", "cls", None
    else:
        query_patch = divmod(row - offset, cfg.grid_size)
        query_desc = f"token row {row} (patch {query_patch[0]}, {query_patch[1]})"
        query_tag = f"row{row}"
    maps = vz.attention_to_patches(model, pixels, layer, heads, row, probs=probs)
    rollout = vz.attention_rollout(model, pixels, probs=probs)
    rollout_from = "from CLS" if cfg.class_token else "mean over all query rows (no CLS token)"
    written = [
        plots.plot_input(image, cfg.grid_size, out / "input.png"),
        plots.plot_pos_embed_similarity(
            vz.pos_embed_similarity(model), out / "pos_embed_similarity.png"
        ),
        plots.plot_attention(
            image,
            maps,
            out / f"attention_layer{layer}_{query_tag}.png",
            heads,
            f"Layer {layer} attention from {query_desc} to each patch\n"
            "(reference math path; each head on its own colour scale)",
            query_patch=query_patch,
        ),
        plots.plot_rollout(
            image,
            rollout,
            out / "rollout.png",
            f"Attention rollout (Abnar & Zuidema, 2020) over {cfg.depth} layers, {rollout_from}",
        ),
    ]
    print(f"wrote {len(written)} figures to {out}/:")
    for path in written:
        print(f"  {path.name}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(PROG)
    return run_main(PROG, run, args)


if __name__ == "__main__":
    raise SystemExit(main())
