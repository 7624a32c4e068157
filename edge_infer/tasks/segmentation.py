"""`task = "segmentation"`: a per-pixel class map → the share of the frame each class covers, a small
run-length mask, and per-zone shares.

The model's output is either class scores `(1, H, W, C)` with one channel per label (`[output].activation`:
`softmax` when they are probabilities, `logits` to have the device apply softmax) or class indices `(1, H, W)`
/ `(1, H, W, 1)` (`activation = "argmax"`, no confidence). The first label is the background. Only output
pixels that land inside the source frame count (a letterbox's padding does not); shares, the mask and zones
are all in the source frame.

Result: `areas` {label: share of the frame, for the labels present}, `dominant` (the largest label other than
the background, or the background when nothing else is there), `coverage` (the share that is not background),
`confidence` (the mean per-pixel top score),
`uncertain_fraction` (the share of pixels whose top score is below their label's threshold), `mask` (the class
map at most `MASK_SIDE` pixels a side, row-major runs of `[label index, count]`), `zones` {zone: {label:
share}} for `[model].zones`.

Uncertain when more than `UNCERTAIN_AREA` of the frame is below threshold; two results agree when they have
the same dominant label and their areas differ by at most `AGREE_AREA` in total variation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_infer.decide import Decision, Thresholds
from edge_infer.manifest import ImageInputSpec
from edge_infer.tasks import Context, Entity, caption, register
from edge_infer.tasks.outputs import dequantize, softmax

MASK_SIDE = 32
UNCERTAIN_AREA = 0.25
AGREE_AREA = 0.1


@dataclass(frozen=True)
class Segmentation:
    areas: dict[str, float]
    dominant: str
    coverage: float  # the share of the frame that is not background
    confidence: float
    uncertain_fraction: float
    mask: dict[str, Any]
    zones: dict[str, dict[str, float]] = field(default_factory=dict)
    frame: tuple[int, int] = (0, 0)
    task: str = field(default="segmentation", init=False)

    @property
    def event_key(self) -> str:
        return self.dominant

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"areas": self.areas, "dominant": self.dominant, "coverage": self.coverage,
                               "confidence": round(self.confidence, 6),
                               "uncertain_fraction": round(self.uncertain_fraction, 6), "mask": self.mask,
                               "frame": {"width": self.frame[0], "height": self.frame[1]}}
        if self.zones:
            doc["zones"] = self.zones
        return doc


def class_map(output: np.ndarray, tensor: Any, labels: Sequence[str], activation: str) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """(class index per pixel, top score per pixel) of an (H, W) map, from either output form."""
    values = dequantize(output, tensor)
    if values.ndim >= 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 2:  # class indices
        classes = np.clip(np.rint(values), 0, len(labels) - 1).astype(np.int64)
        return classes, np.ones(classes.shape, dtype=np.float32)
    if values.shape[-1] != len(labels):
        raise ValueError(f"segmentation output has {values.shape[-1]} channels for {len(labels)} labels")
    if activation in ("logits", "none"):
        values = softmax(values, axis=-1)
    return values.argmax(axis=-1), values.max(axis=-1)


def _source_positions(shape: tuple[int, int], ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each output pixel's centre in the source frame as fractions (x, y), and whether it lies inside it."""
    h, w = shape
    spec = ctx.manifest.input
    in_w, in_h = (spec.width, spec.height) if isinstance(spec, ImageInputSpec) else (w, h)
    x = (np.arange(w) + 0.5) * in_w / w
    y = (np.arange(h) + 0.5) * in_h / h
    g = ctx.geometry
    if g is None:
        fx, fy = np.meshgrid(x / in_w, y / in_h)
        return fx, fy, (fx >= 0) & (fx < 1) & (fy >= 0) & (fy < 1)
    rx, ry = (x - g.offset_x) / g.scale_x, (y - g.offset_y) / g.scale_y  # in the region the model saw
    rw, rh = g.region_width or g.width, g.region_height or g.height
    ix, iy = np.meshgrid((rx >= 0) & (rx < rw), (ry >= 0) & (ry < rh))  # not letterbox padding
    fx, fy = np.meshgrid((rx + g.origin_x) / g.width, (ry + g.origin_y) / g.height)  # fractions of the frame
    return fx, fy, ix & iy


