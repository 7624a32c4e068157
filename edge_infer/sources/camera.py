"""`type = "camera"`: a Raspberry Pi camera through picamera2 (libcamera), or a USB/V4L2 camera through
OpenCV. Both libraries are optional: whichever `backend` needs is imported when the source starts, with a
clear message when it is missing (`apt install python3-picamera2` on Raspberry Pi OS;
`pip install opencv-python-headless` elsewhere).

With picamera2 the gate and the model read the `lores` stream (YUV420 at the configured size, which the ISP
scales for free) unless `stream = "main"`. A live source: only the newest frame is kept; `max_fps` caps the
rate and what is skipped is counted as dropped.

A camera that cannot be opened (not plugged in yet, busy, its cable loose) or stops delivering frames for
`timeout` seconds (unplugged, the ISP locked up) is closed and reopened for as long as the daemon runs, with
back-off up to `reconnect_max` seconds; `source_lost` / `source_restored` say when
(`edge_infer.sources.health`). A missing library is not a lost camera: that stops the daemon with what to install.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_infer.clock import rfc3339
from edge_infer.manifest import ImageInputSpec
from edge_infer.options import between, opt
from edge_infer.sources import Sample, SourceConfig, SourceError, register
from edge_infer.sources.frames import frame_to_image
from edge_infer.sources.health import Backoff, SourceHealth
from edge_infer.venv import APT_SITE, apt_python_tag, sees_system_site, venv_config


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "camera"."""

    backend: str = opt("auto", choices=("auto", "picamera2", "opencv"))
    index: int = opt(0, check=between(0, 64))
    width: int = opt(640, check=between(16, 10_000))
    height: int = opt(480, check=between(16, 10_000))
    stream: str = opt("lores", choices=("lores", "main"))
    timeout: float = opt(5.0, check=between(0.5, 600), unit="s")  # no frame for this long: the camera is lost
    reconnect_max: float = opt(30.0, check=between(0.5, 3600), unit="s")  # the longest wait between attempts to reopen

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

    def grab() -> tuple[np.ndarray, str]:
        try:  # picamera2 ≥ 0.3.13: a job to wait for, with a timeout (a camera that stops never answers)
            job = camera.capture_array(stream, wait=False)
            return camera.wait(job, timeout=options.timeout), fmt
        except TimeoutError:
            raise SourceError(f"no frame for {options.timeout:g} s") from None

    return grab, camera.close


def _open_opencv(options: Options) -> tuple[Grabber, Callable[[], None]]:
    import cv2  # type: ignore[import-not-found]

    capture = cv2.VideoCapture(options.index)
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, options.width)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, options.height)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queue
    capture.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, options.timeout * 1000)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"OpenCV could not open camera {options.index} (/dev/video{options.index})")

    def grab() -> tuple[np.ndarray, str]:
        ok, frame = capture.read()
        if not ok:
            raise SourceError("no frame (unplugged?)")
        return frame, "OPENCV_BGR"

    return grab, capture.release


BACKENDS: dict[str, Callable[[Options], tuple[Grabber, Callable[[], None]]]] = {
    "picamera2": _open_picamera2,
    "opencv": _open_opencv,
}
INSTALL = {"picamera2": "apt install python3-picamera2 (Raspberry Pi OS)",
           "opencv": "pip install opencv-python-headless"}


class MissingLibrary(SourceError):
    """No camera library for the configured backend: an installation problem, not a lost camera."""


def open_backend(options: Options) -> tuple[str, Grabber, Callable[[], None]]:
    """Open the configured backend (`auto`: picamera2, then OpenCV). MissingLibrary naming what to install;
    SourceError when the library is there but the camera cannot be opened."""
    wanted = options.backend
    order = ["picamera2", "opencv"] if wanted == "auto" else [wanted]
    missing = []
    for name in order:
        try:
            grab, close = BACKENDS[name](options)
        except ImportError:
            missing.append(name)
            continue
        except (SourceError, RuntimeError, OSError, IndexError) as exc:  # picamera2: RuntimeError/IndexError
            raise SourceError(f"{name}: {exc}".splitlines()[0]) from None
        return name, grab, close
    why = [(picamera2_problem() if m == "picamera2" else None) or f"{m} is not installed ({INSTALL[m]})"
           for m in missing]
    raise MissingLibrary("[source] type = \"camera\": " + "; ".join(why))


def picamera2_problem(site: Path = APT_SITE, venv: Path | bool | None = True) -> str | None:
    """None when picamera2 imports here; else one line saying exactly what is missing and how to fix it
    (`site`: where apt puts Python packages; `venv`: this environment's pyvenv.cfg — True: look it up)."""
    try:
        import picamera2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:
        error = str(exc)
    else:
        return None
    cfg = venv_config() if venv is True else venv or None
    if not (site / "picamera2").is_dir():
        return "picamera2 is not installed: sudo apt install python3-picamera2 (Raspberry Pi OS)"
    if not sees_system_site(cfg):
        assert cfg is not None
        return (f"picamera2 is installed by apt ({site}) but the virtual environment {cfg.parent} cannot see it: "
                f"make it with `python3 -m venv --system-site-packages {cfg.parent}`, or let "
                "`edge-infer install-service` switch it on")
    tag, here = apt_python_tag(site), f"{sys.version_info.major}{sys.version_info.minor}"
    if tag is not None and tag != here:
        return (f"picamera2 from apt is built for Python {tag[0]}.{tag[1:]}, this is Python {here[0]}.{here[1:]}: "
                "make the venv with the system's /usr/bin/python3")
    return f"picamera2 is installed by apt but does not import: {error}"


class CameraSource:
    kind = "image"
    live = True
    dropped = 0

    def __init__(self, options: Options, spec: ImageInputSpec | None,
                 opener: Callable[[Options], tuple[str, Grabber, Callable[[], None]]] = open_backend) -> None:
        self.options = options
        self.name = options.name or "camera"
        self.grey = spec is not None and spec.color == "L"
        self.opener = opener
        self.frames = 0
        self.health = SourceHealth()

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        """Frames until `stop`; the camera reopened with back-off whenever it cannot be opened or stops
        (with `once`: one attempt). MissingLibrary is raised at once."""
        backoff = Backoff(self.options.reconnect_max)
        while not stop.is_set():
            try:
                backend, grab, close = self.opener(self.options)
            except MissingLibrary:
                raise
            except SourceError as exc:
                self.health.lost(f"cannot open the camera: {exc}")
            else:
                log.info("event=camera_open backend=%s index=%s", backend, self.options.index)
                try:
                    for sample in self._frames(grab, stop, once):
                        self.health.restored()
                        backoff.reset()
                        yield sample
                        if once:
                            return
                except SourceError as exc:
                    self.health.lost(f"the camera stopped: {exc}")
                finally:
                    close()
            if once or backoff.wait(stop):
                return

    def _frames(self, grab: Grabber, stop: threading.Event, once: bool) -> Iterator[Sample]:
        while not stop.is_set():
            frame, fmt = grab()
            now = time.time()
            self.frames += 1
            input_id = f"{self.name}@{rfc3339(now)}"
            try:
                image = frame_to_image(frame, fmt, self.grey)
            except ValueError as exc:
                yield Sample(self.name, input_id, str(self.frames), now, None, read_error=str(exc))
            else:
                yield Sample(self.name, input_id, str(self.frames), now, None, image=image)


@register("camera")
def make_camera_source(options: Options, spec: Any = None) -> CameraSource:
    return CameraSource(options, spec if isinstance(spec, ImageInputSpec) else None)
