"""Image quality: is this frame fit for the model? Metrics, limits and the frozen-frame check.

The metrics are measured on the frame as the model sees it (`edge_infer.preprocess.model_view`, in greyscale),
and the converter measures the very same metrics on the calibration images to record what good input looks
like (`reference_stats`). Limits derive from that reference (`limits_from_reference`), so "too dark" means
darker than the training data rather than a magic number; the device config can override each limit.

Metrics (greyscale, 0–255):
- `brightness`: mean level; `dark_fraction` / `bright_fraction`: share of pixels crushed to ≤ 10 / ≥ 245.
- `contrast`: standard deviation of the levels (RMS contrast).
- `sharpness`: variance of the 4-neighbour Laplacian (low when blurred, but as high or low as the content is busy:
  the drift monitor follows it; the blur check uses `focus`).
- `focus`: mean |second difference| / mean |first difference| along rows and along columns (the lower of the
  two: motion blur softens one direction) of the frame reduced to a long side of `FOCUS_SIDE` px — how
  sharp the edges are, whatever their contrast and however many there are: ~0.9–1.3 on photographs in focus,
  falling as defocus spreads each edge (0.5–0.8 at σ 4–6 px on a 640×480 frame). Measured relative to the
  frame, not at the model's input size, so a 96×96 model's camera is still caught out of focus.
- `noise`: Immerkær's fast noise estimate (σ of Gaussian noise, in levels), taken at the frame's own
  resolution on a grid of small patches (the lower quartile of them: noise is everywhere, texture is not) —
  downscaling to the model's size would average the noise away.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from edge_infer.gates import Verdict

if TYPE_CHECKING:
    from edge_infer.sections import GateConfig

DARK_LEVEL = 10
BRIGHT_LEVEL = 245
PERCENTILES = (1, 5, 50, 95, 99)
REFERENCE_VERSION = 2  # 2: `focus` recorded (bundles before it keep their checks and get no focus check)
FOCUS_SIDE = 160
FOCUS_MARGIN = 0.85  # the focus limit: this share of the calibration images' 1st percentile
_NOISE_NORM = math.sqrt(math.pi / 2) / 6


@dataclass(frozen=True)
class ImageQuality:
    brightness: float
    dark_fraction: float
    bright_fraction: float
    contrast: float
    sharpness: float
    noise: float
    focus: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {name: round(getattr(self, name), 4) for name in METRICS}


METRICS = tuple(f.name for f in fields(ImageQuality))


def grey_of(pixels: np.ndarray) -> np.ndarray:
    """The plane the metrics are measured on: the image itself when greyscale, else its green channel
    (59 % of luma and half a Bayer sensor's photosites, and free: a strided view, no colour conversion)."""
    return pixels if pixels.ndim == 2 else pixels[:, :, 1]


@functools.lru_cache(maxsize=8)
def _ones(n: int) -> np.ndarray:
    """A float32 vector of ones: `x @ ones` sums through BLAS, several times faster than `x.sum()` here."""
    return np.ones(n, np.float32)


def crop_roi(gray: np.ndarray, roi: Sequence[float] | None) -> np.ndarray:
    """Cut the region of interest, given as fractions `[x0, y0, x1, y1]` of the frame."""
    if roi is None:
        return gray
    h, w = gray.shape
    x0, y0, x1, y1 = roi
    left, right = round(x0 * w), max(round(x1 * w), round(x0 * w) + 3)
    top, bottom = round(y0 * h), max(round(y1 * h), round(y0 * h) + 3)
    return gray[top:bottom, left:right]


def assess(decoded: Image.Image, view: Image.Image, roi: Sequence[float] | None = None) -> ImageQuality:
    """The metrics of one frame: `view` is its `model_view`, `decoded` the frame at its decoded resolution.
    The converter records these for its calibration images; `ImageGate` checks them on the device."""
    return assess_grey(decoded, grey_of(np.asarray(view)), roi)


def assess_grey(decoded: Image.Image, grey: np.ndarray, roi: Sequence[float] | None = None,
                plane: np.ndarray | None = None) -> ImageQuality:
    """`assess` for a caller that already has the view's measured plane (`grey_of`) and, optionally, the
    frame's `focus_plane` for this ROI."""
    plane = focus_plane(decoded, roi) if plane is None else plane
    return replace(measure(crop_roi(grey, roi), native_noise(decoded, roi)), focus=focus_of(plane))


def focus_plane(image: Image.Image, roi: Sequence[float] | None = None) -> np.ndarray:
    """The plane `focus` is measured on (the camera baseline reads it too): the ROI of the frame's green
    channel (greyscale frames as they are), box-reduced by an integer factor to a long side of at most
    `FOCUS_SIDE` px, as uint8."""
    plane = image if image.mode == "L" else image.getchannel("G")
    if roi is not None:
        w, h = plane.size
        plane = plane.crop((round(roi[0] * w), round(roi[1] * h), max(round(roi[2] * w), round(roi[0] * w) + 3),
                            max(round(roi[3] * h), round(roi[1] * h) + 3)))
    factor = -(-max(plane.size) // FOCUS_SIDE)
    return np.asarray(plane.reduce(factor) if factor > 1 else plane)


def focus_of(plane: np.ndarray) -> float:
    """`focus` (see the module docstring) of a `focus_plane`. 0.0 for a flat frame."""
    g = plane.astype(np.int16)
    if min(g.shape) < 3:
        return 0.0
    ratios = []
    for axis in (0, 1):  # each direction alone: motion blur softens one of them
        first = np.diff(g, axis=axis)
        second = np.diff(first, axis=axis)
        np.abs(first, out=first)  # int16 in place, summed in int32: exact, and twice as fast as float means
        np.abs(second, out=second)
        gradient = int(first.sum(dtype=np.int32)) / first.size
        ratios.append(int(second.sum(dtype=np.int32)) / second.size / gradient if gradient > 0.05 else 0.0)
    return min(ratios)


def native_focus(image: Image.Image, roi: Sequence[float] | None = None) -> float:
    """`focus` of the frame's ROI (see `focus_plane`)."""
    return focus_of(focus_plane(image, roi))


def native_noise(image: Image.Image, roi: Sequence[float] | None = None, grid: int = 3, patch: int = 32) -> float:
    """Immerkær noise at the image's own resolution: the lower quartile over a grid×grid block of patches at
    the centre of the ROI (noise is everywhere, texture is not; only the block is copied out of the frame).
    Colour frames are measured on their green channel."""
    w, h = image.size
    x0, y0, x1, y1 = roi if roi is not None else (0.0, 0.0, 1.0, 1.0)
    size = int(min(patch, (x1 - x0) * w / grid, (y1 - y0) * h / grid))
    if size < 3:
        return 0.0
    span = size * grid
    left = int((x0 + x1) / 2 * w - span / 2)
    top = int((y0 + y1) / 2 * h - span / 2)
    block = np.asarray(image.crop((left, top, left + span, top + span)))
    if block.ndim == 3:
        block = block[:, :, 1]
    tiles = block.reshape(grid, size, grid, size).transpose(0, 2, 1, 3).reshape(grid * grid, size, size)
    estimates = np.sort(_immerkaer(tiles.astype(np.int16)))
    return float(estimates[len(estimates) // 4])


def _immerkaer(g: np.ndarray) -> np.ndarray:
    """Per tile (…, H, W): convolve with [[1,-2,1],[-2,4,-2],[1,-2,1]], mean |·| → σ of the noise. The kernel
    is the outer product of [1,-2,1] with itself: a second difference down, then across (int16: |·| ≤ 16·255)."""
    down = g[..., :-2, :] + g[..., 2:, :]
    down -= 2 * g[..., 1:-1, :]
    response = down[..., :-2] + down[..., 2:]
    response -= 2 * down[..., 1:-1]
    np.abs(response, out=response)
    per_tile = response.reshape(*response.shape[:-2], -1)
    return _NOISE_NORM * per_tile.sum(axis=-1, dtype=np.int32) / per_tile.shape[-1]  # exact integer sums


def measure(gray: np.ndarray, noise: float) -> ImageQuality:
    """The metrics of a greyscale uint8 image (at least 3×3), given its `native_noise`."""
    g = gray.astype(np.int16)  # contiguous, whatever the strides of `gray`
    n = g.size
    flat = g.ravel().astype(np.float32)
    mean = float(flat @ _ones(n)) / n  # float32 sums: exact up to 65,000 levels of 255, close beyond
    var = max(float(flat @ flat) / n - mean * mean, 0.0)
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1]  # int16 cannot overflow: |·| ≤ 4·255·2; in place: fewer temporaries
    laplacian += g[1:-1, :-2]
    laplacian += g[1:-1, 2:]
    laplacian -= 4 * g[1:-1, 1:-1]
    lap = laplacian.ravel().astype(np.float32)
    m = float(lap @ _ones(lap.size)) / lap.size
    return ImageQuality(
        brightness=mean,
        dark_fraction=np.count_nonzero(g <= DARK_LEVEL) / n,
        bright_fraction=np.count_nonzero(g >= BRIGHT_LEVEL) / n,
        contrast=math.sqrt(var),
        sharpness=max(float(lap @ lap) / lap.size - m * m, 0.0),
        noise=noise,
    )


def reference_stats(qualities: Sequence[ImageQuality]) -> dict[str, Any]:
    """Percentiles of each metric over good images: what the manifest records as `reference.image_quality`."""
    table = np.array([[getattr(q, m) for m in METRICS] for q in qualities], dtype=np.float64)
    out: dict[str, Any] = {"version": REFERENCE_VERSION, "samples": len(qualities)}
    for i, metric in enumerate(METRICS):
        values = np.percentile(table[:, i], PERCENTILES)
        out[metric] = {f"p{p:02d}": round(float(v), 4) for p, v in zip(PERCENTILES, values, strict=True)}
    return out


@dataclass(frozen=True)
class QualityLimits:
    """Each limit, or None when that check is off. `source` says where the values came from."""

    min_brightness: float | None = None
    max_brightness: float | None = None
    max_dark_fraction: float | None = None
    max_bright_fraction: float | None = None
    min_contrast: float | None = None
    min_sharpness: float | None = None
    max_noise: float | None = None
    min_focus: float | None = None
    source: str = "defaults"

    def override(self, values: dict[str, float | None]) -> QualityLimits:
        """Apply device-config overrides (a negative value turns a check off)."""
        known = {f.name for f in fields(self)} - {"source"}
        changes = {k: (None if v is not None and v < 0 else v) for k, v in values.items() if k in known}
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


# Without reference statistics only the unmistakable is rejected: a black, white or uniform frame.
DEFAULT_LIMITS = QualityLimits(min_brightness=8.0, max_brightness=247.0, min_contrast=2.0)


def limits_from_reference(reference: dict[str, Any] | None) -> QualityLimits:
    """Limits from the converter's reference percentiles: beyond the training data by a clear margin.

    - brightness: below half the 1st percentile, or above the 99th plus half the remaining headroom;
    - dark/bright fraction: a quarter of the frame more than the 99th percentile;
    - contrast and sharpness: below half the 1st percentile (sharpness is a variance: a quarter);
    - noise: above twice the 99th percentile;
    - focus: below `FOCUS_MARGIN` of the 1st percentile (a reference from before `focus`: no focus check).
    """
    if not reference:
        return DEFAULT_LIMITS
    try:
        p = {m: reference[m] for m in METRICS if m in reference}
        return QualityLimits(
            min_brightness=max(p["brightness"]["p01"] / 2, DEFAULT_LIMITS.min_brightness or 0.0),
            max_brightness=min(p["brightness"]["p99"] + (255 - p["brightness"]["p99"]) / 2,
                               DEFAULT_LIMITS.max_brightness or 255.0),
            max_dark_fraction=min(p["dark_fraction"]["p99"] + 0.25, 1.0) if p["dark_fraction"]["p99"] < 0.75
            else None,
            max_bright_fraction=min(p["bright_fraction"]["p99"] + 0.25, 1.0)
            if p["bright_fraction"]["p99"] < 0.75 else None,
            min_contrast=max(p["contrast"]["p01"] / 2, DEFAULT_LIMITS.min_contrast or 0.0),
            min_sharpness=p["sharpness"]["p01"] / 4,
            max_noise=p["noise"]["p99"] * 2 if p["noise"]["p99"] > 0 else None,
            min_focus=p["focus"]["p01"] * FOCUS_MARGIN if "focus" in p else None,
            source="reference",
        )
    except (KeyError, TypeError):
        return DEFAULT_LIMITS


def check(q: ImageQuality, limits: QualityLimits) -> Verdict:
    """The first failed check, in an order that names the cause (a dark frame is also flat and soft)."""
    rules: tuple[tuple[str, str, float | None, str], ...] = (
        ("underexposed", "brightness", limits.min_brightness, "<"),
        ("underexposed", "dark_fraction", limits.max_dark_fraction, ">"),
        ("overexposed", "brightness", limits.max_brightness, ">"),
        ("overexposed", "bright_fraction", limits.max_bright_fraction, ">"),
        ("low_contrast", "contrast", limits.min_contrast, "<"),
        ("blurry", "focus", limits.min_focus, "<"),
        ("blurry", "sharpness", limits.min_sharpness, "<"),
        ("noisy", "noise", limits.max_noise, ">"),
    )
    for reason, metric, limit, op in rules:
        if limit is None:
            continue
        value = getattr(q, metric)
        if (value < limit) if op == "<" else (value > limit):
            word = "below the minimum" if op == "<" else "above the maximum"
            return Verdict.reject(
                reason,
                f"{metric} {value:.3g} is {word} of {limit:.3g} ({limits.source})",
                metric=metric,
                value=round(value, 4),
                threshold=round(limit, 4),
                quality=q.to_dict(),
            )
    return Verdict(ok=True, metrics={"quality": q})  # the dataclass: no rounding work on the hot path


class FrozenDetector:
    """Rejects a frame when it and the `frames - 1` before it are (nearly) identical: a stuck camera.

    The mean absolute difference to the previous frame, in grey levels, at or below `max_diff` counts as
    unchanged. Not thread-safe: one detector per stream, fed in order.
    """

    def __init__(self, frames: int, max_diff: float = 0.5) -> None:
        self.frames = frames
        self.max_diff = max_diff
        self._previous: np.ndarray | None = None
        self._run = 1

    def check(self, gray: np.ndarray) -> Verdict:
        previous, self._previous = self._previous, gray
        if self.frames <= 1 or previous is None or previous.shape != gray.shape:
            self._run = 1
            return Verdict(ok=True)
        diff = float(np.abs(gray.astype(np.int16) - previous.astype(np.int16)).mean())
        self._run = self._run + 1 if diff <= self.max_diff else 1
        if self._run >= self.frames:
            return Verdict.reject(
                "frozen",
                f"frame unchanged for {self._run} frames (mean difference {diff:.3g} ≤ {self.max_diff:.3g})",
                metric="frame_difference",
                value=round(diff, 4),
                threshold=self.max_diff,
                unchanged_frames=self._run,
            )
        return Verdict(ok=True)


class ImageGate:
    """The quality checks for one image stream: limits (reference + overrides), region of interest, frozen."""

    def __init__(
        self,
        limits: QualityLimits,
        roi: Sequence[float] | None = None,
        frozen_frames: int = 0,
        frozen_max_diff: float = 0.5,
        enabled: bool = True,
    ) -> None:
        self.limits = limits
        self.roi = roi
        self.enabled = enabled
        self.frozen = FrozenDetector(frozen_frames, frozen_max_diff) if frozen_frames > 1 else None

    def check(self, decoded: Image.Image, view: Image.Image, pixels: np.ndarray | None = None) -> Verdict:
        """Quality verdict for a decoded frame and its model view (`pixels`: the view as an array, when the
        caller has it already); cheap: a few tenths of a millisecond at 224². `measure` then `judge`."""
        if not self.enabled and self.frozen is None:
            return Verdict(ok=True)
        gray, quality, _ = self.measure(decoded, view, pixels)
        return self.judge(gray, quality)

    def measure(self, decoded: Image.Image, view: Image.Image,
                pixels: np.ndarray | None = None) -> tuple[np.ndarray, ImageQuality | None, np.ndarray | None]:
        """The stateless half, safe in any thread: the measured plane, (gate on) its quality metrics, and (no
        ROI) the whole frame's `focus_plane`, for the camera baseline to reuse."""
        gray = grey_of(np.asarray(view) if pixels is None else pixels)
        if not self.enabled:
            return gray, None, None
        plane = focus_plane(decoded, self.roi)
        return gray, assess_grey(decoded, gray, self.roi, plane), plane if self.roi is None else None

    def judge(self, gray: np.ndarray, quality: ImageQuality | None) -> Verdict:
        """The stateful half — one stream's frames, in order: a stuck camera, then the limits."""
        if self.frozen is not None:
            stuck = self.frozen.check(gray)
            if not stuck.ok:
                return stuck
        return Verdict(ok=True) if quality is None else check(quality, self.limits)


LIMIT_KEYS = tuple(f.name for f in fields(QualityLimits) if f.name != "source")


def gate_from_config(gate: GateConfig, reference: dict[str, Any] | None) -> ImageGate:
    """The `[gate]` table (validated) and the bundle's reference statistics → an `ImageGate`."""
    overrides = {k: float(v) for k in LIMIT_KEYS if (v := getattr(gate, k)) is not None}
    limits = limits_from_reference(reference).override(overrides)
    if overrides:
        limits = replace(limits, source=f"{limits.source}+config")
    return ImageGate(limits, gate.roi, gate.frozen_frames, gate.frozen_max_diff, gate.quality)


def validate_reference(reference: Any) -> str | None:
    """None when `reference.image_quality` is well formed, else what is wrong with it."""
    if not isinstance(reference, dict):
        return "expected a table"
    version = reference.get("version", 1)
    if version not in (1, REFERENCE_VERSION):
        return f"'version': {version!r} is not a reference version this device reads (1 or {REFERENCE_VERSION})"
    for metric in METRICS if version >= 2 else [m for m in METRICS if m != "focus"]:
        table = reference.get(metric)
        if not isinstance(table, dict):
            return f"'{metric}': missing or not a table"
        for p in PERCENTILES:
            value = table.get(f"p{p:02d}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return f"'{metric}.p{p:02d}': expected a number"
    return None
