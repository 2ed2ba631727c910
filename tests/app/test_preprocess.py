"""Image decoding: formats, modes, orientation, limits and malformed data."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from app.errors import InvalidInput, PayloadTooLarge, ServiceError, UnsupportedMediaType
from app.preprocess import decode_base64, decode_image_item
from training.artifact import ImagePreprocessing

RGB = ImagePreprocessing(size=8, channels=3, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], resize="stretch")
GRAY = ImagePreprocessing(size=8, channels=1, mean=[0.0], std=[1.0], resize="stretch")
LIMIT = 1_000_000


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pixels(tensor: torch.Tensor) -> np.ndarray:
    """Return a decoded tensor (C, H, W) as 0-255 values for comparison."""
    return tensor.numpy() * 255.0


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def png_header(width: int, height: int) -> bytes:
    """Return a PNG whose IHDR claims ``width`` x ``height`` but that contains no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


def gif_claiming(width: int, height: int) -> bytes:
    """Return a real 2x2 GIF whose screen and frame descriptors claim a larger size."""
    data = bytearray(encode(Image.new("L", (2, 2), 7), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b"\x2c\x00\x00\x00\x00")
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    """Return a real 2x2 BMP whose info header claims a larger size."""
    data = bytearray(encode(Image.new("RGB", (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


# --- base64 ---------------------------------------------------------------------------


def test_base64_plain() -> None:
    assert decode_base64(base64.b64encode(b"abc").decode()) == b"abc"


def test_base64_data_url() -> None:
    assert decode_base64("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"


def test_base64_line_breaks() -> None:
    assert decode_base64("YW\nJj\r\n") == b"abc"


def test_base64_invalid_character() -> None:
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_base64("YWJj*")


def test_base64_bad_padding() -> None:
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_base64("YWJjZA=")


def test_base64_non_ascii() -> None:
    with pytest.raises(InvalidInput, match="non-ASCII"):
        decode_base64("YWJj\u00e9")


def test_base64_empty() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_base64("data:image/png;base64,")


def test_base64_malformed_data_url() -> None:
    with pytest.raises(InvalidInput, match="data URL"):
        decode_base64("data:text/plain,abc")


# --- output shape, normalisation and resizing -----------------------------------------


def test_decode_shape_and_dtype() -> None:
    tensor = decode_image_item(encode(noise((20, 12)), "PNG"), RGB, LIMIT)
    assert tensor.shape == (3, 8, 8)
    assert tensor.dtype == torch.float32


def test_decode_normalises_with_mean_std() -> None:
    prep = ImagePreprocessing(size=4, channels=3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])
    tensor = decode_image_item(encode(Image.new("RGB", (4, 4), (255, 0, 255)), "PNG"), prep, LIMIT)
    assert torch.allclose(tensor[0], torch.full((4, 4), 2.0))
    assert torch.allclose(tensor[1], torch.full((4, 4), -1.0))
    assert torch.allclose(tensor[2], torch.full((4, 4), 0.5))


def test_decode_accepts_base64_text() -> None:
    data = encode(noise((9, 9)), "PNG")
    from_text = decode_image_item("data:image/png;base64," + base64.b64encode(data).decode(), RGB, LIMIT)
    from_bytes = decode_image_item(data, RGB, LIMIT)
    assert torch.equal(from_text, from_bytes)


def test_resize_center_crop_keeps_centre() -> None:
    image = Image.new("L", (30, 10), 0)
    image.paste(255, (6, 0, 24, 10))  # white centre wider than the 10x10 crop, black sides
    prep = ImagePreprocessing(size=5, channels=1, mean=[0.0], std=[1.0], resize="resize_center_crop")
    out = pixels(decode_image_item(encode(image, "PNG"), prep, LIMIT))
    assert out.shape == (1, 5, 5)
    assert np.allclose(out, 255.0)


def test_resize_stretch_keeps_sides() -> None:
    image = Image.new("L", (30, 10), 0)
    image.paste(255, (10, 0, 20, 10))
    out = pixels(decode_image_item(encode(image, "PNG"), GRAY, LIMIT))
    assert out[0, :, 0].max() < 1.0
    assert out[0, :, 4].min() > 200.0


# --- EXIF orientation -----------------------------------------------------------------


def test_exif_rotated_jpeg_matches_upright() -> None:
    upright = Image.new("L", (32, 64), 0)
    upright.paste(255, (0, 0, 32, 32))  # white top half
    stored = upright.rotate(90, expand=True)  # sensor orientation, 64x32
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90 degree clockwise turn
    rotated_jpeg = encode(stored, "JPEG", quality=95, exif=exif.tobytes())

    expected = pixels(decode_image_item(encode(upright, "JPEG", quality=95), GRAY, LIMIT))
    decoded = pixels(decode_image_item(rotated_jpeg, GRAY, LIMIT))
    ignored = pixels(decode_image_item(encode(stored, "JPEG", quality=95), GRAY, LIMIT))
    assert np.abs(decoded - expected).max() < 8.0
    assert np.abs(ignored - expected).max() > 200.0


# --- modes ----------------------------------------------------------------------------


def test_palette_image() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30])
    out = pixels(decode_image_item(encode(image, "PNG"), RGB, LIMIT))
    assert np.allclose(out[:, 0, 0], [10, 200, 30], atol=0.5)


def test_palette_transparency_composited() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.info["transparency"] = 0
    prep = RGB.model_copy(update={"background": 100})
    out = pixels(decode_image_item(encode(image, "PNG", transparency=0), prep, LIMIT))
    assert np.allclose(out, 100.0, atol=0.5)


def test_grayscale_to_three_channels() -> None:
    out = pixels(decode_image_item(encode(Image.new("L", (8, 8), 77), "PNG"), RGB, LIMIT))
    assert np.allclose(out, 77.0, atol=0.5)


def test_rgb_to_one_channel_luma() -> None:
    out = pixels(decode_image_item(encode(Image.new("RGB", (8, 8), (255, 0, 0)), "PNG"), GRAY, LIMIT))
    assert np.allclose(out, 76.0, atol=0.5)  # 0.299 * 255


def test_one_bit_image() -> None:
    image = Image.new("1", (8, 8), 1)
    out = pixels(decode_image_item(encode(image, "PNG"), GRAY, LIMIT))
    assert np.allclose(out, 255.0, atol=0.5)


@pytest.mark.parametrize(("sample", "expected"), [(65535, 255.0), (32896, 128.0), (257, 1.0)])
def test_sixteen_bit_png_rescaled(sample: int, expected: float) -> None:
    image = Image.fromarray(np.full((8, 8), sample, dtype=np.uint16))
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = pixels(decode_image_item(data, GRAY, LIMIT))
    assert np.allclose(out, expected, atol=0.5)


def test_int32_tiff_rescaled() -> None:
    image = Image.fromarray(np.full((8, 8), 65535, dtype=np.int32))
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = pixels(decode_image_item(data, GRAY, LIMIT))
    assert np.allclose(out, 255.0, atol=0.5)


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = pixels(decode_image_item(data, RGB, LIMIT))
    assert np.allclose(out, 255.0, atol=3.0)


@pytest.mark.parametrize("background", [0, 128, 255])
def test_rgba_transparent_uses_background(background: int) -> None:
    prep = RGB.model_copy(update={"background": background})
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = pixels(decode_image_item(encode(image, "PNG"), prep, LIMIT))
    assert np.allclose(out, float(background), atol=0.5)


def test_rgba_half_transparent_blends() -> None:
    prep = RGB.model_copy(update={"background": 0})
    image = Image.new("RGBA", (8, 8), (200, 100, 0, 128))
    out = pixels(decode_image_item(encode(image, "PNG"), prep, LIMIT))
    assert np.allclose(out[:, 0, 0], [100, 50, 0], atol=1.5)


def test_la_transparent_uses_background() -> None:
    prep = GRAY.model_copy(update={"background": 60})
    image = Image.new("LA", (8, 8), (255, 0))
    out = pixels(decode_image_item(encode(image, "PNG"), prep, LIMIT))
    assert np.allclose(out, 60.0, atol=0.5)


def test_pa_transparent_uses_background() -> None:
    prep = RGB.model_copy(update={"background": 200})
    image = Image.new("PA", (8, 8), (0, 0))
    image.putpalette([255, 0, 0])
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "PA"
    out = pixels(decode_image_item(data, prep, LIMIT))
    assert np.allclose(out, 200.0, atol=0.5)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = pixels(decode_image_item(buffer.getvalue(), RGB, LIMIT))
    assert np.allclose(out[:, 0, 0], [255, 0, 0], atol=0.5)


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "WEBP", "TIFF", "GIF"])
def test_common_formats_decode(fmt: str) -> None:
    tensor = decode_image_item(encode(Image.new("RGB", (12, 12), (0, 128, 0)), fmt), RGB, LIMIT)
    assert tensor.shape == (3, 8, 8)


# --- limits ---------------------------------------------------------------------------


def test_pixel_limit_real_image() -> None:
    with pytest.raises(PayloadTooLarge, match=r"100x100 = 10000 pixels, above the limit of 5000") as caught:
        decode_image_item(encode(noise((100, 100)), "PNG"), RGB, 5000)
    assert caught.value.status == 413


@pytest.mark.parametrize(
    "data",
    [png_header(3000, 3000), gif_claiming(3000, 3000), bmp_claiming(3000, 3000)],
    ids=["png", "gif", "bmp"],
)
def test_pixel_limit_from_header(data: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match="9000000 pixels, above the limit of 1000000"):
        decode_image_item(data, RGB, LIMIT)


@pytest.mark.parametrize(
    "data",
    [png_header(60000, 60000), gif_claiming(60000, 60000), bmp_claiming(60000, 60000)],
    ids=["png", "gif", "bmp"],
)
def test_decompression_bomb_header(data: bytes) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image_item(data, RGB, LIMIT)
    assert caught.value.message == f"image is too large: its header declares 3600000000 pixels, above the limit of {LIMIT} pixels"


def test_pillow_global_untouched() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(PayloadTooLarge):
        decode_image_item(png_header(60000, 60000), RGB, LIMIT)
    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image_item(encode(noise((4, 4)), "PNG"), RGB, 0)


# --- malformed data -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(fmt: str) -> None:
    data = encode(noise((64, 64)), fmt)
    with pytest.raises(InvalidInput, match="corrupt or truncated") as caught:
        decode_image_item(data[: len(data) // 2], RGB, LIMIT)
    assert caught.value.status == 400


def test_empty_bytes() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_image_item(b"", RGB, LIMIT)


def test_empty_base64_text() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_image_item("", RGB, LIMIT)


def test_non_image_bytes() -> None:
    with pytest.raises(InvalidInput, match="not a recognised image") as caught:
        decode_image_item(b"hello, this is plain text", RGB, LIMIT)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"%PDF-1.7\n%...", "PDF"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC"),
        (b"8BPS\x00\x01", "PSD"),
    ],
)
def test_unsupported_format(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"{name} is not supported") as caught:
        decode_image_item(data, RGB, LIMIT)
    assert caught.value.status == 415


def test_broken_png_header() -> None:
    data = bytearray(png_header(8, 8))
    data[20] ^= 0xFF  # corrupt IHDR so its CRC no longer matches
    with pytest.raises(InvalidInput):
        decode_image_item(bytes(data), RGB, LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_corrupted_bytes_never_crash(fmt: str) -> None:
    data = encode(noise((24, 24)), fmt)
    rng = np.random.default_rng(1)
    for trial in range(40):
        mutated = bytearray(data)
        for position in rng.integers(0, len(data), size=4):
            mutated[position] = int(rng.integers(0, 256))
        if trial % 3 == 0:
            mutated = mutated[: int(rng.integers(0, len(mutated)))]
        try:
            tensor = decode_image_item(bytes(mutated), RGB, LIMIT)
        except ServiceError as error:
            assert error.status in (400, 413, 415)
        else:
            assert tensor.shape == (3, 8, 8)


# --- threads --------------------------------------------------------------------------


def test_decode_thread_safe() -> None:
    images = [encode(noise((24, 16), seed=seed), fmt) for seed in range(8) for fmt in ("PNG", "JPEG")]
    serial = [decode_image_item(data, RGB, LIMIT) for data in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda data: decode_image_item(data, RGB, LIMIT), images * 3))
    for index, tensor in enumerate(parallel):
        assert torch.equal(tensor, serial[index % len(images)])
