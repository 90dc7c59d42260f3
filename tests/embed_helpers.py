"""Shared by test_embedder.py and test_embed_cli.py: a tiny exported artifact (built once per
test session, through the Embedder's export cache) and a folder of images with broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

import vit_deploy
from vit_deploy.config import Preprocess, ViTConfig
from vit_deploy.embed.embedder import cached_export
from vit_deploy.export.options import OnnxExportOptions

LABELS = ("cat", "dog", "fish")
# Tests build the artifact without the optional graph search and parity gate (the
# exporter's own tests cover those): a plain export, a few seconds.
FAST_EXPORT = OnnxExportOptions(optimize="plain", verify=False)


def tiny_model(num_classes: int = 3, img_size: int = 32, seed: int = 0):
    cfg = ViTConfig(
        img_size=img_size,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=num_classes,
        labels=LABELS[:num_classes] if num_classes else (),
        preprocess=Preprocess(img_size=img_size, crop_pct=0.875, interpolation="bilinear"),
    )
    return vit_deploy.create_model(cfg, seed=seed)


def tiny_artifact(tmp_path_factory) -> Path:
    """The tiny model's ONNX artifact, in a cache shared by the whole test session."""
    cache = tmp_path_factory.getbasetemp() / "embed-export-cache"
    return cached_export(tiny_model(), cache, FAST_EXPORT)


def random_image(rng, h: int, w: int, mode: str = "RGB") -> Image.Image:
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_image_folder(root: Path, n_good: int = 16, seed: int = 0) -> dict:
    """``n_good`` decodable images of assorted sizes and modes (one nested inside a folder
    named ``x.png``), plus broken files. Returns {"good": [...], "broken": [...],
    "ignored": [...]} as path strings, the way discovery spells them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    good = []
    modes = ["RGB", "L", "RGBA", "P"]
    for i in range(n_good - 3):
        img = random_image(rng, int(rng.integers(20, 90)), int(rng.integers(20, 90)), modes[i % 4])
        path = root / f"img_{i:02d}.{'jpg' if i % 5 == 4 and img.mode in ('RGB', 'L') else 'png'}"
        img.save(path)
        good.append(path)
    sixteen = root / "deep16.png"  # 16-bit grayscale (PIL mode I;16)
    Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)).save(sixteen)
    cmyk = root / "cmyk.jpg"
    random_image(rng, 48, 40).convert("CMYK").save(cmyk)
    nested = root / "x.png"  # a folder named like an image
    nested.mkdir()
    (nested / "inner.png").write_bytes(png_bytes(random_image(rng, 33, 33)))
    good += [sixteen, cmyk, nested / "inner.png"]

    broken = [root / "empty.png", root / "truncated.png", root / "notes.jpg", root / "cut.jpg"]
    broken[0].write_bytes(b"")
    data = png_bytes(random_image(rng, 64, 64))
    broken[1].write_bytes(data[: len(data) // 2])
    broken[2].write_text("this is a text file, not a JPEG\n")
    jpg = io.BytesIO()
    random_image(rng, 64, 64).save(jpg, format="JPEG")
    broken[3].write_bytes(jpg.getvalue()[:300])
    ignored = root / "README.txt"
    ignored.write_text("not an image extension: not an input\n")
    return {
        "good": sorted(str(p) for p in good),
        "broken": sorted(str(p) for p in broken),
        "ignored": [str(ignored)],
    }
