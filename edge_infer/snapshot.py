"""`snapshot`: the latest result with its input drawn on (each task draws its own: boxes for detections, a
caption for the others) as a JPEG inside one JSON message on `{prefix}/{device_id}/snapshot` (QoS 0, never
stored)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw

from edge_infer.decide import Decision
from edge_infer.gates.decode import decode_image
from edge_infer.tasks import TaskResult, task_for

MAX_SIDE = 640  # the picture is for a person glancing at it: at most this many pixels a side


def annotated(source: bytes | Image.Image, result: TaskResult, decision: Decision) -> Image.Image:
    """The input image (encoded bytes, or a camera frame) with the result drawn on, at most `MAX_SIDE` a side."""
    image = (decode_image(source) if isinstance(source, bytes) else source).convert("RGB")
    draw = ImageDraw.Draw(image)
    colour = (0, 200, 0) if decision.status == "ok" else (230, 160, 0)
    task_for(result.task).draw(result, draw, image.size, colour, decision.status)
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    return image


def jpeg(image: Image.Image, max_bytes: int | None = None) -> bytes:
    """JPEG bytes of `image`: quality 80, then lower qualities and then half the size each time until it fits
    in `max_bytes` (a dashboard topic's cap)."""
    while True:
        for quality in (80, 60, 40) if max_bytes else (80,):
            out = io.BytesIO()
            image.save(out, "JPEG", quality=quality)
            if max_bytes is None or out.tell() <= max_bytes or min(image.size) < 32:
                return out.getvalue()
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)


def annotate(source: bytes | Image.Image, result: TaskResult, decision: Decision) -> tuple[bytes, tuple[int, int]]:
    """`annotated` as JPEG bytes, and its size."""
    image = annotated(source, result, decision)
    return jpeg(image), image.size


def snapshot_doc(source: bytes | Image.Image | None, result: TaskResult, decision: Decision) -> dict[str, Any]:
    """The snapshot's picture part (none for sensor input)."""
    if source is None:
        return {}
    jpeg, (width, height) = annotate(source, result, decision)
    return {"image": {"format": "jpeg", "width": width, "height": height, "data": base64.b64encode(jpeg).decode()}}
