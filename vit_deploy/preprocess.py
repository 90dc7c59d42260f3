"""Eval-time preprocessing, identical for every backend.

Resize the shorter side to ``Preprocess.resize_size`` (= img_size / crop_pct),
centre-crop ``img_size``, scale to [0, 1], normalise by mean/std, CHW float32.
The arithmetic follows timm's eval transform (torchvision's Resize and
CenterCrop on PIL images) so pixels match what the model was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from .config import Preprocess
from .errors import InputDTypeError, InputShapeError

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: grayscale, RGBA (on black, like PIL), 16-bit, CMYK, palette."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully (truncated files raise) and convert to RGB."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(Path(path)) as img:
        img.load()
        return to_rgb(img)


def resize_shorter_side(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), _PIL_FILTERS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:  # torchvision pads with zeros; so do we
        canvas = Image.new("RGB", (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def normalize(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """HWC uint8 -> CHW float32, scaled to [0, 1] and normalised."""
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_pil(img: Image.Image, pre: Preprocess) -> np.ndarray:
    img = to_rgb(img)
    img = resize_shorter_side(img, pre.resize_size, pre.interpolation)
    img = center_crop(img, pre.img_size)
    return normalize(np.asarray(img, dtype=np.uint8), pre)


def preprocess_one(image: ImageLike, pre: Preprocess) -> np.ndarray:
    """One image of any supported kind -> (3, S, S) float32 normalised pixels.

    Paths, PIL images and HWC uint8 arrays go through resize and crop; a torch
    tensor or float array is taken as already preprocessed and must be (3, S, S).
    """
    if isinstance(image, (str, os.PathLike)):
        return preprocess_pil(load_image(image), pre)
    if isinstance(image, Image.Image):
        return preprocess_pil(image, pre)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise InputShapeError(
                f"expected an HWC uint8 array with 1, 3 or 4 channels, got shape {image.shape}"
            )
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        return preprocess_pil(Image.fromarray(image[:, :, :3]), pre)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else image
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputDTypeError(
                f"expected uint8 HWC pixels or float CHW preprocessed pixels, got {arr.dtype}"
            )
        expected = (3, pre.img_size, pre.img_size)
        if tuple(arr.shape) != expected:
            raise InputShapeError(
                f"a preprocessed tensor must have shape {expected}, got {tuple(arr.shape)}; "
                "pass a file path, PIL image or uint8 array to have it resized"
            )
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise InputDTypeError(
        "expected a file path, PIL image, HWC uint8 numpy array or CHW torch tensor, "
        f"got {type(image).__name__}"
    )


def preprocess_batch(images, pre: Preprocess) -> torch.Tensor:
    """A list of images -> (B, 3, S, S) float32 tensor."""
    return torch.from_numpy(np.stack([preprocess_one(im, pre) for im in images]))
