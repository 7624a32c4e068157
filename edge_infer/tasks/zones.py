"""Zones: named polygons in fractions of the source frame (`[model].zones`), for detection boxes and
segmentation masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Zone:
    """A named polygon, in fractions of the frame; a detection is in it when its box's centre is."""

    name: str
    polygon: tuple[tuple[float, float], ...]

    def contains(self, x: float, y: float) -> bool:
        inside = False
        pts = self.polygon
        for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True):
            if (y0 > y) != (y1 > y) and x < (x1 - x0) * (y - y0) / (y1 - y0) + x0:
                inside = not inside
        return inside


    def contains_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """`contains` for arrays of points (fractions of the frame), vectorized: a boolean array."""
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        pts = self.polygon
        for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True):
            if y0 == y1:
                continue
            crosses = (y0 > y) != (y1 > y)
            inside ^= crosses & (x < (x1 - x0) * (y - y0) / (y1 - y0) + x0)
        return inside


def zones_from_config(entries: Sequence[dict[str, Any]]) -> tuple[Zone, ...]:
    """`[model].zones` → zones."""
    return tuple(Zone(z["name"], tuple((float(x), float(y)) for x, y in z["polygon"])) for z in entries)
