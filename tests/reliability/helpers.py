"""Builders of bad and unusual inputs, and checks that a rejected request changed nothing."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

IMAGE_MODEL = "tiny-image"
RGB_MODEL = "tiny-rgb"
TEXT_MODEL = "tiny-text"
BOMB_SIDE = 60_000  # 3.6e9 pixels claimed by a header of a few dozen bytes


# --- images ----------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(size: int = 32, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Return a random image of ``size`` squared in ``mode`` (built from RGB noise)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode)


def b64(data: bytes, data_url: bool = False) -> str:
    text = base64.b64encode(data).decode("ascii")
    return f"data:image/png;base64,{text}" if data_url else text


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """Return a PNG whose header claims ``side`` x ``side`` pixels and that contains no pixel data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def gif_bomb(side: int = BOMB_SIDE) -> bytes:
    """Return a real 2x2 GIF whose screen and frame descriptors claim ``side`` x ``side``."""
    data = bytearray(encode(Image.new("L", (2, 2), 7), "GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    descriptor = data.index(b"\x2c\x00\x00\x00\x00")
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", side, side)
    return bytes(data)


def bmp_bomb(side: int = BOMB_SIDE) -> bytes:
    """Return a real 2x2 BMP whose info header claims ``side`` x ``side``."""
    data = bytearray(encode(Image.new("RGB", (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", side, side)
    return bytes(data)


def sixteen_bit_png() -> bytes:
    values = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 61).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")


def animated_gif() -> tuple[bytes, bytes]:
    """Return a three-frame GIF and its first frame alone as a PNG."""
    frames = [noise(16, "L", seed) for seed in range(3)]
    animation = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    first = Image.open(io.BytesIO(animation))
    first.seek(0)
    return animation, encode(first.convert("L"), "PNG")


def exif_rotated_jpeg() -> tuple[bytes, bytes, bytes]:
    """Return a JPEG stored sideways with EXIF orientation 6, and its decoded pixels as PNG upright and sideways.

    The upright PNG contains exactly the pixels a viewer displays for the JPEG, so a service
    that honours the orientation embeds both identically.
    """
    upright = Image.new("L", (32, 64), 30)
    upright.paste(220, (0, 0, 32, 32))  # bright top half
    stored = upright.rotate(90, expand=True)  # the sensor's orientation, 64x32
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    sideways = Image.open(io.BytesIO(rotated))
    displayed = sideways.transpose(Image.Transpose.ROTATE_270)  # orientation 6: turn 90 degrees clockwise
    return rotated, encode(displayed, "PNG"), encode(sideways, "PNG")


@dataclass(frozen=True)
class BadImage:
    """An image that must be rejected, with the status and error fragments it must produce."""

    name: str
    data: bytes
    status: int
    error_type: str
    fragment: str


def bad_images() -> list[BadImage]:
    """Return every malformed or oversized image case."""
    jpeg = encode(noise(64), "JPEG")
    png = encode(noise(64), "PNG")
    return [
        BadImage("truncated-jpeg", jpeg[: len(jpeg) // 2], 400, "invalid_input", "JPEG image is corrupt or truncated"),
        BadImage("truncated-png", png[: len(png) // 2], 400, "invalid_input", "PNG image is corrupt or truncated"),
        BadImage("png-header-only", png[:20], 400, "invalid_input", "image header is invalid"),
        BadImage("not-an-image", b"these bytes are not an image", 400, "invalid_input", "not a recognised image"),
        BadImage("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", 415, "unsupported_media_type", "format PDF is not supported"),
        BadImage("png-bomb", png_bomb(), 413, "payload_too_large", "3600000000 pixels"),
        BadImage("gif-bomb", gif_bomb(), 413, "payload_too_large", "3600000000 pixels"),
        BadImage("bmp-bomb", bmp_bomb(), 413, "payload_too_large", "3600000000 pixels"),
        BadImage("over-service-limit", png_bomb(6000), 413, "payload_too_large", "above the limit of"),
    ]


def good_images() -> dict[str, bytes]:
    """Return images in every pixel mode the service converts, each of which must embed."""
    base = noise(24)
    return {
        "one-pixel": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "palette": encode(base.convert("P"), "PNG"),
        "grayscale": encode(base.convert("L"), "PNG"),
        "one-bit": encode(base.convert("1"), "PNG"),
        "sixteen-bit": sixteen_bit_png(),
        "cmyk-jpeg": encode(base.convert("CMYK"), "JPEG"),
        "rgba": encode(base.convert("RGBA"), "PNG"),
        "gray-alpha": encode(base.convert("LA"), "PNG"),
        "webp": encode(base, "WEBP"),
        "tiff": encode(base, "TIFF"),
    }


# --- responses and stored state ----------------------------------------------------------


def error_of(response: httpx.Response) -> dict[str, str]:
    """Return the ``error`` object of an error response (its type and message)."""
    return response.json()["error"]


@dataclass(frozen=True)
class BankState:
    """What a client and the disk show of one bank: size, threshold and every file's bytes."""

    size: int
    threshold: float | None
    files: dict[str, bytes]


def bank_state(client: httpx.Client, data_dir: Path, bank: str) -> BankState:
    info = client.get(f"/v1/banks/{bank}").json()
    folder = data_dir / "banks" / bank
    files = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    return BankState(info["size"], info["threshold"], files)


def vectors(count: int, dim: int, seed: int = 0) -> list[dict[str, list[float]]]:
    """Return ``count`` random embedding items of width ``dim``."""
    rng = np.random.default_rng(seed)
    return [{"embedding": row.tolist()} for row in rng.normal(size=(count, dim))]


def metric_value(client: httpx.Client, name: str, **labels: str) -> float:
    """Return the value of the sample ``name`` with ``labels`` from /metrics, 0 when absent."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0
