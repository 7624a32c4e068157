"""`type = "video"`: frames from a video file or a stream URL (RTSP, HTTP MJPEG) through OpenCV.

Needs OpenCV (`pip install opencv-python-headless`). A file is read frame by frame and never drops (input
ids `<file>#<frame>`, so a restart skips what was done; `loop = true` starts over at the end); a stream URL
is live: only the newest frame is kept and what the pipeline could not take is counted as dropped. A stream
that cannot be opened, ends or stalls for `timeout` seconds is reopened for as long as the daemon runs, with
back-off up to `reconnect_max` seconds; `source_lost` / `source_restored` say when (`edge_infer.sources.health`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_infer.manifest import ImageInputSpec
from edge_infer.options import between, opt
from edge_infer.sources import Sample, SourceConfig, SourceError, register
from edge_infer.sources.frames import frame_to_image
from edge_infer.sources.health import Backoff, SourceHealth


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "video"."""

    uri: str = opt(required=True)
    loop: bool = opt(False)
    timeout: float = opt(10.0, check=between(0.5, 600), unit="s")  # a stream: opening it, or waiting for a frame
    reconnect_max: float = opt(30.0, check=between(0.5, 3600), unit="s")  # a stream: the longest wait between attempts


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
        self.timeout_ms = int(options.timeout * 1000)
        self.reconnect_max = options.reconnect_max
        self.live = "://" in self.uri and not self.uri.startswith("file://")
        self.path = None if self.live else Path(self.uri.removeprefix("file://"))
        if self.path is not None and not self.path.exists():
            raise SourceError(f"[source] uri {self.uri!r}: no such file")
        self.grey = spec is not None and spec.color == "L"
        self.health = SourceHealth()

    def _open(self) -> Any:
        if self.path is not None:
            return self.cv2.VideoCapture(str(self.path))
        cv2 = self.cv2
        return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms,
                                                           cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms])

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        if self.live:
            yield from self._stream(stop, once)
            return
        while not stop.is_set():
            capture = self._open()
            if not capture.isOpened():
                raise SourceError(f"[source] uri {self.uri!r}: OpenCV cannot open it")
            yield from self._frames(capture, stop, done)
            if not self.loop or once:
                return

    def _stream(self, stop: threading.Event, once: bool) -> Iterator[Sample]:
        """A live stream, reopened whenever it fails, until `stop` (with `once`: one attempt)."""
        backoff = Backoff(self.reconnect_max)
        while not stop.is_set():
            capture = self._open()
            if not capture.isOpened():
                self.health.lost("cannot open the stream")
            else:
                delivered = False
                for sample in self._frames(capture, stop, lambda s: False):
                    if not delivered:
                        delivered = True
                        self.health.restored()
                        backoff.reset()
                    yield sample
                if stop.is_set():
                    return
                self.health.lost("the stream ended or stalled" if delivered else "the stream sent no frame")
            if once or backoff.wait(stop):
                return

    def _frames(self, capture: Any, stop: threading.Event, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        fingerprint = (f"{self.path.stat().st_size}:{self.path.stat().st_mtime_ns}" if self.path
                       else f"{time.time():.6f}")
        fps = capture.get(self.cv2.CAP_PROP_FPS) or 0.0
        started = time.time()
        index = 0
        try:
            while not stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    return
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


@register("video")
def make_video_source(options: Options, spec: Any = None) -> VideoSource:
    return VideoSource(options, spec if isinstance(spec, ImageInputSpec) else None)
