"""A fixed camera's own normal (`[gate] baseline = true`): what this scene looks like, learned from its own
accepted frames, so that a lens that fogs, a camera knocked out of focus, a covered lens or a camera turned
away is caught even when the frame would pass the model's general limits.

After `warmup` accepted frames the baseline holds the scene's typical `focus`, contrast and brightness, the
texture of each 8×8 block of the frame at 160 px (its standard deviation), and a 32×24 signature (the frame's
grey levels, normalised). Each frame is then compared with it, in this order:

- `fogged`: contrast below half the usual while the frame is not darker (haze brightens; night does not);
- `obstructed`: a quarter or more of the blocks that usually have texture have none (under a fifth of their
  usual standard deviation, and under 4 levels: a blurred block is softer, a covered one featureless), and
  featureless blocks cover 15 % more of the frame than usual (a moved camera shows its texture elsewhere) —
  a hand, a lid, dirt, spray;
- `defocused`: `focus` below 75 % of the usual;
- `scene_changed`: the signature correlates below 0.5 with the usual one — the camera moved or turned.

A frame that departs is rejected with that reason, the metric, its value and the threshold. A condition
*starts* after `HOLD` such frames in a row and *ends* after `HOLD` good ones; listeners hear both (the daemon
publishes `scene_problem` / `scene_problem_cleared`). The baseline learns only from frames every check
accepted, slowly (each frame moves it by `ADAPT`): it follows day and night, not a sudden change. It is kept
in a JSON file, so a restart resumes it; delete the file to learn a new scene.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_infer.gates import Verdict
from edge_infer.gates.quality import FOCUS_SIDE, focus_plane

log = logging.getLogger(__name__)
VERSION = 1
SIDE = FOCUS_SIDE  # the frame is looked at box-reduced to this long side: the plane `focus` is measured on
THUMB = (32, 24)
BLOCK = 8
FLAT_STD = 2.0  # a block flatter than this (grey levels) is featureless
ADAPT = 0.002  # after warm-up, each accepted frame moves the baseline by this share
HOLD = 3  # frames in a row that start or end a condition
CONDITIONS = ("fogged", "obstructed", "defocused", "scene_changed")
Listener = Callable[[str, bool, dict[str, Any]], None]  # (condition, started, details)


@dataclass(frozen=True)
class Features:
    focus: float
    contrast: float
    brightness: float
    blocks: np.ndarray  # standard deviation of each BLOCK×BLOCK block at SIDE px
    signature: np.ndarray  # THUMB, zero mean, unit norm


def _box_sums(g: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Sums over `rows`×`cols` boxes of a plane whose sides are multiples of them (two reshaped sums: several
    times faster than one 4-d reduction)."""
    h, w = g.shape
    return g.reshape(h // rows, rows, w).sum(axis=1).reshape(h // rows, w // cols, cols).sum(axis=2)


def features(decoded: Image.Image, focus: float, plane: np.ndarray | None = None) -> Features:
    """What the baseline compares, from the decoded frame (and its `focus`, measured by the quality gate;
    `plane`: the whole frame's `focus_plane` when the gate has it already). Stateless: any thread."""
    small = focus_plane(decoded) if plane is None else plane
    g = small.astype(np.float32)
    h, w = (g.shape[0] // BLOCK) * BLOCK, (g.shape[1] // BLOCK) * BLOCK
    tiled = g[:h, :w]
    n = BLOCK * BLOCK
    block_mean = _box_sums(tiled, BLOCK, BLOCK) / n  # each block's standard deviation, from two box sums
    blocks = np.sqrt(np.maximum(_box_sums(tiled * tiled, BLOCK, BLOCK) / n - np.square(block_mean), 0.0))
    tw, th = THUMB
    if g.shape[0] % th == 0 and g.shape[1] % tw == 0:
        thumb = (_box_sums(g, g.shape[0] // th, g.shape[1] // tw) / (g.size / (tw * th))).ravel()
    else:
        thumb = np.asarray(Image.fromarray(small).resize(THUMB, Image.Resampling.BOX), np.float32).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    flat = g.ravel()
    mean = float(flat.sum()) / flat.size
    contrast = math.sqrt(max(float(flat @ flat) / flat.size - mean * mean, 0.0))
    return Features(focus, contrast, mean, blocks, thumb / norm if norm > 1e-6 else thumb)


class SceneBaseline:
    """The learned normal of one camera and the conditions it is in. Not thread-safe: one per stream, fed in
    order (the pipeline's front thread)."""

    def __init__(self, path: Path | None, warmup: int = 100) -> None:
        self.path = path
        self.warmup = warmup
        self.learned = 0
        self.mean: dict[str, float] = {}
        self.signature: np.ndarray | None = None
        self.blocks: np.ndarray | None = None
        self.active: dict[str, bool] = dict.fromkeys(CONDITIONS, False)
        self._runs: dict[str, int] = dict.fromkeys(CONDITIONS, 0)
        self.listeners: list[Listener] = []
        self._load()

    @property
    def ready(self) -> bool:
        return self.learned >= self.warmup

    def check(self, decoded: Image.Image, focus: float) -> Verdict:
        """The verdict on a frame the quality checks accepted; learns from it when it is accepted here too."""
        return self.judge(features(decoded, focus))

    def judge(self, f: Features) -> Verdict:
        """`check` for a frame whose `features` were taken already (in a lane: that part is stateless)."""
        if not self.ready:
            self._learn(f)
            return Verdict(ok=True)
        failed = self._departure(f)
        for condition in CONDITIONS:
            self._track(condition, failed is not None and failed.reason == condition, failed)
        if failed is not None:
            return failed
        self._learn(f)
        return Verdict(ok=True)

    def _departure(self, f: Features) -> Verdict | None:
        m = self.mean
        assert self.signature is not None and self.blocks is not None
        correlation = float(f.signature @ self.signature) if f.signature.shape == self.signature.shape else 0.0
        textured = self.blocks >= 2 * FLAT_STD
        covered = 0.0
        if f.blocks.shape == self.blocks.shape and textured.any():
            gone = f.blocks < np.minimum(2 * FLAT_STD, 0.2 * self.blocks)  # featureless, not merely softer
            more_flat = float((f.blocks < FLAT_STD).mean() - (self.blocks < FLAT_STD).mean())
            covered = float(gone[textured].mean()) if more_flat >= 0.15 else 0.0  # moved: texture elsewhere
        rules = (
            ("fogged", "contrast", f.contrast if f.brightness >= 0.8 * m["brightness"] else math.inf,
             0.5 * m["contrast"], "<"),
            ("obstructed", "covered_fraction", covered, 0.25, ">"),
            ("defocused", "focus", f.focus, 0.75 * m["focus"], "<"),
            ("scene_changed", "scene_correlation", correlation, 0.5, "<"),
        )
        for reason, metric, value, limit, op in rules:
            if (value > limit) if op == ">" else (value < limit):
                word = "above" if op == ">" else "below"
                return Verdict.reject(reason, f"{metric} {value:.3g} is {word} this camera's usual limit of "
                                      f"{limit:.3g} (baseline)", metric=metric, value=round(value, 4),
                                      threshold=round(limit, 4))
        return None

    def _track(self, condition: str, flagged: bool, verdict: Verdict | None) -> None:
        """Count frames in a row with / without the condition; tell listeners when it starts or ends."""
        if flagged == self.active[condition]:
            self._runs[condition] = 0
            return
        self._runs[condition] += 1
        if self._runs[condition] < HOLD:
            return
        self._runs[condition] = 0
        self.active[condition] = flagged
        details: dict[str, Any] = {"condition": condition}
        if flagged and verdict is not None:
            details |= {k: verdict.metrics[k] for k in ("metric", "value", "threshold")}
        for listener in list(self.listeners):
            listener(condition, flagged, details)

    def _learn(self, f: Features) -> None:
        rate = 1.0 / (self.learned + 1) if self.learned < self.warmup else ADAPT
        values = {"focus": f.focus, "contrast": f.contrast, "brightness": f.brightness}
        for key, value in values.items():
            self.mean[key] = value if key not in self.mean else self.mean[key] + rate * (value - self.mean[key])
        if self.blocks is None or self.blocks.shape != f.blocks.shape:
            self.blocks = f.blocks
        else:
            self.blocks = self.blocks + rate * (f.blocks - self.blocks)
        if self.signature is None or self.signature.shape != f.signature.shape:
            self.signature = f.signature
        else:
            mixed = self.signature + rate * (f.signature - self.signature)
            norm = float(np.linalg.norm(mixed))
            self.signature = mixed / norm if norm > 1e-6 else mixed
        self.learned += 1
        if self.learned == self.warmup or (self.ready and self.learned % 200 == 0):
            self.save()

    def to_dict(self) -> dict[str, Any]:
        return {"state": "ready" if self.ready else "warming_up", "learned": self.learned,
                "conditions": sorted(c for c, on in self.active.items() if on),
                **{k: round(v, 4) for k, v in self.mean.items()}}

    def save(self) -> None:
        """Write the baseline atomically (a temporary file renamed over the old one)."""
        if self.path is None or self.signature is None or self.blocks is None:
            return
        doc = {"version": VERSION, "learned": self.learned, "mean": self.mean,
               "signature": [round(float(x), 6) for x in self.signature],
               "blocks": np.round(self.blocks, 3).tolist()}
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("event=baseline_not_saved path=%s error=%r", self.path, str(exc))

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
            signature = np.asarray(doc["signature"], np.float32)
            if doc.get("version") != VERSION or signature.shape != (THUMB[0] * THUMB[1],):
                raise ValueError("another format")
            self.mean = {k: float(doc["mean"][k]) for k in ("focus", "contrast", "brightness")}
            self.blocks = np.asarray(doc["blocks"], np.float32)
            self.learned, self.signature = int(doc["learned"]), signature
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("event=baseline_unreadable path=%s error=%r (learning anew)", self.path, str(exc))
            self.mean, self.learned, self.signature, self.blocks = {}, 0, None, None
