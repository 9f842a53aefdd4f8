import io

import numpy as np
import pytest
from PIL import Image

from data_prep.images import ImageSkip, decode_image, process_image, resize_center_crop, to_rgb

from .conftest import jpeg_bytes


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decoded(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    img.load()
    return img


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("1", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("I", "TIFF"),
        ("F", "TIFF"),
    ],
)
def test_every_mode_becomes_rgb_jpeg_of_the_right_size(mode, fmt):
    data = _encode(Image.new(mode, (50, 30)), fmt)
    out = _decoded(process_image(data, 16, 90))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (16, 16))


def test_transparency_is_flattened_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert to_rgb(pal).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_keeps_its_range():
    arr = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    rgb = np.asarray(to_rgb(Image.fromarray(arr)))
    assert rgb.min() == 0 and rgb.max() == 255


def test_resize_shorter_side_then_center_crop():
    # left third red, middle green, right third blue: the crop of a wide image keeps the middle
    arr = np.zeros((30, 90, 3), dtype=np.uint8)
    arr[:, :30, 0] = 255
    arr[:, 30:60, 1] = 255
    arr[:, 60:, 2] = 255
    out = resize_center_crop(Image.fromarray(arr), 10)
    assert out.size == (10, 10)
    px = np.asarray(out)
    assert px[5, 5, 1] > 200 and px[5, 5, 0] < 50
    tall = resize_center_crop(Image.new("RGB", (20, 100)), 10)
    assert tall.size == (10, 10)
    small = resize_center_crop(Image.new("RGB", (4, 6)), 12)  # upscales
    assert small.size == (12, 12)


def test_big_jpeg_uses_draft_decoding_but_gives_the_same_crop_size():
    data = _encode(Image.new("RGB", (1024, 768), (10, 200, 10)), "JPEG")
    img = decode_image(data, min_side=32)
    assert min(img.size) >= 32 and img.size[0] < 1024
    out = _decoded(process_image(data, 32, 95))
    assert out.size == (32, 32)
    assert abs(int(np.asarray(out)[16, 16, 1]) - 200) < 10


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty_file"),
        (b"definitely not an image", "corrupt_image"),
        (jpeg_bytes(size=(300, 300))[:400], "corrupt_image"),  # truncated JPEG
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt_image"),  # broken PNG header
    ],
)
def test_bad_images_are_skips_with_reasons(data, reason):
    with pytest.raises(ImageSkip) as e:
        process_image(data, 16, 90)
    assert e.value.reason == reason


def test_decompression_bomb_is_a_skip(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageSkip) as e:
        process_image(_encode(Image.new("RGB", (100, 100)), "PNG"), 16, 90)
    assert e.value.reason == "image_too_large"


def test_mode_pil_cannot_convert_is_an_unsupported_mode_skip(monkeypatch):
    img = Image.new("RGB", (4, 4))
    monkeypatch.setattr(type(img), "mode", property(lambda self: "XYZ;7"), raising=False)

    def refuse(*args, **kwargs):
        raise ValueError("conversion from XYZ;7 to RGB not supported")

    monkeypatch.setattr(img, "convert", refuse)
    with pytest.raises(ImageSkip) as e:
        to_rgb(img)
    assert e.value.reason == "unsupported_mode"
