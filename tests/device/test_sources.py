"""Every input source for real where this machine allows it: folders, a replayed file, a pipe, a serial port
(a pty pair), an IIO sensor (a sysfs-shaped tree), an HTTP camera (a local server), a video file (written
here with OpenCV), and the camera's frame handling with no camera library present."""

from __future__ import annotations

import http.server
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_infer.manifest import SensorInputSpec
from edge_infer.sources import Sample, SourceError, camera, iio, make_source
from edge_infer.sources import http as http_source
from edge_infer.sources.camera import CameraSource, open_backend
from edge_infer.sources.frames import frame_to_image
from edge_infer.sources.iio import IioSource
from edge_infer.sources.live import NewestOnly
from edge_infer.sources.readings import ReadingParser, Windower
from tests.conftest import DEMO, DIGITS_TEST, REPO, run_cli, write_config
from tests.device.faults import wait_until
from tests.helpers.broker import Mosquitto
from tests.helpers.subscriber import Subscriber

VIBRATION = DEMO / "vibration-int8-only.tflite"
REPLAY = DEMO / "vibration" / "pump-replay.csv"
REPLAY_WINDOWS = (len(REPLAY.read_text().splitlines()) - 1 - 64) // 32 + 1
SPEC = SensorInputSpec(("ax", "ay", "az"), 64, 32, 100.0, (0.0, 0.0, 9.81), (0.5, 0.5, 0.1))


def stop_line(stderr: str) -> dict[str, int]:
    line = next(x for x in stderr.splitlines() if "event=stop" in x)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)\b", line)}


def sensor_config(path: Path, state: Path, port: int, source: str) -> Path:
    path.write_text(f"""
[device]
id = "pump-1"
state_dir = "{state}"
[model]
bundle = "{VIBRATION}"
[source]
{source}
[mqtt]
port = {port}
reconnect_max = 1.0
""")
    return path


# --- folders ------------------------------------------------------------------------------------------------

def test_directory_patterns_reach_into_subfolders_and_processed_files_move(tmp_path: Path, broker: Mosquitto) -> None:
    inbox = tmp_path / "in"
    (inbox / "cam1" / "2026").mkdir(parents=True)
    (inbox / "cam2").mkdir()
    digits = sorted((DIGITS_TEST / "1").glob("*.png"))[:3]
    (inbox / "cam1" / "2026" / "a.png").write_bytes(digits[0].read_bytes())
    (inbox / "cam2" / "b.png").write_bytes(digits[1].read_bytes())
    (inbox / "top.png").write_bytes(digits[2].read_bytes())
    (inbox / "cam2" / "notes.txt").write_text("not matched by the pattern")
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=inbox, state=tmp_path / "s",
                       port=broker.port)
    text = cfg.read_text().replace('settle_seconds = 0.0', 'settle_seconds = 0.0\npatterns = ["**/*.png"]\n'
                                   f'processed = "move"\nprocessed_dir = "{tmp_path / "done"}"')
    cfg.write_text(text)
    sub = Subscriber(broker.port, "edge/test-pi/results")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) >= 3)
    ids = sorted(m.json()["input"]["id"] for m in sub.of_kind("results"))
    assert ids == ["cam1/2026/a.png", "cam2/b.png", "top.png"]
    moved = sorted(str(p.relative_to(tmp_path / "done")) for p in (tmp_path / "done").rglob("*.png"))
    assert moved == ids
    assert not list(inbox.rglob("*.png")) and (inbox / "cam2" / "notes.txt").exists()
    sub.close()


