"""Request images -> preprocessed pixels, exactly as ``Embedder`` preprocesses a file.

An input is a data URI (``data:image/png;base64,...``) or raw base64; nothing is ever
fetched from an address a client names. The image's size is read from its header and
refused over ``max_pixels`` before any pixel is decoded (a 100-byte PNG can claim
50,000 x 50,000). Decoding then follows ``vit_deploy.preprocess.load_image``
(full load, truncated files refused, ``to_rgb``) and ``preprocess_pil``, so a served
embedding equals ``Embedder.embed(path)`` of the same file.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vit_deploy.config import Preprocess
from vit_deploy.errors import ViTDeployError
from vit_deploy.preprocess import preprocess_pil, to_rgb

DEFAULT_MAX_PIXELS = 36_000_000  # 6000 x 6000; a camera photo fits, a decompression bomb not


class ImageInputError(ViTDeployError, ValueError):
    """One request input that is not a usable image; ``index`` is its place in ``input``."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class TooManyPixelsError(ImageInputError):
    """An image whose header claims more pixels than the server's limit."""


def image_bytes(text: object) -> bytes:
    """The bytes of a data URI or raw base64 string."""
    if not isinstance(text, str):
        raise ImageInputError(f"expected a base64 string or data URI, got {type(text).__name__}")
    text = text.strip()
    if text.startswith(("http://", "https://", "file:", "ftp://")):
        raise ImageInputError(
            "expected a data URI or base64 image, got a URL (the server fetches nothing)"
        )
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ImageInputError(
                f"expected a base64 data URI ('data:image/png;base64,...'), got {header[:40]!r}"
            )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"expected base64, could not decode it ({exc})") from None
    if not data:
        raise ImageInputError("expected image bytes, got an empty string")
    return data


def open_checked(data: bytes, max_pixels: int, exif_transpose: bool = True) -> Image.Image:
    """The decoded RGB image, refused from its header alone when it is too large; turned by
    its EXIF orientation tag unless ``exif_transpose`` is False (as ``vit-embed`` does)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise ImageInputError("expected an image file, could not identify one") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixelsError(f"expected fewer pixels, got {exc} (not decoded)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the input's fault
        raise ImageInputError(f"expected an image file, got one PIL cannot open ({exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise TooManyPixelsError(
            f"expected at most {max_pixels} pixels, got {w}x{h} = {w * h} (not decoded)"
        )
    try:
        with img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img) if exif_transpose else img)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise ImageInputError(f"expected a complete image, decoding failed ({exc})") from None


def decode_to_pixels(
    text: object, pre: Preprocess, max_pixels: int, exif_transpose: bool = True
) -> np.ndarray:
    """One request input -> (3, S, S) float32 pixels, preprocessed as ``Embedder`` does."""
    return preprocess_pil(open_checked(image_bytes(text), max_pixels, exif_transpose), pre)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageInputError",
    "TooManyPixelsError",
    "decode_to_pixels",
    "image_bytes",
    "open_checked",
]
