"""`type = "video"`: frames from a video file or a stream URL (RTSP, HTTP MJPEG) through OpenCV.

Needs OpenCV (`pip install opencv-python-headless`). A file is read frame by frame and never drops (input
ids `<file>#<frame>`, so a restart skips what was done; `loop = true` starts over at the end); a stream URL
is live: only the newest frame is kept and what the pipeline could not take is counted as dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_infer.manifest import ImageInputSpec
from edge_infer.options import opt
from edge_infer.sources import Sample, SourceConfig, SourceError, register
from edge_infer.sources.frames import frame_to_image


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "video"."""

    uri: str = opt(required=True)
    loop: bool = opt(False)


def _cv2() -> Any:
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise SourceError("[source] type = \"video\" needs OpenCV: pip install opencv-python-headless") from None
    return cv2


class VideoSource:
    kind = "image"
    dropped = 0

    def __init__(self, options: Options, spec: ImageInputSpec | None) -> None:
        self.cv2 = _cv2()
        self.uri = options.uri
        self.name = options.name or "video"
        self.loop = options.loop
        self.live = "://" in self.uri and not self.uri.startswith("file://")
        self.path = None if self.live else Path(self.uri.removeprefix("file://"))
        if self.path is not None and not self.path.exists():
            raise SourceError(f"[source] uri {self.uri!r}: no such file")
        self.grey = spec is not None and spec.color == "L"

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        while not stop.is_set():
            capture = self.cv2.VideoCapture(str(self.path) if self.path else self.uri)
            if not capture.isOpened():
                raise SourceError(f"[source] uri {self.uri!r}: OpenCV cannot open it")
            fingerprint = (f"{self.path.stat().st_size}:{self.path.stat().st_mtime_ns}" if self.path
                           else f"{time.time():.6f}")
            fps = capture.get(self.cv2.CAP_PROP_FPS) or 0.0
            started = time.time()
            index = 0
            try:
                while not stop.is_set():
                    ok, frame = capture.read()
                    if not ok:
                        break
                    ts = started + index / fps if (self.path and fps) else time.time()
                    name = self.path.name if self.path else self.name
                    sample = Sample(self.name, f"{name}#{index}", fingerprint, ts, None,
                                    image=frame_to_image(frame, "OPENCV_BGR", self.grey))
                    index += 1
                    if self.path is not None and done(sample):
                        continue
                    yield sample
            finally:
                capture.release()
            if not self.loop or once:
                return


@register("video")
def make_video_source(options: Options, spec: Any = None) -> VideoSource:
    return VideoSource(options, spec if isinstance(spec, ImageInputSpec) else None)