def test_processed_delete_removes_files_only_once_their_outcome_is_stored(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    for i, f in enumerate(sorted((DIGITS_TEST / "2").glob("*.png"))[:4]):
        (inbox / f"{i}.png").write_bytes(f.read_bytes())
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n")
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=inbox, state=tmp_path / "s",
                       port=9)
    cfg.write_text(cfg.read_text().replace('settle_seconds = 0.0', 'settle_seconds = 0.0\nprocessed = "delete"'))
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    counts = stop_line(proc.stderr)
    assert counts["results"] == 4 and counts["rejected"] == 1 and counts["queued"] == 5
    assert list(inbox.iterdir()) == []  # rejections count as processed too: their record is in the outbox


# --- sensor sources -----------------------------------------------------------------------------------------

def test_reading_parser_understands_headers_json_and_garbage() -> None:
    parser = ReadingParser(("ax", "ay", "az"))
    assert parser.parse("t,az,ax,ay") is None  # a header, in any column order
    t, v = parser.parse("1.5,9.8,0.1,0.2")
    assert t == 1.5 and v.tolist() == [0.1, 0.2, 9.8]
    t, v = parser.parse('{"t": 2, "ax": 1, "az": "x"}')
    assert t == 2.0 and v[0] == 1.0 and np.isnan(v[1]) and np.isnan(v[2])
    t, v = parser.parse("3.0,9.8,oops")
    assert np.isnan(v[1]) and parser.malformed == 1
    bare = ReadingParser(("ax", "ay", "az"))
    assert bare.parse("0.1,0.2,9.8")[1].tolist() == [0.1, 0.2, 9.8]  # no header, no time column
    noted = ReadingParser(("ax", "ay", "az"))
    assert noted.parse("t,note,ax,ay,az") is None
    t, v = noted.parse('4.0,"pump on, valve 2 open",0.5,0.6,9.7')  # a quoted comma is not a separator
    assert t == 4.0 and v.tolist() == [0.5, 0.6, 9.7] and noted.malformed == 0


class EndlessLine(io.TextIOBase):
    """A pipe that sends one good line, then a line of `size` characters with no end in sight, then one more
    good line — produced as it is read, so a reader that held the long line whole would need `size` bytes."""

    def __init__(self, size: int) -> None:
        self.parts = ["0.1,0.2,9.8\n"]
        self.left = size
        self.after = ["0.3,0.4,9.7\n"]
        self.largest_read = 0

    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        assert size > 0, "an unbounded readline"
        self.largest_read = max(self.largest_read, size)
        if self.parts:
            return self.parts.pop(0)
        if self.left > 0:
            n = min(size, self.left)
            self.left -= n
            return "7" * n if self.left else "7" * (n - 1) + "\n"
        return self.after.pop(0) if self.after else ""


def test_a_line_that_never_ends_is_skipped_without_being_held(caplog: pytest.LogCaptureFixture) -> None:
    """1 GiB without a newline between two readings (stdin and replay read through `bounded_lines`): both
    readings arrive, the long line is dropped with one log line, and no read ever asked for more than 64 Ki."""
    from edge_infer.sources.readings import MAX_LINE, bounded_lines

    stream = EndlessLine(2**30)
    with caplog.at_level("WARNING"):
        lines = list(bounded_lines(stream, "stdin"))
    assert lines == ["0.1,0.2,9.8\n", "0.3,0.4,9.7\n"]
    assert stream.largest_read <= MAX_LINE + 1
    assert [r.message for r in caplog.records if "line_dropped" in r.message] == [
        f"event=line_dropped source=stdin chars={2**30} (longer than {MAX_LINE})"]
    exact = io.StringIO("x" * MAX_LINE + "\n" + "y" * (MAX_LINE + 1) + "\nz\n")
    assert [len(x) for x in bounded_lines(exact, "f")] == [MAX_LINE + 1, 2]  # a line of exactly the limit is kept


def test_windower_cuts_windows_with_hop() -> None:
    w = Windower(window=4, hop=2, channels=1)
    out = [w.push(float(i), np.array([float(i)])) for i in range(10)]
    windows = [(start, vals[:, 0].tolist()) for start, vals, _ in (o for o in out if o is not None)]
    assert windows == [(0, [0, 1, 2, 3]), (2, [2, 3, 4, 5]), (4, [4, 5, 6, 7]), (6, [6, 7, 8, 9])]


