"""A hostile publisher and a hostile file, through the public surface only (system tier): a real mosquitto, the
daemon as a process with signed commands and updates on, an attacker with nothing but publish rights on
`…/cmd/#` and write access to the watched folder. After every attack a new good input still gets its result,
the daemon's peak memory stays within 64 MB of its baseline, and nothing the attacker sent is stored whole."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge_infer.remote import bundle_chunks, command_payload
from edge_infer.signing import generate_keypair, load_private_key, sign_command
from tests.conftest import DEMO, DIGITS_INT8, write_config
from tests.device.faults import DaemonProcess, make_frames
from tests.device.test_hardening import _zip_bomb
from tests.device.test_updates import _events
from tests.helpers.broker import Mosquitto
from tests.helpers.bundles import make_update
from tests.helpers.subscriber import Subscriber

SECRET = "s3cret-mqtt-password-7f1e"
MARKER = "ATTACKER-MARKER-"
PEAK_BUDGET = 64 * 1024 * 1024


class Attacker:
    """A plain MQTT client: publish rights, no key."""

    def __init__(self, port: int) -> None:
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), "the attacker could not connect"

    def send(self, topic: str, payload: bytes) -> None:
        """Publish and wait for the broker's acknowledgement (paho reconnects by itself when the broker drops
        the connection over an odd topic; the message then goes out again)."""
        assert self.connected.wait(10), "the attacker lost the broker"
        info = self.client.publish(f"edge/test-pi/{topic}", payload, qos=1)
        info.wait_for_publish(60)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Device:
    def __init__(self, tmp_path: Path, broker: Mosquitto, keys: dict[str, Path]) -> None:
        self.tmp = tmp_path
        self.cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in",
                                state=tmp_path / "s", port=broker.port, mqtt='username = "device"')
        self.cfg.write_text(self.cfg.read_text() + f"""
