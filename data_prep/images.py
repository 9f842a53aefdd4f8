"""The image path: decode (PIL) -> RGB -> resize shorter side (bicubic) -> center crop -> JPEG."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageSkip(Exception):
    """A bad image; `reason` is the skip-reason key recorded in stats.json."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white (a black background would change colours)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode PIL decodes: palette (+transparency), alpha, CMYK, 1-bit, 16/32-bit, float."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "RGBa", "La", "PA") or (mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: rescale to 8 bits by the actual value range (PIL's convert clips instead).
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((arr - lo) * scale).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageSkip("unsupported_mode", f"mode {mode}: {e}") from e


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode bytes to an RGB PIL image; raises ImageSkip with a reason for anything bad.

    `min_side` lets JPEG decoding use DCT scaling (draft mode) down to no less than that size,
    which is several times faster for big photos and does not change the final crop's content.
    """
    if not data:
        raise ImageSkip("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if min_side and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
                img.draft(img.mode, (min_side, min_side))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageSkip("image_too_large", str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageSkip("corrupt_image", "not a recognised image format") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # PIL raises OSError for truncated data, SyntaxError/ValueError for broken headers.
        raise ImageSkip("corrupt_image", str(e)) from e
    if img.width < 1 or img.height < 1:
        raise ImageSkip("corrupt_image", "empty image")
    return to_rgb(img)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bicubic), then crop the centre `size` x `size`."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if (left, top, new_w, new_h) != (0, 0, size, size):
        img = img.crop((left, top, left + size, top + size))
    return img


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def process_image(data: bytes, size: int, quality: int) -> bytes:
    """Raw image bytes -> JPEG bytes of a `size` x `size` RGB center crop. Raises ImageSkip."""
    img = decode_image(data, min_side=size)
    try:
        out = resize_center_crop(img, size)
        return encode_jpeg(out, quality)
    except (OSError, ValueError) as e:
        raise ImageSkip("corrupt_image", str(e)) from e