def test_replay_gives_results_and_rejections_and_a_restart_skips_what_was_done(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = sensor_config(tmp_path / "c.toml", tmp_path / "s", broker.port, f'type = "replay"\npath = "{REPLAY}"')
    sub = Subscriber(broker.port, "edge/pump-1/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    counts = stop_line(proc.stderr)
    assert counts["results"] + counts["rejected"] == REPLAY_WINDOWS
    assert "rejections=flatline:4,non_finite:2,out_of_range:2,sample_gap:1,spike:2" in proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) + len(s.of_kind("rejections")) >= REPLAY_WINDOWS)
    again = run_cli("run", "--config", str(cfg), "--once")
    assert stop_line(again.stderr)["skipped"] == REPLAY_WINDOWS, again.stderr
    sub.close()


def test_stdin_pipe_is_read_to_the_end(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = sensor_config(tmp_path / "c.toml", tmp_path / "s", broker.port, 'type = "stdin"')
    proc = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg), "--once"],
                          input=REPLAY.read_text(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    counts = stop_line(proc.stderr)
    assert counts["results"] + counts["rejected"] == REPLAY_WINDOWS and counts["dropped"] == 0


def test_serial_port_over_a_pty_pair(tmp_path: Path, broker: Mosquitto) -> None:
    """A microcontroller printing CSV lines: the test writes the replay into the master side of a pty."""
    pytest.importorskip("serial")
    master, slave = os.openpty()
    port = os.ttyname(slave)
    all_lines = REPLAY.read_text().splitlines(keepends=True)
    lines = all_lines[:1] + all_lines[1 + 310:1 + 310 + 64 + 32 * 8]  # header + 9 clean windows (normal)
    cfg = sensor_config(tmp_path / "c.toml", tmp_path / "s", broker.port,
                        f'type = "serial"\nport = "{port}"\nbaudrate = 115200')
    sub = Subscriber(broker.port, "edge/pump-1/results")
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)],
                                stderr=out, text=True, cwd=REPO)
    try:  # pyserial flushes the port's input when it opens it: write only once the source says it is reading
        assert wait_until(lambda: "event=source_open" in log.read_text(), 30), log.read_text()
        for i in range(0, len(lines), 16):
            os.write(master, "".join(lines[i:i + 16]).encode())
            time.sleep(0.01)
        assert sub.wait_for(lambda s: len(s.of_kind("results")) >= 7, timeout=60)
        # then all nine, unless a window was dropped (counted at stop): a SIGTERM sooner would leave the last
        # lines unread in the pty — the test's timing, not the daemon's loss
        sub.wait_for(lambda s: len(s.of_kind("results")) >= 9, timeout=20)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        os.close(master)
        os.close(slave)
    stderr = log.read_text()
    counts = stop_line(stderr)
    # all 9 windows are clean; a live source may drop a window when behind, and says so
    assert counts["results"] + counts["dropped"] == 9, stderr
    labels = [(m.json()["input"]["id"], m.json()["result"]["label"]) for m in sub.of_kind("results")]
    assert {label for _, label in labels} == {"normal"}, (labels, stderr)
    sub.close()


def iio_tree(root: Path, raw: tuple[str, str, str] = ("12", "-30", "1001")) -> Path:
    device = root / "iio:device0"
    device.mkdir(parents=True)
    for axis, value in zip("xyz", raw, strict=True):
        (device / f"in_accel_{axis}_raw").write_text(value + "\n")
    (device / "in_accel_scale").write_text("0.009806650\n")  # m/s² per LSB (1 mg), shared by the axes
    (device / "in_accel_z_offset").write_text("-1\n")
    (device / "name").write_text("lis3dh\n")
    return device


