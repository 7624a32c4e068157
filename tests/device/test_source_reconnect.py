"""Sources that never give up: a camera stream whose server goes away and comes back, a snapshot camera that
wants a login, a serial adapter that is unplugged and plugged in again. Real servers and a real pty; the
daemon stays up, says `source_lost` once and `source_restored` once, and inputs resume."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from edge_infer.manifest import SensorInputSpec
from edge_infer.sinks.memory import MemorySink
from edge_infer.sources import http as http_source
from tests.conftest import DEMO, DIGITS_INT8, write_config
from tests.device.faults import wait_until
from tests.helpers.broker import free_port


def jpeg(level: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.full((48, 64), level % 200 + 30, np.uint8)
    pixels[10:38, 20:44] = 255 - pixels[0, 0]  # something with edges and contrast: the gate passes it
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Camera:
    """An MJPEG-over-HTTP camera on a fixed port that can be switched off and on (`/stream.mjpg`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        halt = threading.Event()

        class Stream(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not halt.is_set():
                        frame = jpeg(i)
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(frame) + frame + b"\r\n")
                        i += 1
                        halt.wait(0.05)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Stream)
        self.server.daemon_threads = True
        self.server.halt = halt  # type: ignore[attr-defined]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.halt.set()  # type: ignore[attr-defined]
        self.server.shutdown()
        self.server.server_close()


def events(sink: MemorySink) -> list[dict]:
    return [json.loads(p) for p in sink.of_kind("events")]


def test_a_stream_that_drops_is_reopened_and_the_daemon_stays_up(tmp_path: Path) -> None:
    pytest.importorskip("cv2", reason="OpenCV is not installed in this leg (PyPI has no armv7l wheel)")
    camera = Camera(free_port())
    camera.start()
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path, state=tmp_path / "s",
                       port=free_port())
    text = cfg.read_text()
    start, end = text.index("[source]"), text.index("[mqtt]")
    cfg.write_text(text[:start] + f'[source]\ntype = "video"\nname = "porch"\n'
                   f'uri = "http://127.0.0.1:{camera.port}/stream.mjpg"\ntimeout = 2\nreconnect_max = 0.5\n\n'
                   + text[end:])
    sinks: list[MemorySink] = []
    daemon = Daemon(load_config(cfg), sink=lambda opener: sinks.append(MemorySink(opener)) or sinks[0])
    sink = sinks[0]
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: len(sink.of_kind("results")) >= 3, 60)
        camera.stop()
        assert wait_until(lambda: any(e["event"] == "source_lost" for e in events(sink)), 30)
        assert runner.is_alive() and daemon.health()["source"]["up"] is False
        assert daemon.status_line().startswith("SOURCE DOWN") and any("porch" in p for p in sink.problems())
        time.sleep(1.5)  # a few reconnect attempts while it is down: still one source_lost
        camera.start()
        assert wait_until(lambda: any(e["event"] == "source_restored" for e in events(sink)), 30)
        after = len(sink.of_kind("results"))
        assert wait_until(lambda: len(sink.of_kind("results")) >= after + 3, 30)  # frames resume
        assert runner.is_alive() and daemon.health()["source"]["up"] is True and not sink.problems()
    finally:
        daemon.stop_event.set()
        runner.join(30)
        camera.stop()
    changes = [(e["event"], e["severity"], e["details"]) for e in events(sink) if e["event"].startswith("source_")]
    assert [c[:2] for c in changes] == [("source_lost", "error"), ("source_restored", "info")], changes
    assert changes[0][2]["source"] == "porch" and changes[1][2]["down_s"] >= 1.5
    assert daemon.health()["source"]["losses"] == 1


