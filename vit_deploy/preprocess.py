"""Eval-time preprocessing, identical for every backend.

Resize the shorter side to ``Preprocess.resize_size`` (= img_size / crop_pct),
centre-crop ``img_size``, scale to [0, 1], normalise by mean/std, CHW float32.
The arithmetic follows timm's eval transform (torchvision's Resize and
CenterCrop on PIL images) so pixels match what the model was trained with.

Files are decoded with their EXIF orientation applied (``DecodeOptions.exif_transpose``,
on by default: timm's loader does not, so parity with it holds for images without an
orientation tag or with the option off) and refused before decoding when their header
says they have more than ``DecodeOptions.max_pixels`` pixels.

Importing this module does not import torch (``vit-embed`` runs on ONNX Runtime without
it): torch tensors are recognised only when torch is already loaded, and
``preprocess_batch`` imports it when called.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

import numpy as np
from PIL import Image, ImageFile, ImageOps

from vit_deploy.config import Preprocess
from vit_deploy.errors import ConfigError, ImageTooLargeError, InputDTypeError, InputShapeError

# Pillow's own warning threshold; ours is checked first (on the header) and its
# failure is recorded with the reason, so Pillow's raw warning line is not printed.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}

if TYPE_CHECKING:
    import torch

ImageLike: TypeAlias = "str | os.PathLike | Image.Image | np.ndarray | torch.Tensor"


def is_tensor(obj) -> bool:
    """A torch tensor, without importing torch (if torch is not loaded, nothing is one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: grayscale, RGBA (alpha dropped, as PIL and timm's
    loader do), 16/32-bit integer, float, CMYK, palette."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the type's range to 8 bits instead of clipping.
        # Mode "I" does not say its bit depth: take 8, 16 bits or the maximum, by the values.
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16") or 255.0 < peak <= 65535.0:
            top = 65535.0
        else:
            top = 255.0 if peak <= 255.0 else peak
        return _gray8_to_rgb(arr / top)
    if img.mode == "F":
        return _gray8_to_rgb(np.asarray(img, dtype=np.float64))
    return img.convert("RGB")


def _gray8_to_rgb(unit: np.ndarray) -> Image.Image:
    """Grayscale in [0, 1] -> 8-bit RGB (rounded, clipped)."""
    arr8 = np.clip(unit * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")


@dataclass(frozen=True)
class DecodeOptions:
    """How image files are decoded for a model.

    ``exif_transpose``: apply the EXIF orientation tag (a phone photo stored sideways is
    turned the way a viewer shows it), as ``PIL.ImageOps.exif_transpose`` does; False
    gives the stored pixels, as timm's own loader does.
    ``max_pixels``: refuse (``ImageTooLargeError``) an image whose header says it has more
    pixels, before anything is decoded; None: no limit of ours (Pillow still refuses
    images over twice ``PIL.Image.MAX_IMAGE_PIXELS``, its decompression-bomb guard).
    """

    exif_transpose: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ConfigError(
                f"expected a positive pixel limit or None, got {self.max_pixels}",
                option="max_pixels",
            )


def check_pixel_limit(size: tuple[int, int], max_pixels: int | None) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(
            f"image is {w} x {h} = {w * h:,} pixels, expected at most {max_pixels:,} "
            "(max_pixels: raise the limit if the file is trusted)"
        )


def load_image(
    path: str | os.PathLike | BinaryIO, decode: DecodeOptions | None = None
) -> Image.Image:
    """Decode an image file (a path, or an open binary file such as ``io.BytesIO(data)``)
    fully (truncated files raise), turned by its EXIF orientation and converted to RGB;
    the pixel limit is checked on the header, before decoding."""
    decode = decode or DecodeOptions()
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = Image.open(path if hasattr(path, "read") else Path(path))
    except Image.DecompressionBombError as exc:  # over Pillow's own hard limit
        raise ImageTooLargeError(
            f"{exc} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS, applies beyond ours)"
        ) from None
    with img:
        check_pixel_limit(img.size, decode.max_pixels)
        img.load()
        if decode.exif_transpose:
            img = ImageOps.exif_transpose(img)
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
    if pre.crop_mode == "squash":
        size = (pre.resize_size, pre.resize_size)
        img = img if img.size == size else img.resize(size, _PIL_FILTERS[pre.interpolation])
    else:
        img = resize_shorter_side(img, pre.resize_size, pre.interpolation)
    img = center_crop(img, pre.img_size)
    return normalize(np.asarray(img, dtype=np.uint8), pre)


def preprocess_one(
    image: ImageLike, pre: Preprocess, decode: DecodeOptions | None = None
) -> np.ndarray:
    """One image of any supported kind -> (3, S, S) float32 normalised pixels.

    Paths, PIL images, HWC uint8/uint16 arrays and CHW uint8 tensors (torchvision's
    ``read_image`` layout) go through resize and crop; a float tensor or float array is
    taken as already preprocessed and must be (3, S, S). ``decode``: how a file path is
    decoded (EXIF orientation, pixel limit); images given already decoded are taken as
    they are.
    """
    if isinstance(image, (str, os.PathLike)):
        return preprocess_pil(load_image(image, decode), pre)
    if isinstance(image, Image.Image):
        return preprocess_pil(image, pre)
    if is_tensor(image):
        floating = image.is_floating_point()
        image = (image.float() if floating else image).detach().cpu().numpy()
        if image.dtype == np.uint8:  # a uint8 tensor is CHW, as torchvision reads images
            return preprocess_pil(_pixels_to_pil(_chw_to_hwc(image)), pre)
    if isinstance(image, np.ndarray) and image.dtype in (np.uint8, np.uint16):
        return preprocess_pil(_pixels_to_pil(image), pre)
    if isinstance(image, np.ndarray):
        arr = image
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputDTypeError(
                "expected uint8 (or uint16) HWC pixels or float CHW preprocessed pixels, "
                f"got {arr.dtype}"
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


def _chw_to_hwc(arr: np.ndarray) -> np.ndarray:
    """A uint8 tensor is CHW, as torchvision's read_image gives it (HWC only when the
    first axis cannot be channels)."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
        return arr.transpose(1, 2, 0)
    return arr


def _pixels_to_pil(arr: np.ndarray) -> Image.Image:
    """HW or HWC (1, 3 or 4 channels) uint8/uint16 pixels -> RGB PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputShapeError(
            f"expected HW or HWC pixels with 1, 3 or 4 channels, got shape {arr.shape}"
        )
    if arr.dtype == np.uint16:  # 16 bits -> 8 bits over the full range, as for 16-bit files
        arr = (arr.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), mode="RGB")  # alpha dropped


def preprocess_batch(images, pre: Preprocess) -> torch.Tensor:
    """A list of images -> (B, 3, S, S) float32 tensor."""
    import torch

    return torch.from_numpy(np.stack([preprocess_one(im, pre) for im in images]))