def test_iio_reads_scaled_channels_from_sysfs(tmp_path: Path) -> None:
    device = iio_tree(tmp_path)
    source = IioSource(iio.Options(type="iio", device=str(device),
                                   channels={"ax": "in_accel_x", "ay": "in_accel_y", "az": "in_accel_z"}), SPEC)
    values = source.read_once()
    assert values == pytest.approx([12 * 0.00980665, -30 * 0.00980665, 1000 * 0.00980665])
    (device / "in_accel_y_raw").write_text("garbage")
    assert np.isnan(source.read_once()[1])
    with pytest.raises(SourceError, match="in_accel_w_raw not found"):
        IioSource(iio.Options(type="iio", device=str(device), channels={"ax": "in_accel_w"}), SPEC)


def test_a_stuck_iio_sensor_is_rejected_as_flatline(tmp_path: Path, broker: Mosquitto) -> None:
    """sysfs values that never change are a stuck sensor: the window is rejected, the channel named."""
    device = iio_tree(tmp_path / "sys")
    cfg = sensor_config(tmp_path / "c.toml", tmp_path / "s", broker.port,
                        f'type = "iio"\ndevice = "{device}"\n'
                        'channels = { ax = "in_accel_x", ay = "in_accel_y", az = "in_accel_z" }')
    # readings are timed by the clock: on a loaded 2-core CI machine the thread can miss its 10 ms slot and the
    # window is (rightly) a sample_gap; this test is about the stuck values, so gaps are allowed here
    cfg.write_text(cfg.read_text() + "[gate]\nmax_gap_factor = 1000\n")
    sub = Subscriber(broker.port, "edge/pump-1/rejections")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("rejections")) >= 1)
    doc = sub.of_kind("rejections")[0].json()
    assert doc["reason"] == "flatline" and doc["metrics"]["channel"] == "ax"
    sub.close()


# --- live image sources -------------------------------------------------------------------------------------

class _Snapshots(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_http_snapshot_camera(tmp_path: Path, broker: Mosquitto) -> None:
    # PNG like the model's calibration scans (JPEG artefacts on these tiny scans read as noise to the gate)
    _Snapshots.body = sorted((DIGITS_TEST / "7").glob("*.png"))[0].read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Snapshots)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=tmp_path,
                           state=tmp_path / "s", port=broker.port)
        text = re.sub(r'\[source\][^\[]*', f'[source]\ntype = "http"\nurl = "http://127.0.0.1:{server.server_port}/'
                      'snap.jpg"\ninterval = 0.05\n\n', cfg.read_text())
        cfg.write_text(text)
        sub = Subscriber(broker.port, "edge/test-pi/results")
        proc = run_cli("run", "--config", str(cfg), "--once")
        assert proc.returncode == 0, proc.stderr
        assert sub.wait_for(lambda s: len(s.of_kind("results")) >= 1), proc.stderr
        assert sub.of_kind("results")[0].json()["result"]["label"] == "7"
        sub.close()
    finally:
        server.shutdown()
    refused = run_cli("run", "--config", str(cfg), "--once")  # the camera is gone: logged, not a crash
    assert refused.returncode == 0 and "event=source_lost source=http" in refused.stderr


def test_newest_only_drops_stale_samples_and_counts_them() -> None:
    class Burst:
        name, kind, live, dropped = "burst", "image", True, 0

        def samples(self, stop, once, done):
            for i in range(500):
                yield Sample("burst", str(i), str(i), 0.0, b"x")

    wrapper = NewestOnly(Burst())
    taken = []
    for sample in wrapper.samples(threading.Event(), True, lambda s: False):
        taken.append(int(sample.input_id))
        time.sleep(0.002)  # a pipeline slower than the source
    assert taken == sorted(taken) and taken[-1] == 499  # in order, and the newest is never lost
    assert wrapper.dropped > 0 and wrapper.dropped + len(taken) == 500


