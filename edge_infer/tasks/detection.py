"""`task = "detection"`: boxes in source-frame pixels — decoded and non-max-suppressed on the device (yolo) or
taken from TFLite's detection post-process op (ssd) — with per-label thresholds and zones.

Uncertain when a candidate sits between the score floor and its label's threshold; two results agree when
they found the same set of labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_infer.decide import Decision, Thresholds
from edge_infer.manifest import SSD_TENSORS, ImageInputSpec, Manifest, OutputSpec
from edge_infer.preprocess import ViewGeometry
from edge_infer.runtime import TensorInfo
from edge_infer.tasks import Context, Entity, register
from edge_infer.tasks.outputs import dequantize
from edge_infer.tasks.zones import Zone


@dataclass(frozen=True)
class Box:
    """One detection: label, score, and its box in source-frame pixels (x0, y0, x1, y1)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    zones: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"label": self.label, "score": round(self.score, 6),
                               "box": [round(v, 2) for v in self.box]}
        if self.zones:
            doc["zones"] = list(self.zones)
        return doc


@dataclass(frozen=True)
class Detections:
    """Boxes at or above their label's threshold, and the number of weaker candidates (above the score floor)
    that make the frame uncertain."""

    boxes: list[Box]
    candidates_below_threshold: int = 0
    frame: tuple[int, int] = (0, 0)
    task: str = field(default="detection", init=False)

    @property
    def confidence(self) -> float:
        return min((b.score for b in self.boxes), default=1.0)

    @property
    def event_key(self) -> str:
        return ",".join(sorted({b.label for b in self.boxes})) or "none"

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        zones: dict[str, int] = {}
        for b in self.boxes:
            counts[b.label] = counts.get(b.label, 0) + 1
            for z in b.zones:
                zones[z] = zones.get(z, 0) + 1
        doc: dict[str, Any] = {"detections": [b.to_dict() for b in self.boxes], "counts": counts,
                               "frame": {"width": self.frame[0], "height": self.frame[1]},
                               "uncertain_candidates": self.candidates_below_threshold}
        if zones:
            doc["zones"] = zones
        return doc


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (4,) xyxy box with each of (N, 4)."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy per-class non-maximum suppression: indices kept, best first, at most `limit`."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(scores), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) >= limit:
            break
        rest = order[pos + 1:]
        rest = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if len(rest):
            suppressed[rest[iou(boxes[i], boxes[rest]) > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def _yolo_candidates(output: np.ndarray, spec: OutputSpec, n_labels: int,
                     size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A raw YOLO-style grid, (1, N, 4 [+1] + C) or transposed (1, 4 [+1] + C, N) → xyxy boxes in model pixels,
    scores and class indices of the candidates above the score floor."""
    rows = output.reshape(output.shape[-2], output.shape[-1])
    width_options = (4 + n_labels, 5 + n_labels)
    if rows.shape[1] not in width_options and rows.shape[0] in width_options:
        rows = rows.T
    cols = rows.shape[1]
    if cols not in width_options:
        raise ValueError(f"detection output rows have {cols} values; expected 4 box values, optional objectness "
                         f"and {n_labels} class scores")
    has_obj = spec.objectness if spec.objectness is not None else cols == 5 + n_labels
    class_scores = rows[:, 5:] if has_obj else rows[:, 4:]
    if class_scores.shape[1] != n_labels:
        raise ValueError(f"detection output has {class_scores.shape[1]} class scores for {n_labels} labels")
    classes = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(len(rows)), classes]
    if has_obj:
        scores = scores * rows[:, 4]
    keep = scores >= spec.score_floor
    b = rows[keep, :4].astype(np.float32)
    if spec.box == "cxcywh":
        b = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    if spec.coords == "normalized":
        b = b * np.asarray([size[0], size[1], size[0], size[1]], np.float32)
    return b, scores[keep], classes[keep]


def _ssd_candidates(outputs: Sequence[np.ndarray], tensors: Sequence[TensorInfo], spec: OutputSpec,
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detection post-process op's four outputs → xyxy boxes in model pixels, scores, class indices."""
    named = _ssd_order(outputs, tensors, spec)
    count = round(float(np.asarray(named["count"]).reshape(-1)[0]))
    boxes = np.asarray(named["boxes"], np.float32).reshape(-1, 4)[:count]  # ymin, xmin, ymax, xmax (0–1)
    scores = np.asarray(named["scores"], np.float32).reshape(-1)[:count]
    classes = np.rint(np.asarray(named["classes"], np.float32).reshape(-1)[:count]).astype(np.int64)
    xyxy = boxes[:, [1, 0, 3, 2]] * np.asarray([size[0], size[1], size[0], size[1]], np.float32)
    keep = scores >= spec.score_floor
    return xyxy[keep], scores[keep], classes[keep]


def _ssd_order(outputs: Sequence[np.ndarray], tensors: Sequence[TensorInfo],
               spec: OutputSpec) -> dict[str, np.ndarray]:
    if len(outputs) != 4:
        raise ValueError(f"an ssd detection model has 4 outputs (boxes, classes, scores, count), this one "
                         f"{len(outputs)}")
    if spec.tensors:
        return dict(zip(spec.tensors, outputs, strict=True))
    named: dict[str, np.ndarray] = {}
    rest = []
    for out in outputs:
        if out.ndim == 3 and out.shape[-1] == 4:
            named["boxes"] = out
        elif out.size == 1:
            named["count"] = out
        else:
            rest.append(out)
    if len(rest) != 2 or len(named) != 2:
        raise ValueError("cannot tell the ssd outputs apart: set output.tensors to their order "
                         f"({', '.join(SSD_TENSORS)})")
    # classes are whole numbers; scores are not (and are sorted, best first)
    whole = [bool(np.all(r == np.rint(r))) for r in rest]
    classes_first = (whole[0] and not whole[1]) or (whole[0] == whole[1] and _position_named(tensors, "class") == 0)
    named["classes"], named["scores"] = (rest[0], rest[1]) if classes_first else (rest[1], rest[0])
    return named


def _position_named(tensors: Sequence[TensorInfo], word: str) -> int:
    """Position (among the two unlabelled ssd outputs) whose tensor name mentions `word`; 0 when none does."""
    middle = [t for t in tensors if not (len(t.shape) == 3 and t.shape[-1] == 4) and int(np.prod(t.shape)) != 1]
    return next((i for i, t in enumerate(middle) if word in t.name.lower()), 0)


def detect(outputs: Sequence[np.ndarray], tensors: Sequence[TensorInfo], manifest: Manifest,
           geometry: ViewGeometry, thresholds: Any, zones: Sequence[Zone] = ()) -> Detections:
    """Detections in source-frame pixels: decode, non-max-suppress (yolo), apply per-label thresholds, undo the
    letterbox/crop, place in zones."""
    spec = manifest.output
    size = (manifest.input.width, manifest.input.height)  # type: ignore[union-attr]
    if spec.format == "ssd":
        boxes, scores, classes = _ssd_candidates([dequantize(o, t) for o, t in zip(outputs, tensors, strict=True)],
                                                 tensors, spec, size)
    else:
        boxes, scores, classes = _yolo_candidates(dequantize(outputs[0], tensors[0]), spec, len(manifest.labels),
                                                  size)
        kept = nms(boxes, scores, classes, spec.iou_threshold, spec.max_detections)
        boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
    x0, y0 = geometry.to_source(boxes[:, 0], boxes[:, 1])
    x1, y1 = geometry.to_source(boxes[:, 2], boxes[:, 3])
    out: list[Box] = []
    weak = 0
    for i in range(len(scores)):
        c = int(classes[i])
        if not 0 <= c < len(manifest.labels):
            continue
        label = manifest.labels[c]
        if scores[i] < thresholds.for_label(label):
            weak += 1
            continue
        cx, cy = (x0[i] + x1[i]) / 2 / max(geometry.width, 1), (y0[i] + y1[i]) / 2 / max(geometry.height, 1)
        inside = tuple(z.name for z in zones if z.contains(float(cx), float(cy)))
        out.append(Box(label, float(scores[i]), (float(x0[i]), float(y0[i]), float(x1[i]), float(y1[i])), inside))
    return Detections(out[:spec.max_detections], weak, (geometry.width, geometry.height))



class DetectionTask:
    name = "detection"
    needs_geometry = True

    def postprocess(self, outputs: Sequence[np.ndarray], ctx: Context) -> Detections:
        geometry = ctx.geometry
        if geometry is None:
            spec = ctx.manifest.input
            assert isinstance(spec, ImageInputSpec)
            geometry = ViewGeometry(1.0, 1.0, 0.0, 0.0, spec.width, spec.height)
        return detect(outputs, ctx.tensors, ctx.manifest, geometry, ctx.thresholds, ctx.zones)

    def decide(self, result: Detections, thresholds: Thresholds) -> Decision:
        return Decision(status="uncertain" if result.candidates_below_threshold else "ok",
                        threshold=thresholds.default)

    def agrees(self, a: Detections, b: Detections) -> bool:
        return a.event_key == b.event_key

    def draw(self, result: Detections, canvas: Any, size: tuple[int, int], colour: tuple[int, int, int],
             status: str) -> None:
        for box in result.boxes:
            x0, y0, x1, y1 = box.box
            canvas.rectangle((x0, y0, x1, y1), outline=colour, width=max(1, size[0] // 200))
            canvas.text((x0 + 2, y0 + 1), f"{box.label} {box.score:.2f}", fill=colour)

    def entities(self) -> list[Entity]:
        return [("sensor", "objects", {"name": "Objects", "state_class": "measurement", "icon": "mdi:eye",
                                       "value_template": "{{ value_json.result.detections | length }}"})]


@register("detection")
def make() -> DetectionTask:
    return DetectionTask()
