"""The decode gate: turn bytes into a fully decoded image or a rejection with a reason.

`Image.verify()` does not catch truncated JPEGs; a full `load()` does (with LOAD_TRUNCATED_IMAGES off).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edge_infer.gates import Verdict

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 7300×5500 photo; beyond this, decoding costs the Pi hundreds of MB
DEFAULT_MIN_SIDE = 8


class DecodeRejected(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"{verdict.reason}: {verdict.detail}")
        self.verdict = verdict


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode completely or raise `DecodeRejected` carrying the verdict (reason codes are stable).

    `draft_size` (the model's input size) lets a JPEG decode at 1/2, 1/4 or 1/8 scale when that still covers
    it — much less work for a 640×480 frame feeding a 224×224 model. The converter decodes with the same
    argument, so calibration and serving see the same pixels.
    """
    if not data:
        raise DecodeRejected(Verdict.reject("empty_file", "the file is empty (0 bytes)", bytes=0))
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeRejected(
            Verdict.reject("not_an_image", "not a recognised image format", bytes=len(data))
        ) from None
    except Image.DecompressionBombError as exc:
        raise DecodeRejected(Verdict.reject("too_large", _describe(exc), bytes=len(data))) from None
    except Exception as exc:  # a header cut short fails already here
        raise DecodeRejected(Verdict.reject(_failure_reason(exc), _describe(exc), bytes=len(data))) from None
    width, height = image.size
    pixels = width * height
    if pixels > max_pixels:
        raise DecodeRejected(
            Verdict.reject(
                "too_large",
                f"{width}x{height} is {pixels} pixels, over the limit of {max_pixels}",
                width=width,
                height=height,
                max_pixels=max_pixels,
            )
        )
    if min(width, height) < min_side:
        raise DecodeRejected(
            Verdict.reject(
                "too_small",
                f"{width}x{height} is smaller than {min_side} pixels on a side",
                width=width,
                height=height,
                min_side=min_side,
            )
        )
    try:
        if draft_size is not None and image.format == "JPEG":
            image.draft(None, draft_size)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:  # any decoder failure is a verdict, never a crash
        raise DecodeRejected(
            Verdict.reject(_failure_reason(exc), _describe(exc), bytes=len(data), width=width, height=height)
        ) from None
    return standardize(image)


ALPHA_BACKGROUND = 255  # transparent pixels become white, as an image viewer shows them


def standardize(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and bring any safe mode to `L` or `RGB`, or raise `DecodeRejected`
    (`unsupported_mode`).

    Palette, 1-bit, CMYK and YCbCr convert directly; alpha (RGBA, LA, PA, palette transparency) is flattened
    onto white; 16-bit greyscale is scaled down (not clipped, which would turn most of the frame white).
    """
    with contextlib.suppress(Exception):  # a corrupt EXIF block must not cost the frame; keep it as stored
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    try:
        if mode in ("1", "CMYK", "YCbCr"):
            return image.convert("RGB" if mode != "1" else "L")
        if mode == "P":
            mode = "RGBA" if "transparency" in image.info else "RGB"
            image = image.convert(mode)
            if mode == "RGB":
                return image
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            pixels = np.asarray(image)
            if pixels.dtype != np.uint8:
                pixels = pixels.astype(np.int64)
                shift = 8 if pixels.max(initial=0) > 255 or mode.startswith("I;16") else 0
                pixels = np.clip(pixels >> shift, 0, 255)
            return Image.fromarray(pixels.astype(np.uint8), "L")
        if mode in ("LA", "La", "PA"):
            image = image.convert("LA")
            background = Image.new("L", image.size, ALPHA_BACKGROUND)
            background.paste(image.getchannel("L"), mask=image.getchannel("A"))
            return background
        if mode in ("RGBA", "RGBa", "RGBX"):
            image = image.convert("RGBA")
            background = Image.new("RGB", image.size, (ALPHA_BACKGROUND,) * 3)
            background.paste(image.convert("RGB"), mask=image.getchannel("A"))
            return background
    except Exception as exc:
        raise DecodeRejected(
            Verdict.reject("unsupported_mode", f"cannot convert {image.mode} safely: {_describe(exc)}",
                           mode=image.mode)
        ) from None
    raise DecodeRejected(
        Verdict.reject("unsupported_mode", f"pixel mode {mode} has no safe conversion to L or RGB", mode=mode)
    )


def _failure_reason(exc: BaseException) -> str:
    """`truncated` for data cut short (Pillow says so in an OSError), else `decode_error`."""
    text = str(exc).lower()
    if isinstance(exc, OSError) and ("truncated" in text or "broken data stream" in text):
        return "truncated"
    return "decode_error"


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