def test_camera_without_any_camera_library_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 → ImportError
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(SourceError) as err:
        open_backend(camera.Options(type="camera"))
    assert "python3-picamera2" in str(err.value) and "opencv-python-headless" in str(err.value)
    config_err = run_cli("check", "--config", str(DEMO / "nonexistent.toml"))
    assert config_err.returncode == 2


def photo_rgb() -> np.ndarray:
    return np.asarray(Image.open(sorted((DIGITS_TEST / "5").glob("*.png"))[0]).convert("RGB").resize((64, 48)))


@pytest.mark.parametrize("fmt", ["RGB888", "BGR888", "XRGB8888", "XBGR8888", "OPENCV_BGR"])
def test_camera_frame_layouts_become_the_same_picture(fmt: str) -> None:
    rgb = photo_rgb()
    frame = {
        "RGB888": rgb[:, :, ::-1], "OPENCV_BGR": rgb[:, :, ::-1], "BGR888": rgb,
        "XRGB8888": np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)]),
        "XBGR8888": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
    }[fmt]
    assert np.array_equal(np.asarray(frame_to_image(frame, fmt)), rgb)
    assert frame_to_image(frame, fmt, grey=True).mode == "L"


def test_yuv420_frames_from_the_pi_lores_stream() -> None:
    rgb = photo_rgb()
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    h, w = rgb.shape[:2]
    u = ycbcr[:, :, 1].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).round().astype(np.uint8)
    v = ycbcr[:, :, 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).round().astype(np.uint8)
    frame = np.vstack([ycbcr[:, :, 0], u.reshape(h // 4, w), v.reshape(h // 4, w)])
    assert np.array_equal(np.asarray(frame_to_image(frame, "YUV420", grey=True)), ycbcr[:, :, 0])
    back = np.asarray(frame_to_image(frame, "YUV420")).astype(int)
    assert np.abs(back - rgb).mean() < 12  # chroma at quarter resolution, as the camera delivers it
    with pytest.raises(ValueError, match="YUV420"):
        frame_to_image(np.zeros((10, 7), np.uint8), "YUV420")


def test_camera_source_turns_grabbed_frames_into_samples() -> None:
    frames = iter([(photo_rgb()[:, :, ::-1], "OPENCV_BGR"), (np.zeros((3,), np.uint8), "OPENCV_BGR")])
    closed = []
    source = CameraSource(camera.Options(type="camera", name="porch"), None,
                          opener=lambda o: ("fake", lambda: next(frames), lambda: closed.append(True)))
    stop = threading.Event()
    it = source.samples(stop, False, lambda s: False)
    first, second = next(it), next(it)
    stop.set()
    assert first.image is not None and first.image.size == (64, 48) and first.input_id.startswith("porch@")
    assert second.image is None and "frame must be" in second.read_error
    it.close()
    assert closed == [True]


def test_a_camera_that_is_missing_or_unplugged_is_reopened_forever() -> None:
    """The camera is not there at start (two failed opens), delivers, is unplugged mid-stream (its grab fails),
    and comes back: frames resume each time; health says lost/restored once per outage, in order; every
    opened camera is closed; the source never raises."""
    opens = {"n": 0}
    closed: list[int] = []

    def opener(_options: camera.Options) -> tuple[str, object, object]:
        opens["n"] += 1
        n = opens["n"]
        if n <= 2:
            raise SourceError("picamera2: Camera __init__ sequence did not complete.")
        grabs = iter(range(3))

        def grab() -> tuple[np.ndarray, str]:
            if next(grabs, None) is None:
                raise SourceError("no frame for 0.5 s")
            return photo_rgb()[:, :, ::-1], "OPENCV_BGR"

        return "fake", grab, lambda: closed.append(n)

    source = CameraSource(camera.Options(type="camera", reconnect_max=0.5), None, opener=opener)
    changes: list[tuple[bool, str | None]] = []
    source.health.listeners.append(lambda up, reason, _held: changes.append((up, reason)))
    stop = threading.Event()
    taken = []
    for sample in source.samples(stop, False, lambda s: False):
        taken.append(sample)
        if len(taken) == 6:
            stop.set()
    assert len(taken) == 6 and all(s.image is not None for s in taken)
    assert opens["n"] == 4 and closed == [3, 4]
    assert changes == [(False, "cannot open the camera: picamera2: Camera __init__ sequence did not complete."),
                       (True, None), (False, "the camera stopped: no frame for 0.5 s"), (True, None)]
    assert source.health.losses == 2 and source.health.up


def test_a_camera_library_that_is_missing_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    source = CameraSource(camera.Options(type="camera"), None)
    with pytest.raises(camera.MissingLibrary, match="python3-picamera2"):
        next(source.samples(threading.Event(), False, lambda s: False))
    assert source.health.up  # an installation problem, not a lost camera


def test_video_file_frames_are_all_processed_and_a_restart_skips_them(tmp_path: Path, broker: Mosquitto) -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed in this leg (PyPI has no armv7l wheel)")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    truth = []
    for label in "0123456789":
        digit = Image.open(sorted((DIGITS_TEST / label).glob("*.png"))[0]).convert("RGB").resize((64, 64))
        writer.write(np.asarray(digit)[:, :, ::-1].copy())
        truth.append(label)
    writer.release()
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=tmp_path,
                       state=tmp_path / "s", port=broker.port)
    cfg.write_text(re.sub(r'\[source\][^\[]*', f'[source]\ntype = "video"\nuri = "{video}"\n\n', cfg.read_text()))
    sub = Subscriber(broker.port, "edge/test-pi/results")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) >= 10)
    got = {m.json()["input"]["id"]: m.json()["result"]["label"] for m in sub.of_kind("results")}
    assert sorted(got) == sorted(f"clip.avi#{i}" for i in range(10))
    assert sum(got[f"clip.avi#{i}"] == truth[i] for i in range(10)) >= 9
    again = run_cli("run", "--config", str(cfg), "--once")
    assert stop_line(again.stderr)["skipped"] == 10
    sub.close()


