"""The decode gate: turn bytes into a fully decoded image or a rejection with a reason.

`Image.verify()` does not catch truncated JPEGs; a full `load()` does (with LOAD_TRUNCATED_IMAGES off).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageFile, UnidentifiedImageError

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
    return image


def _failure_reason(exc: BaseException) -> str:
    """`truncated` for data cut short (Pillow says so in an OSError), else `decode_error`."""
    text = str(exc).lower()
    if isinstance(exc, OSError) and ("truncated" in text or "broken data stream" in text):
        return "truncated"
    return "decode_error"


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
