"""Image decoding: base64 or raw bytes to the normalised tensor an image encoder expects.

Decoding runs in the service's thread pool, so nothing here keeps or changes global state
(Pillow's ``MAX_IMAGE_PIXELS`` and ``LOAD_TRUNCATED_IMAGES`` included). The pixel count
is checked from the image header before any pixel data is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zlib

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from training.artifact import ImagePreprocessing

# Formats Pillow may try. Restricting the list keeps plugins with a large attack surface
# (EPS runs Ghostscript, for example) away from request data. The JPEG opener also returns
# multi-picture (MPO) camera files.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
ACCEPTED_FORMATS_TEXT = "PNG, JPEG, GIF, BMP, WebP or TIFF"

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")

# Signatures of image formats that are recognised but not decoded, so that the client
# gets 415 (unsupported) instead of 400 (not an image).
_UNSUPPORTED_SIGNATURES = (
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
)
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}

# Pillow's image plugins raise these for malformed or truncated data. Its TIFF and EXIF
# readers warn (UserWarning) about corrupt tags, which raises only where warnings are errors.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error, UserWarning)

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def decode_base64(value: str) -> bytes:
    """Decode standard base64, optionally behind a ``data:image/...;base64,`` prefix.

    Whitespace (line breaks of MIME-wrapped base64) is ignored. Raises InvalidInput when
    the value is empty or not valid base64.
    """
    match = _DATA_URL.match(value)
    payload = value[match.end() :] if match else value
    if payload.startswith("data:"):
        raise InvalidInput("image data URL must look like 'data:image/<type>;base64,<data>'")
    try:
        raw = _WHITESPACE.sub(b"", payload.encode("ascii"))
    except UnicodeEncodeError as error:
        raise InvalidInput(f"image is not valid base64: non-ASCII character at position {error.start}") from error
    if not raw:
        raise InvalidInput("image is empty: expected base64-encoded image bytes")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error as error:
        raise InvalidInput(f"image is not valid base64: {error}") from error


def decode_image_item(value: str | bytes, prep: ImagePreprocessing, max_pixels: int) -> torch.Tensor:
    """Decode an image (base64 text or raw bytes) into a float32 tensor (C, H, W).

    The image is turned upright by its EXIF orientation, reduced to its first frame,
    converted to 8-bit gray or RGB with transparency composited onto ``prep.background``,
    converted to ``prep.channels``, resized by ``prep.resize`` to ``prep.size`` and
    normalised with ``prep.mean`` and ``prep.std``.

    Raises InvalidInput (empty, corrupt or truncated data), PayloadTooLarge (more than
    ``max_pixels`` pixels, checked from the header before decoding) or
    UnsupportedMediaType (a recognised but unsupported format or pixel mode).
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    data = decode_base64(value) if isinstance(value, str) else bytes(value)
    if not data:
        raise InvalidInput("image is empty: expected image bytes")

    image = _open_checked(data, max_pixels)
    image = _to_base_mode(image)
    image = _composite_alpha(image, prep.background)
    image = image.convert("L" if prep.channels == 1 else "RGB")
    image = _resize(image, prep)
    return _to_tensor(image, prep)


def _bomb_error(error: Exception, max_pixels: int) -> PayloadTooLarge:
    """Return the 413 for Pillow's decompression-bomb check, naming this service's limit only."""
    declared = re.search(r"\((\d+) pixels\)", str(error))  # Pillow: "Image size (N pixels) exceeds limit of ..."
    size = f"{declared.group(1)} pixels" if declared else "more pixels than Pillow decodes"
    return PayloadTooLarge(f"image is too large: its header declares {size}, above the limit of {max_pixels} pixels")


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header, check the pixel count, then decode the first frame upright."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as error:
        raise _unidentified_error(data) from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow checks first: it raises above 2 * Image.MAX_IMAGE_PIXELS, and above
        # MAX_IMAGE_PIXELS it warns, which raises only where warnings are errors.
        raise _bomb_error(error, max_pixels) from error
    except _DECODE_ERRORS as error:
        raise InvalidInput(f"image header is invalid: {error}") from error

    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} pixels"
        )
    if width == 0 or height == 0:
        raise InvalidInput(f"image has no pixels ({width}x{height})")

    # Image.open leaves an animated image on its first frame, and load() decodes only that frame.
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb_error(error, max_pixels) from error
    except _DECODE_ERRORS as error:
        raise InvalidInput(f"{image.format} image is corrupt or truncated: {error}") from error


def _unidentified_error(data: bytes) -> InvalidInput | UnsupportedMediaType:
    """Return 415 for a recognised but unsupported image format, else 400."""
    name = _sniff_unsupported_format(data)
    if name is not None:
        return UnsupportedMediaType(f"image format {name} is not supported; send {ACCEPTED_FORMATS_TEXT}")
    return InvalidInput(f"image data is not a recognised image; send {ACCEPTED_FORMATS_TEXT}")


def _sniff_unsupported_format(data: bytes) -> str | None:
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return _HEIF_BRANDS[data[8:12]]
    head = data[:1024].lstrip()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _to_base_mode(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit ``L``, ``RGB`` or ``RGBA``."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _rescale_to_8bit(image)
    try:
        if mode in ("1",):
            return image.convert("L")
        if mode in ("P", "PA", "LA", "RGBa"):
            return image.convert("RGBA")
        if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            return image.convert("RGB")
    except ValueError as error:
        raise UnsupportedMediaType(f"image mode {mode} cannot be converted to RGB: {error}") from error
    raise UnsupportedMediaType(f"image mode {mode} is not supported")


def _rescale_to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float gray image to 8-bit ``L``.

    16-bit samples, and ``I`` (32-bit) samples that fit 0-65535, are scaled by 255/65535.
    Other ``I`` images and all ``F`` images are stretched from their own minimum to their
    maximum, since their range is unknown.
    """
    values = np.asarray(image, dtype=np.float64)  # (H, W)
    if not np.isfinite(values).all():
        raise InvalidInput(f"{image.mode} image contains non-finite values")
    low, high = float(values.min()), float(values.max())
    if image.mode != "F" and low >= 0 and high <= 65535:
        scaled = values * (255.0 / 65535.0)
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return Image.fromarray(np.rint(scaled).clip(0, 255).astype(np.uint8), mode="L")


def _composite_alpha(image: Image.Image, background: int) -> Image.Image:
    """Composite an ``RGBA`` image onto an opaque gray ``background`` level (0-255)."""
    if image.mode != "RGBA":
        return image
    backdrop = Image.new("RGBA", image.size, (background, background, background, 255))
    return Image.alpha_composite(backdrop, image).convert("RGB")


def _resize(image: Image.Image, prep: ImagePreprocessing) -> Image.Image:
    """Resize to ``prep.size`` squared, bilinear with antialiasing as in training.

    ``resize_center_crop`` resamples the centred square of side min(W, H) in one step.
    That matches scaling the shorter side to ``prep.size`` and then cropping the centre,
    without rounding an intermediate image.
    """
    size = (prep.size, prep.size)
    if prep.resize == "stretch":
        return image.resize(size, Image.Resampling.BILINEAR)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize(size, Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def _to_tensor(image: Image.Image, prep: ImagePreprocessing) -> torch.Tensor:
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels.reshape(prep.size, prep.size, prep.channels)  # (H, W) or (H, W, C) -> (H, W, C)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean) / std