def test_a_sensor_source_for_an_image_model_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=tmp_path,
                       state=tmp_path / "s", port=9)
    cfg.write_text(re.sub(r'\[source\][^\[]*', f'[source]\ntype = "replay"\npath = "{REPLAY}"\n\n', cfg.read_text()))
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 2
    assert "gives sensor input, but the bundle's model takes image input" in proc.stderr.strip().splitlines()[-1]


def test_make_source_wraps_live_sources() -> None:
    source = make_source(http_source.Options(type="http", url="http://127.0.0.1:9/x.jpg", name="cam"), None)
    assert isinstance(source, NewestOnly) and source.kind == "image"


def test_a_processed_file_left_behind_by_a_crash_is_moved_on_the_next_run(tmp_path: Path) -> None:
    """Outcome stored, then the daemon died before moving the file: the next run skips it and moves it."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    scan = sorted((DIGITS_TEST / "8").glob("*.png"))[0]
    (inbox / "a.png").write_bytes(scan.read_bytes())
    cfg = write_config(tmp_path / "c.toml", bundle=DEMO / "digits-int8-only.tflite", source=inbox,
                       state=tmp_path / "s", port=9)
    assert run_cli("run", "--config", str(cfg), "--once").returncode == 0  # processed = keep: stays
    assert (inbox / "a.png").exists()
    cfg.write_text(cfg.read_text().replace("settle_seconds = 0.0", 'settle_seconds = 0.0\nprocessed = "move"'))
    again = run_cli("run", "--config", str(cfg), "--once")
    assert stop_line(again.stderr)["skipped"] == 1
    assert not (inbox / "a.png").exists() and (tmp_path / "in.done" / "a.png").exists()