# --- a snapshot camera that wants a login ----------------------------------------------------------------------
USER, PASSWORD, REALM, NONCE = "cam", "s3cret", "camera", "5f1a9e"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class LoginCamera(BaseHTTPRequestHandler):
    """`/basic.jpg` wants HTTP Basic, `/digest.jpg` HTTP Digest (MD5, qop=auth), both for cam / s3cret."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        given = self.headers.get("Authorization", "")
        if self.path == "/basic.jpg":
            ok = given == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            challenge = f'Basic realm="{REALM}"'
        else:
            ok = self._digest_ok(given)
            challenge = f'Digest realm="{REALM}", nonce="{NONCE}", qop="auth", algorithm=MD5'
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", challenge)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = jpeg(1)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _digest_ok(self, given: str) -> bool:
        if not given.startswith("Digest "):
            return False
        fields = dict(urllib.request.parse_keqv_list(urllib.request.parse_http_list(given[7:])))
        ha1 = _md5(f"{USER}:{REALM}:{PASSWORD}")
        ha2 = _md5(f"GET:{fields.get('uri')}")
        expected = _md5(f"{ha1}:{NONCE}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}")
        return fields.get("username") == USER and fields.get("response") == expected


@pytest.fixture
def login_camera():
    server = ThreadingHTTPServer(("127.0.0.1", 0), LoginCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def snapshots(options: http_source.Options) -> tuple[list, http_source.HttpSource]:
    source = http_source.HttpSource(options)
    return list(source.samples(threading.Event(), True, lambda s: False)), source


def test_a_camera_login_by_basic_or_digest_from_the_url_the_environment_or_a_file(
    login_camera: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv(http_source.PASSWORD_ENV, raising=False)
    got, _ = snapshots(http_source.Options(type="http", url=f"http://{USER}:{PASSWORD}@{login_camera}/basic.jpg"))
    assert len(got) == 1 and got[0].data == jpeg(1)

    monkeypatch.setenv(http_source.PASSWORD_ENV, PASSWORD)
    got, _ = snapshots(http_source.Options(type="http", url=f"http://{login_camera}/digest.jpg", username=USER))
    assert len(got) == 1 and got[0].data == jpeg(1)

    monkeypatch.delenv(http_source.PASSWORD_ENV)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    got, _ = snapshots(http_source.Options(type="http", url=f"http://{USER}@{login_camera}/digest.jpg",
                                           password_file=str(tmp_path / "pw")))
    assert len(got) == 1

    (tmp_path / "pw").write_text("wrong\n")
    got, source = snapshots(http_source.Options(type="http", url=f"http://{login_camera}/basic.jpg", username=USER,
                                                password_file=str(tmp_path / "pw")))
    assert got == [] and source.health.up is False
    assert source.health.reason == "HTTP 401 Unauthorized (check username and password)"
    assert PASSWORD not in source.url and "wrong" not in repr(source.health.to_dict())


# --- a serial adapter unplugged and plugged in again ---------------------------------------------------------
VIBRATION_LINES = (DEMO / "vibration" / "pump-replay.csv").read_text().splitlines(keepends=True)
SPEC = SensorInputSpec(("ax", "ay", "az"), 64, 32, 100.0, (0.0, 0.0, 9.81), (0.5, 0.5, 0.1))


def test_an_unplugged_serial_adapter_is_reopened_when_it_comes_back(tmp_path: Path) -> None:
    """The port is a `/dev/serial/by-id`-style link: unplugging closes the device and removes the link;
    plugging in makes a new device (a new pty) behind the same link."""
    pytest.importorskip("serial")
    from edge_infer.sources import serial as serial_source

    link = tmp_path / "usb-Arduino_Uno-if00"

    def plug() -> tuple[int, int]:
        master, slave = os.openpty()
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(slave))
        return master, slave

    device = plug()
    source = serial_source.SerialSource(
        serial_source.Options(type="serial", port=str(link), reconnect_max=0.5, columns=("t", "ax", "ay", "az")),
        SPEC)
    changes: list[tuple[bool, str | None]] = []
    source.health.listeners.append(lambda up, reason, held: changes.append((up, reason)))
    stop = threading.Event()
    collected: list = []

    def pump() -> None:
        for reading in source.readings(stop, False):
            collected.append(reading)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def send(master: int, lines: list[str]) -> None:
        for i in range(0, len(lines), 8):
            os.write(master, "".join(lines[i:i + 8]).encode())
            time.sleep(0.005)

    try:
        for _ in range(50):  # pyserial flushes input when it opens the port: repeat until lines arrive
            send(device[0], VIBRATION_LINES[1:21])
            if wait_until(lambda: len(collected) >= 10, 0.2):
                break
        assert collected, "no reading before the unplug"
        os.close(device[0])
        os.close(device[1])
        link.unlink()
        assert wait_until(lambda: changes and changes[-1][0] is False, 10), changes
        time.sleep(1.0)  # retries against a missing device: still one loss
        before = len(collected)
        device = plug()
        for _ in range(100):
            send(device[0], VIBRATION_LINES[21:41])
            if wait_until(lambda: len(collected) > before, 0.2):
                break
        assert len(collected) > before and reader.is_alive()
    finally:
        stop.set()
        reader.join(10)
        for fd in device:
            with contextlib.suppress(OSError):
                os.close(fd)
    assert [up for up, _ in changes] == [False, True], changes
    assert "usb-Arduino_Uno-if00" in changes[0][1] and source.health.up
