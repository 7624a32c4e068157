"""`crop`: the region of a frame a model works on (`[model] crop`, a bundle's `input.crop`) — what a valid one
is, and where it lies in a decoded frame. Numbers only: the manifest, the config and preprocessing share it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MIN_CROP_PIXELS = 8


def crop_problem(crop: Any) -> str | None:
    """None when `crop` is a region `[x0, y0, x1, y1]` of the frame: fractions of it (numbers with a decimal
    point, 0–1) or pixels (whole numbers, ≥ 8 px each way), x0 < x1 and y0 < y1; else what is wrong."""
    numbers = isinstance(crop, list | tuple) and len(crop) == 4 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in crop)
    if not numbers or not (crop[0] < crop[2] and crop[1] < crop[3]):
        return (f"expected [x0, y0, x1, y1] with x0 < x1 and y0 < y1: fractions of the frame (0.0–1.0) or pixels "
                f"(whole numbers), got {crop!r}")
    if all(isinstance(v, int) for v in crop):
        if crop[2] - crop[0] < MIN_CROP_PIXELS or crop[3] - crop[1] < MIN_CROP_PIXELS:
            return (f"{list(crop)} is a region in pixels smaller than {MIN_CROP_PIXELS}×{MIN_CROP_PIXELS}; write "
                    "fractions of the frame with a decimal point (e.g. [0.0, 0.5, 1.0, 1.0])")
        return None
    if any(v > 1 for v in crop):
        return (f"{list(crop)} mixes pixels and fractions: fractions are 0.0–1.0 (with a decimal point), "
                "pixels whole numbers")
    return None


def crop_box(size: tuple[int, int], crop: Sequence[float],
             source_scale: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int, int, int]:
    """The crop (`ImageInputSpec.crop`: fractions, or pixels of the original frame) as a box in the decoded
    frame of `size` (a JPEG decoded at reduced scale has `source_scale` original pixels per decoded pixel),
    clipped to it. ValueError (one line) when the frame does not hold at least 3×3 pixels of it."""
    w, h = size
    if all(isinstance(v, int) for v in crop):
        sx, sy = source_scale
        box = (round(crop[0] / sx), round(crop[1] / sy), round(crop[2] / sx), round(crop[3] / sy))
    else:
        box = (round(crop[0] * w), round(crop[1] * h), round(crop[2] * w), round(crop[3] * h))
    left, top, right, bottom = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
    if right - left < 3 or bottom - top < 3:
        sx, sy = source_scale
        raise ValueError(f"the {round(w * sx)}x{round(h * sy)} frame does not contain the crop {list(crop)}")
    return left, top, right, bottom
