"""MQTT for dashboards, through a real broker: per-label debounced states (`state/<label>`, retained, one
message per change), the latest annotated frame as a raw JPEG (`image`, retained, size-capped), and Home
Assistant discovery for them — binary sensors per label, an image entity, buttons that really run commands."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import DIGITS_INT8, REPO, write_config
from tests.device.faults import wait_until
from tests.helpers.broker import Mosquitto
from tests.helpers.subscriber import Subscriber

DIGITS_TEST = REPO / "demo" / "digits" / "test"


def frames(folder: Path, label: str, count: int, start: int) -> None:
    """`count` held-out digits of one label (file names keep the order)."""
    folder.mkdir(exist_ok=True)
    for n, image in enumerate(sorted((DIGITS_TEST / label).glob("*.png"))[:count], start):
        shutil.copy(image, folder / f"{n:04d}_{label}.png")


def test_label_states_picture_and_buttons(tmp_path: Path, broker: Mosquitto) -> None:
    """A camera that sees a 3 for a while, then a 7 (the second run is dropped in once the first state is out:
    a value is the latest one, so changes faster than the broker round trip may be superseded — the results
    stream carries every change)."""
    frames(tmp_path / "in", "3", 8, 0)
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port)
    text = cfg.read_text().replace("[mqtt]\n", '[mqtt]\nimage_interval = "1h"\nimage_on_change = true\n'
                                                'image_max_bytes = "8KiB"\n', 1)
    cfg.write_text(text + '\n[decide]\ndebounce = [3, 4]\n\n[homeassistant]\ndiscovery = true\n'
                   '\n[commands]\nenabled = true\nauth = "acl"\n')
    sub = Subscriber(broker.port, "#")
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: any(m.topic == "edge/test-pi/state/3" for m in sub.messages), 60), proc.stderr
        frames(tmp_path / "in", "7", 8, 8)
        assert wait_until(lambda: len(sub.of_kind("results")) >= 16, 60)
        assert wait_until(lambda: len([m for m in sub.messages if m.topic == "edge/test-pi/state/7"]) >= 2, 20)
        states = [(m.topic.rsplit("/", 1)[1], m.payload.decode()) for m in sub.messages
                  if m.topic.startswith("edge/test-pi/state/")]
        per_label = {label: [v for lab, v in states if lab == label] for label in map(str, range(10))}
        assert per_label["3"] == ["ON", "OFF"] and per_label["7"] == ["OFF", "ON"]  # one message per change
        assert all(per_label[x] == ["OFF", "OFF"] for x in "01245689")
        results = [m.json() for m in sub.of_kind("results")]
        changes = [r["state"]["value"] for r in results if r.get("state", {}).get("changed")]
        assert changes == ["3", "7"]  # the states follow the results' own debounced state
        pictures = [m for m in sub.messages if m.topic == "edge/test-pi/image"]
        # the first frame (the interval had not run yet) and one per change — the first two a few ms apart, so
        # the second may supersede the first before it is sent; the 1 h interval never came round again
        assert 2 <= len(pictures) <= 3 and all(len(p.payload) <= 8 * 1024 for p in pictures)
        assert pictures[-1].payload != pictures[0].payload  # the 7 replaced the 3
        assert Image.open(io.BytesIO(pictures[-1].payload)).format == "JPEG"

        late = Subscriber(broker.port, "edge/test-pi/#")  # a dashboard that starts now: the retained values
        assert wait_until(lambda: any(m.topic == "edge/test-pi/image" for m in late.messages), 10)
        assert wait_until(lambda: {m.topic.rsplit("/", 1)[1]: m.payload for m in late.messages
                                   if "/state/" in m.topic}.get("7") == b"ON", 10)

        configs = {m.topic: json.loads(m.payload) for m in sub.messages if m.topic.startswith("homeassistant/")}
        seven = configs["homeassistant/binary_sensor/test-pi/state_7/config"]
        assert seven["state_topic"] == "edge/test-pi/state/7" and seven["payload_on"] == "ON"
        image = configs["homeassistant/image/test-pi/image/config"]
        assert image["image_topic"] == "edge/test-pi/image" and image["content_type"] == "image/jpeg"
        button = configs["homeassistant/button/test-pi/cmd_reload/config"]
        sub.client.publish(button["command_topic"], button["payload_press"], qos=1)  # Home Assistant presses it
        assert wait_until(lambda: any(m.json()["event"] == "command_done" and
                                      m.json()["details"]["command"] == "reload" for m in sub.of_kind("events")), 20)
    finally:
        proc.terminate()
        proc.wait(30)