[fleet]
keys = ["{keys['public']}"]
[update]
enabled = true
watch = 0
[commands]
enabled = true
[gate]
keep_rejected = 50
""")
        self.sub = Subscriber(broker.port, "edge/test-pi/#")
        os.environ["EDGE_INFER_MQTT_PASSWORD"] = SECRET
        self.proc = DaemonProcess(self.cfg, tmp_path / "log").start()
        self.fed = 0
        assert self.result_follows(), "the daemon never produced a first result"
        self.baseline = _vm_hwm(self.pid)

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def result_follows(self, timeout: float = 30) -> bool:
        """Feed one good frame and wait for its result."""
        make_frames(self.tmp / "in", 1, self.fed)
        name = f"frame-{self.fed:06d}.png"
        self.fed += 1
        return self.sub.wait_for(lambda s: any(m.json()["input"]["id"] == name for m in s.of_kind("results")),
                                 timeout)

    def after(self, attack: str) -> None:
        """The daemon is alive, a good input gets its result, peak memory within budget (printed with -s)."""
        assert self.proc.alive(), f"{attack}: the daemon died: {self.log()[-2000:]}"
        started = time.monotonic()
        assert self.result_follows(), f"{attack}: no result for a good input afterwards: {self.log()[-2000:]}"
        peak = _vm_hwm(self.pid)
        print(f"{attack}: VmHWM {self.baseline / 2**20:.1f} → {peak / 2**20:.1f} MiB, next result after "
              f"{time.monotonic() - started:.2f} s")
        assert peak - self.baseline <= PEAK_BUDGET, f"{attack}: peak memory {self.baseline} → {peak}"

    def log(self) -> str:
        return (self.tmp / "log").read_text(errors="replace")

    def restart(self) -> None:
        assert self.proc.terminate() == 0
        self.proc = DaemonProcess(self.cfg, self.tmp / "log").start()
        assert self.result_follows()

    def stop(self) -> None:
        if self.proc.alive():
            assert self.proc.terminate() == 0
        self.sub.close()
        os.environ.pop("EDGE_INFER_MQTT_PASSWORD", None)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    private, public = generate_keypair(tmp_path_factory.mktemp("keys") / "fleet")
    return {"private": private, "public": public}


@pytest.fixture
def device(tmp_path: Path, broker: Mosquitto, keys: dict[str, Path]):
    dev = Device(tmp_path, broker, keys)
    yield dev
    dev.stop()


def _refusals(device: Device, claimed_id: str = "") -> list[dict]:
    return [e for e in _events(device.sub, "command_failed") if e["id"] == claimed_id]


def test_hostile_commands_and_transfers(device: Device, broker: Mosquitto, keys: dict[str, Path], tmp_path: Path):
    attacker = Attacker(broker.port)
    try:
        # one lone surrogate in a refused command's id once killed the writer for good
        attacker.send("cmd/reload", b'{"id": "\\ud800"}')
        assert device.sub.wait_for(lambda s: _refusals(device), 15)
        device.after("lone surrogate id")
        # an id of 200 KB (under the inbound limit) and one of 300 KB (over it), deep JSON, 60 MB
        attacker.send("cmd/reload", json.dumps({"id": MARKER * 12_000}).encode())
        attacker.send("cmd/snapshot", json.dumps({"id": MARKER * 18_000}).encode())
        attacker.send("cmd/reload", b"[" * 200_000)
        attacker.send("cmd/set-threshold", b"x" * 60_000_000)
        device.after("huge ids, deep JSON, a 60 MB message")

        # a zip bomb dropped into incoming/ is refused unread, and taken out of incoming/
        bomb = _zip_bomb(tmp_path / "bomb.tflite", 400)
        incoming = tmp_path / "s" / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        os.replace(bomb, incoming / "bomb.tflite")
        assert device.sub.wait_for(lambda s: _events(s, "update_refused"), 30)
        assert not (incoming / "bomb.tflite").exists()
        device.after("zip bomb in incoming/")

        # the same bomb pushed without the fleet key: the unsigned header is refused, chunks land nowhere
        _, payloads = bundle_chunks(_zip_bomb(tmp_path / "bomb2.tflite", 400), 65536, keys["private"], "test-pi")
        forged_header = json.dumps({"body": json.loads(payloads[0])["body"], "key_id": "0" * 16,
                                    "signature": "AAAA"}).encode()
        attacker.send("cmd/update-model", forged_header)
        for chunk in payloads[1:]:
            attacker.send("cmd/update-model", chunk)
        part = tmp_path / "s" / "models" / "incoming.part"
        assert not part.exists() or part.stat().st_size == 0
        assert device.sub.wait_for(lambda s: {e["reason"] for e in _events(s, "command_failed")} >= {
            "malformed", "unknown_key", "no_transfer"}, 15)
        device.after("unsigned transfer")

        # a real transfer with an attacker's forged chunk thrown in: the forged one is refused, the update lands
        good = make_update(DEMO / "digits-int8.tflite", tmp_path / "good.tflite", keys["private"])
        transfer, payloads = bundle_chunks(good, 8192, keys["private"], "test-pi")
        attacker.send("cmd/update-model", payloads[0])
        attacker.send("cmd/update-model", json.dumps({"transfer": transfer, "index": 0, "data": "AAAA"}).encode())
        for chunk in payloads[1:]:
            attacker.send("cmd/update-model", chunk)
        assert device.sub.wait_for(lambda s: [e for e in _events(s, "command_done") if e["id"] == transfer], 60), \
            device.log()[-3000:]
        device.after("a forged chunk inside a real transfer")
    finally:
        attacker.close()
    # nothing the attacker sent was stored or echoed whole, and refusals were aggregated, not one event each
    _assert_nothing_stored_whole(device, tmp_path)


def _assert_nothing_stored_whole(device: Device, tmp_path: Path) -> None:
    needle = (MARKER * 20).encode()  # 320 bytes of the attacker's string
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), f"{path} holds what the attacker sent"
    assert needle not in device.log().encode()
    assert all(needle not in m.payload for m in device.sub.all() if "/cmd/" not in m.topic)  # what it said
    state = sum(p.stat().st_size for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert state < 32 * 1024 * 1024, f"state dir grew to {state} bytes"


def test_replay_after_restart_and_stale_commands_are_refused(device: Device, keys: dict[str, Path]):
    key = load_private_key(keys["private"])
    command_id, payload = command_payload("reload", "test-pi", {}, keys["private"])
    device.sub.client.publish("edge/test-pi/cmd/reload", payload, qos=1)
    assert device.sub.wait_for(lambda s: [e for e in _events(s, "command_done") if e["id"] == command_id], 20)
    device.restart()
    device.sub.client.publish("edge/test-pi/cmd/reload", payload, qos=1)  # the very same message, replayed
    assert device.sub.wait_for(lambda s: _refusals(device, command_id), 20)
    assert _refusals(device, command_id)[0]["reason"] == "replayed"
    month_old = {"command": "reload", "device": "test-pi", "id": "old-1", "issued": time.time() - 30 * 86400,
                 "args": {}}
    device.sub.client.publish("edge/test-pi/cmd/reload", sign_command(month_old, key), qos=1)
    undated = {"command": "reload", "device": "test-pi", "id": "undated-1", "args": {}}
    device.sub.client.publish("edge/test-pi/cmd/reload", sign_command(undated, key), qos=1)
    assert device.sub.wait_for(lambda s: _refusals(device, "old-1") and _refusals(device, "undated-1"), 20)
    assert _refusals(device, "old-1")[0]["reason"] == "stale"
    assert _refusals(device, "undated-1")[0]["reason"] == "malformed"


def test_the_mqtt_password_never_leaves_the_process(device: Device, tmp_path: Path):
    """Links to the process environment and to a file holding the secret, a FIFO, with rejected inputs kept:
    the secret appears in no file under the state dir, no log line and no MQTT message."""
    folder = tmp_path / "in"
    outside = tmp_path / "secret.txt"
    outside.write_text(f"EDGE_INFER_MQTT_PASSWORD={SECRET}\n")
    (folder / "environ.png").symlink_to("/proc/self/environ")
    (folder / "parent-environ.png").symlink_to(f"/proc/{device.pid}/environ")
    (folder / "secret.png").symlink_to(outside)
    os.mkfifo(folder / "fifo.png")
    names = {"environ.png", "parent-environ.png", "secret.png"}
    assert device.sub.wait_for(
        lambda s: names <= {m.json()["input"]["id"] for m in s.of_kind("rejections")}, 30), device.log()[-2000:]
    reasons = {m.json()["input"]["id"]: m.json()["detail"] for m in device.sub.of_kind("rejections")}
    assert all("symbolic link" in reasons[n] for n in names)
    device.after("links to secrets")
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in device.log()
    assert all(SECRET.encode() not in m.payload for m in device.sub.all())


PAYLOADS = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=512).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: json.dumps({"id": "x" * n}).encode()),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=30),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=20).map(lambda d: json.dumps({"id": d, "args": d, "body": d}).encode()),
    st.sampled_from([b'{"id": "\\ud800"}', b'{"body": "\\udfff", "signature": 1}', b"\x00" * 100,
                     b'{"transfer": "t", "index": 0, "data": "AAAA"}', b'{"args": []}']),
)
TOPICS = st.one_of(st.sampled_from(["cmd/reload", "cmd/snapshot", "cmd/set-threshold", "cmd/update-model"]),
                   st.text(st.characters(blacklist_characters="+#", blacklist_categories=("Cs", "Cc", "Cn")),
                           min_size=1, max_size=60).map(lambda t: f"cmd/{t}"))


def test_fuzzed_commands_never_stop_or_bloat_the_device(device: Device, broker: Mosquitto):
    attacker = Attacker(broker.port)
    sent = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(topic=TOPICS, payload=PAYLOADS)
    def fuzz(topic: str, payload: bytes) -> None:
        attacker.send(topic, payload)
        sent.append(topic)

    try:
        fuzz()
    finally:
        attacker.close()
    assert len(sent) >= 150
    device.after("fuzzed commands")
    # every fuzzed message is refused; the first ten of a minute are answered (the witness), the rest counted
    assert device.sub.wait_for(lambda s: len(_events(s, "command_failed")) >= 10, 30)
    answered = _events(device.sub, "command_failed")
    assert len(answered) <= 30, "refusals beyond the per-minute allowance are counted, not answered one by one"
    log_bytes = len(device.log())
    assert log_bytes < 512 * 1024, f"the log grew to {log_bytes} bytes"
