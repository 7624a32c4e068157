"""`edge-infer init --camera`: find the camera on this machine and write a starter config for it.

A Raspberry Pi camera (CSI) is listed by picamera2 (`Picamera2.global_camera_info()`); a USB camera is a V4L2
capture node (`/sys/class/video4linux/videoN` with `index` 0 — a webcam's second node carries metadata) that
is not one of the Pi's own ISP, codec or CSI-receiver nodes. A CSI camera that picamera2 cannot reach from this
Python is still recognised by its receiver node, and the reason picamera2 is not usable is reported.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the Pi's own V4L2 nodes: CSI receivers (a camera is attached when they exist), the ISP, codecs
CSI_RECEIVERS = ("unicam", "rp1-cfe")
PI_INTERNAL = (*CSI_RECEIVERS, "bcm2835-isp", "bcm2835-codec", "rpivid", "pispbe", "rpi-hevc-dec")


@dataclass(frozen=True)
class FoundCamera:
    backend: str  # "picamera2" or "opencv"
    index: int
    name: str


def picamera2_cameras() -> list[dict[str, Any]] | None:
    """picamera2's list of attached cameras, or None when picamera2 does not import here."""
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return list(Picamera2.global_camera_info())


def v4l2_nodes(sys_root: Path = Path("/sys")) -> list[tuple[int, str]]:
    """(N, name) of every V4L2 capture node's first interface (`/dev/videoN`), in N order."""
    nodes = []
    for entry in (sys_root / "class" / "video4linux").glob("video*"):
        try:
            name = (entry / "name").read_text().strip()
            index = int((entry / "index").read_text().strip() or 0) if (entry / "index").exists() else 0
            number = int(entry.name.removeprefix("video"))
        except (OSError, ValueError):
            continue
        if index == 0:
            nodes.append((number, name))
    return sorted(nodes)


def find_cameras(sys_root: Path = Path("/sys"),
                 listed: Callable[[], list[dict[str, Any]] | None] = picamera2_cameras
                 ) -> tuple[list[FoundCamera], bool]:
    """The cameras found (Pi cameras first), and whether a Pi camera's receiver is there although picamera2
    did not list one (then picamera2 is what is missing)."""
    found: list[FoundCamera] = []
    info = listed()
    for n, cam in enumerate(info or []):
        found.append(FoundCamera("picamera2", int(cam.get("Num", n)), str(cam.get("Model", "Raspberry Pi camera"))))
    nodes = v4l2_nodes(sys_root)
    csi_unreached = not found and any(name.startswith(CSI_RECEIVERS) for _, name in nodes)
    for number, name in nodes:
        if not name.startswith(PI_INTERNAL):
            found.append(FoundCamera("opencv", number, name))
    return found, csi_unreached


def starter_config(camera: FoundCamera, bundle: str, broker: str, device_id: str | None = None) -> str:
    """The TOML text of a starter config for `camera` (every value valid; comments say what to change)."""
    host, _, port = broker.rpartition(":") if ":" in broker else (broker, "", "1883")
    device_id = device_id or socket.gethostname().split(".")[0] or "pi"
    return f"""# Written by `edge-infer init --camera` for {camera.name} ({camera.backend}, camera {camera.index}).
# Check it with `edge-infer check --config THIS_FILE`; every key is explained in README.md and docs/inputs.md.

[device]
id = "{device_id}"
state_dir = "/var/lib/edge-infer"

[model]
bundle = "{bundle}"    # what edge-convert wrote (or a .tflite that carries TFLite Metadata)
threads = 1
# crop = [0.5, 0.0, 1.0, 0.5]   # only this region of the frame (fractions, or pixels as whole numbers)

[source]
type = "camera"
backend = "{camera.backend}"
index = {camera.index}
width = 640                     # what the model and the gate look at; the camera scales for free
height = 480
max_fps = 5                     # a fixed camera rarely needs more; frames beyond are dropped and counted

[gate]
baseline = true                 # learn this camera's own scene: fogged, obstructed, defocused, scene_changed

[mqtt]
host = "{host}"
port = {int(port)}
topic_prefix = "edge"

[homeassistant]
discovery = true                # the device and its sensors appear in Home Assistant by themselves
"""
