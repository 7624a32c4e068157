"""`type = "camera"`: a Raspberry Pi camera through picamera2 (libcamera), or a USB/V4L2 camera through
OpenCV. Both libraries are optional: whichever `backend` needs is imported when the source starts, with a
clear message when it is missing (`apt install python3-picamera2` on Raspberry Pi OS;
`pip install opencv-python-headless` elsewhere).

With picamera2 the gate and the model read the `lores` stream (YUV420 at the configured size, which the ISP
scales for free) unless `stream = "main"`. A live source: only the newest frame is kept; `max_fps` caps the
rate and what is skipped is counted as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_infer.clock import rfc3339
from edge_infer.manifest import ImageInputSpec
from edge_infer.options import between, opt
from edge_infer.sources import Sample, SourceConfig, SourceError, register
from edge_infer.sources.frames import frame_to_image


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "camera"."""

    backend: str = opt("auto", choices=("auto", "picamera2", "opencv"))
    index: int = opt(0, check=between(0, 64))
    width: int = opt(640, check=between(16, 10_000))
    height: int = opt(480, check=between(16, 10_000))
    stream: str = opt("lores", choices=("lores", "main"))

log = logging.getLogger(__name__)
Grabber = Callable[[], tuple[np.ndarray, str]]


def _open_picamera2(options: Options) -> tuple[Grabber, Callable[[], None]]:
    from picamera2 import Picamera2  # type: ignore[import-not-found]

    camera = Picamera2(options.index)
    size = (options.width, options.height)
    if options.stream == "lores":
        config = camera.create_video_configuration(main={"size": size}, lores={"size": size, "format": "YUV420"})
        stream, fmt = "lores", "YUV420"
    else:
        config = camera.create_video_configuration(main={"size": size, "format": "RGB888"})
        stream, fmt = "main", "RGB888"
    camera.configure(config)
    camera.start()
    return (lambda: (camera.capture_array(stream), fmt)), camera.close


def _open_opencv(options: Options) -> tuple[Grabber, Callable[[], None]]:
    import cv2  # type: ignore[import-not-found]

    capture = cv2.VideoCapture(options.index)
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, options.width)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, options.height)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queue
    if not capture.isOpened():
        raise SourceError(f"[source] camera {options.index}: OpenCV could not open it")

    def grab() -> tuple[np.ndarray, str]:
        ok, frame = capture.read()
        if not ok:
            raise SourceError(f"[source] camera {options.index}: no frame (unplugged?)")
        return frame, "OPENCV_BGR"

    return grab, capture.release


BACKENDS: dict[str, Callable[[dict[str, Any]], tuple[Grabber, Callable[[], None]]]] = {
    "picamera2": _open_picamera2,
    "opencv": _open_opencv,
}
INSTALL = {"picamera2": "apt install python3-picamera2 (Raspberry Pi OS)",
           "opencv": "pip install opencv-python-headless"}


def open_backend(options: Options) -> tuple[str, Grabber, Callable[[], None]]:
    """Open the configured backend (`auto`: picamera2, then OpenCV); SourceError naming what to install."""
    wanted = options.backend
    order = ["picamera2", "opencv"] if wanted == "auto" else [wanted]
    missing = []
    for name in order:
        try:
            grab, close = BACKENDS[name](options)
        except ImportError:
            missing.append(name)
            continue
        return name, grab, close
    raise SourceError("[source] type = \"camera\": " + "; ".join(f"{m} is not installed ({INSTALL[m]})"
                                                                 for m in missing))


class CameraSource:
    kind = "image"
    live = True
    dropped = 0

    def __init__(self, options: Options, spec: ImageInputSpec | None,
                 opener: Callable[[dict[str, Any]], tuple[str, Grabber, Callable[[], None]]] = open_backend) -> None:
        self.options = options
        self.name = options.name or "camera"
        self.grey = spec is not None and spec.color == "L"
        self.opener = opener
        self.frames = 0

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        backend, grab, close = self.opener(self.options)
        log.info("event=camera_open backend=%s index=%s", backend, self.options.index)
        try:
            while not stop.is_set():
                frame, fmt = grab()
                now = time.time()
                self.frames += 1
                try:
                    image = frame_to_image(frame, fmt, self.grey)
                except ValueError as exc:
                    yield Sample(self.name, f"{self.name}@{rfc3339(now)}", str(self.frames), now, None,
                                 read_error=str(exc))
                else:
                    yield Sample(self.name, f"{self.name}@{rfc3339(now)}", str(self.frames), now, None, image=image)
                if once:
                    return
        finally:
            close()


@register("camera")
def make_camera_source(options: Options, spec: Any = None) -> CameraSource:
    return CameraSource(options, spec if isinstance(spec, ImageInputSpec) else None)