def run_lengths(classes: np.ndarray) -> list[list[int]]:
    """Row-major runs `[value, count]` of a 2-D integer map."""
    flat = classes.ravel()
    if flat.size == 0:
        return []
    starts = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], starts, [flat.size]])
    return [[int(flat[a]), int(b - a)] for a, b in itertools.pairwise(bounds)]


def small_mask(classes: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """The class map over the frame's part of the output, nearest-neighbour to at most MASK_SIDE a side."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return {"width": 0, "height": 0, "rle": []}
    crop = classes[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = max(h, w) / MASK_SIDE if max(h, w) > MASK_SIDE else 1.0
    mh, mw = max(1, round(h / scale)), max(1, round(w / scale))
    yi = np.minimum((np.arange(mh) + 0.5) * h / mh, h - 1).astype(int)
    xi = np.minimum((np.arange(mw) + 0.5) * w / mw, w - 1).astype(int)
    return {"width": mw, "height": mh, "rle": run_lengths(crop[np.ix_(yi, xi)])}


def _shares(classes: np.ndarray, where: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(classes[where], minlength=len(labels))
    total = int(where.sum())
    return {labels[i]: round(int(c) / total, 4) for i, c in enumerate(counts) if c} if total else {}


def segment(output: np.ndarray, ctx: Context) -> Segmentation:
    m = ctx.manifest
    labels = m.labels
    classes, scores = class_map(output, ctx.tensors[0], labels, m.output.activation)
    fx, fy, valid = _source_positions(classes.shape, ctx)
    areas = _shares(classes, valid, labels)
    others = {k: v for k, v in areas.items() if k != labels[0]}
    dominant = max(others, key=lambda k: others[k]) if others else labels[0]
    thresholds = np.array([ctx.thresholds.for_label(label) for label in labels], dtype=np.float32)
    below = (scores < thresholds[classes]) & valid
    n = int(valid.sum())
    zones = {z.name: _shares(classes, valid & z.contains_points(fx, fy), labels) for z in ctx.zones}
    g = ctx.geometry
    frame = (g.width, g.height) if g is not None else (classes.shape[1], classes.shape[0])
    coverage = round(1.0 - areas.get(labels[0], 0.0), 4) if n else 0.0
    return Segmentation(areas, dominant, coverage, float(scores[valid].mean()) if n else 0.0,
                        float(below.sum() / n) if n else 1.0, small_mask(classes, valid), zones, frame)


class SegmentationTask:
    name = "segmentation"
    needs_geometry = True

    def postprocess(self, outputs: Sequence[np.ndarray], ctx: Context) -> Segmentation:
        return segment(outputs[0], ctx)

    def decide(self, result: Segmentation, thresholds: Thresholds) -> Decision:
        return Decision(status="uncertain" if result.uncertain_fraction > UNCERTAIN_AREA else "ok",
                        threshold=thresholds.default)

    def agrees(self, a: Segmentation, b: Segmentation) -> bool:
        labels = set(a.areas) | set(b.areas)
        apart = sum(abs(a.areas.get(k, 0.0) - b.areas.get(k, 0.0)) for k in labels) / 2
        return a.dominant == b.dominant and apart <= AGREE_AREA

    def draw(self, result: Segmentation, canvas: Any, size: tuple[int, int], colour: tuple[int, int, int],
             status: str) -> None:
        caption(canvas, f"{result.dominant}, {result.coverage:.0%} covered ({status})", colour, size[0])

    def entities(self) -> list[Entity]:
        return [("sensor", "dominant", {"name": "Dominant class", "icon": "mdi:select-group",
                                        "value_template": "{{ value_json.result.dominant }}"}),
                ("sensor", "coverage", {"name": "Coverage", "unit_of_measurement": "%", "state_class": "measurement",
                                        "value_template": "{{ (value_json.result.coverage * 100) | round(1) }}"})]


@register("segmentation")
def make() -> SegmentationTask:
    return SegmentationTask()
