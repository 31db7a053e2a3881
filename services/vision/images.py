"""Decoding images from files or bytes into RGB uint8 arrays, with clear errors naming the file.

Handled: grayscale, palette, RGBA/LA (alpha dropped), CMYK JPEGs, 16-bit and float images (scaled to
8 bit), EXIF orientation. Refused with :class:`ImageError`: empty, truncated or undecodable files,
images smaller than ``MIN_SIDE``, and images above ``max_megapixels`` (JPEGs that large are decoded
at reduced size instead, which is cheap).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

MIN_SIDE = 16
DEFAULT_MAX_MEGAPIXELS = 64.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# We enforce our own size limit below; Pillow's bomb check would only warn or raise differently.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ImageError(str(path), f"cannot read file ({err.strerror or err})") from err


def decode_image(
    data: bytes,
    source: str = "<bytes>",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode encoded image bytes into an RGB ``uint8`` array of shape (H, W, 3).

    With ``max_side`` (previews), a JPEG is decoded in the DCT domain at the smallest of 1/2, 1/4,
    1/8 of its size whose longer side is still at least ``max_side`` (other formats whole): the
    caller scales the rest of the way."""
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if max_side is not None and max(width, height) > max_side and isinstance(image, JpegImageFile):
                scale = max_side / max(width, height)
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
                width, height = image.size
            megapixels = width * height / 1e6
            if megapixels > max_megapixels and isinstance(image, JpegImageFile):
                # DCT-domain downscale by 1/2, 1/4 or 1/8 to within the limit: never holds the full image
                scale = math.sqrt(max_megapixels / megapixels) / 2
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
                width, height = image.size
                megapixels = width * height / 1e6
            if megapixels > max_megapixels:
                raise ImageError(
                    source,
                    f"image is {width}x{height} ({megapixels:.1f} MP), above the {max_megapixels:g} MP "
                    "limit; downscale it or raise max_megapixels",
                )
            image.load()
            image = ImageOps.exif_transpose(image) or image
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(source, "cannot decode image: not a recognised image format") from err
    except Exception as err:  # Pillow raises many types for bad data
        raise ImageError(source, f"cannot decode image ({type(err).__name__}: {err})") from err
    if min(image.size) < MIN_SIDE:
        raise ImageError(source, f"image is {image.size[0]}x{image.size[1]}, smaller than {MIN_SIDE} px")
    return _to_rgb_uint8(image, source)


def _to_rgb_uint8(image: Image.Image, source: str) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(array[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        try:
            image = image.convert("RGB")
        except Exception as err:
            raise ImageError(source, f"unsupported pixel format {mode!r}") from err
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(source, f"unexpected decoded shape {array.shape}")
    return array


def load_image(path: Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """Read and decode one image file (see :func:`decode_image`)."""
    return decode_image(read_bytes(path), str(path), max_megapixels)


def load_mask(path: Path, expected_hw: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask (any non-zero pixel is a defect) as a bool array of ``expected_hw``."""
    data = read_bytes(path)
    if not data:
        raise ImageError(str(path), "empty mask file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            mask = np.asarray(image.convert("L")) > 0
    except Exception as err:
        raise ImageError(str(path), f"cannot decode mask ({type(err).__name__}: {err})") from err
    if mask.shape != tuple(expected_hw):
        raise ImageError(
            str(path),
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]}",
        )
    return mask
