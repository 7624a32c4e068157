"""End to end through the public surface: the `edge-infer` CLI, a config file, a real mosquitto, MQTT topics.

Uses the shipped int8 digits bundle and the real held-out digits it was evaluated on.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from edge_infer.bundle import load_bundle
from tests.conftest import DIGITS_INT8, DIGITS_TEST, REPO, run_cli, write_config
from tests.helpers.broker import Mosquitto, free_port
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber

BAD_FILES = {"cut-off.jpg": "truncated", "zero.png": "empty_file", "readme.txt": "not_an_image"}


def make_inputs(folder: Path) -> dict[str, str]:
    return make_inputs_from(DIGITS_TEST, folder)


def make_inputs_from(dataset: Path, folder: Path) -> dict[str, str]:
    """Every image of a labelled folder (flattened, label in the name) plus three bad files: id → truth."""
    folder.mkdir()
    truth: dict[str, str] = {}
    for label_dir in sorted(dataset.iterdir()):
        for image in sorted(label_dir.glob("*.png")):
            name = f"{label_dir.name}_{image.name}"
            shutil.copy(image, folder / name)
            truth[name] = label_dir.name
    photo = Image.open(next((dataset / "3").glob("*.png"))).convert("RGB").resize((64, 64))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=95)
    (folder / "cut-off.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    (folder / "zero.png").write_bytes(b"")
    (folder / "readme.txt").write_text("not a picture\n")
    return truth


def outbox_rows(state: Path) -> int:
    with sqlite3.connect(state / "outbox.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


def check_delivery(sub: Subscriber, truth: dict[str, str]) -> None:
    """One schema-valid result per good image at the bundle's measured accuracy; one rejection per bad file."""
    results = [m.json() for m in sub.of_kind("results")]
    rejections = [m.json() for m in sub.of_kind("rejections")]
    for doc in results:
        validate("results", doc)
    for doc in rejections:
        validate("rejections", doc)
    by_id = {doc["input"]["id"]: doc for doc in results}
    assert set(by_id) == set(truth), "exactly one result per good image"
    assert {doc["input"]["id"]: doc["reason"] for doc in rejections} == BAD_FILES
    correct = sum(by_id[name]["result"]["label"] == label for name, label in truth.items())
    accuracy = correct / len(truth)
    measured = load_bundle(DIGITS_INT8).manifest.raw["evaluation"]["variants"]["int8"]["accuracy"]
    assert accuracy == pytest.approx(measured, abs=0.01), f"accuracy {accuracy:.4f} vs manifest {measured:.4f}"
    events = [m.json() for m in sub.of_kind("events")]
    for doc in events:
        validate("events", doc)
    # the folder is read in name order, label by label: the predicted classes drift from the reference mix
    assert {(e["event"], e["details"]["statistic"]) for e in events} <= {
        ("drift_detected", "predicted_class"), ("drift_cleared", "predicted_class")}
    seqs = sorted(doc["seq"] for doc in results + rejections + events)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq has no gaps"
    assert len({doc["msg_id"] for doc in results + rejections + events}) == len(seqs)


def test_once_delivers_results_and_rejections(tmp_path: Path, broker: Mosquitto) -> None:
    truth = make_inputs(tmp_path / "in")
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port, drift="")
    sub = Subscriber(broker.port, "edge/test-pi/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(truth)} results" in proc.stdout and "3 rejected" in proc.stdout
    assert sub.wait_for(lambda s: len(s.of_kind("results")) >= len(truth) and len(s.of_kind("rejections")) >= 3)
    check_delivery(sub, truth)
    assert outbox_rows(tmp_path / "s") == 0
    statuses = [m.json() for m in sub.of_kind("status")]
    for doc in statuses:
        validate("status", doc)
    assert [d["state"] for d in statuses][-2:] == ["online", "offline"]
    assert statuses[-2]["runtime"]["name"] in ("ai_edge_litert", "tflite_runtime", "tensorflow")
    sub.close()

    # A second run finds everything checkpointed: nothing is reprocessed or republished.
    sub = Subscriber(broker.port, "edge/test-pi/#")
    again = run_cli("run", "--config", str(cfg), "--once")
    assert again.returncode == 0, again.stderr
    assert "0 results" in again.stdout and f"{len(truth) + 3} already done" in again.stdout
    assert sub.wait_for(lambda s: s.went_offline(), 30), "the second run's offline (its last message)"
    assert sub.of_kind("results") == [] and sub.of_kind("rejections") == []
    sub.close()


def test_broker_appears_after_everything_was_queued(tmp_path: Path) -> None:
    truth = make_inputs(tmp_path / "in")
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=port)
    offline = run_cli("run", "--config", str(cfg), "--once")
    assert offline.returncode == 0, offline.stderr
    assert f"{len(truth) + 3} still queued" in offline.stdout
    assert outbox_rows(tmp_path / "s") == len(truth) + 3

    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", port=port).start()
    try:
        sub = Subscriber(port, "edge/test-pi/#")
        online = run_cli("run", "--config", str(cfg), "--once")
        assert online.returncode == 0, online.stderr
        assert sub.wait_for(lambda s: len(s.of_kind("results")) >= len(truth) and len(s.of_kind("rejections")) >= 3)
        check_delivery(sub, truth)
        assert outbox_rows(tmp_path / "s") == 0
        sub.close()
    finally:
        broker.stop()


def test_watch_mode_survives_a_broker_outage_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The daemon runs as it would under systemd: files arrive while the broker is down; nothing is lost."""
    source = tmp_path / "in"
    source.mkdir()
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=source, state=tmp_path / "s", port=port)
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        images = sorted((DIGITS_TEST / "5").glob("*.png"))[:20]
        for i, image in enumerate(images[:10]):
            tmp = source / f".{i}.tmp"
            shutil.copy(image, tmp)
            tmp.rename(source / f"frame-{i:03d}.png")  # write-then-rename, as the docs tell writers to
        deadline = time.monotonic() + 30
        while outbox_rows_or_zero(tmp_path / "s") < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox_rows_or_zero(tmp_path / "s") == 10, "processed while the broker is down, all queued"

        (tmp_path / "broker").mkdir()
        broker = Mosquitto(tmp_path / "broker", port=port).start()
        try:
            sub = Subscriber(port, "edge/test-pi/#")
            for i, image in enumerate(images[10:], start=10):  # write-then-rename again: the test config's
                tmp = source / f".{i}.tmp"                          # settle_seconds = 0 would read a half-copy
                shutil.copy(image, tmp)
                tmp.rename(source / f"frame-{i:03d}.png")
            assert sub.wait_for(lambda s: len(s.of_kind("results")) >= 20, timeout=60), proc.stderr
            ids = sorted(m.json()["input"]["id"] for m in sub.of_kind("results"))
            assert ids == [f"frame-{i:03d}.png" for i in range(20)]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert sub.wait_for(lambda s: any(m.json()["state"] == "offline" for m in s.of_kind("status")), 10)
            assert outbox_rows(tmp_path / "s") == 0
            sub.close()
        finally:
            broker.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def outbox_rows_or_zero(state: Path) -> int:
    try:
        return outbox_rows(state) if (state / "outbox.db").exists() else 0
    except sqlite3.OperationalError:
        return 0


def test_retained_status_reports_runtime_and_model(tmp_path: Path, broker: Mosquitto) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(next((DIGITS_TEST / "1").glob("*.png")), tmp_path / "in" / "one.png")
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port)
    early = Subscriber(broker.port, "edge/test-pi/status")
    assert run_cli("run", "--config", str(cfg), "--once").returncode == 0
    assert early.wait_for(lambda s: len(s.of_kind("status")) == 2, 10)
    online, offline = (m.json() for m in early.of_kind("status"))
    for doc in (online, offline):
        validate("status", doc)
    assert (online["state"], offline["state"]) == ("online", "offline")
    # the leg's pinned runtime (tests/run.sh), else the first installed one in the documented order
    expected_runtime = os.environ.get("EDGE_INFER_EXPECT_RUNTIME") or next(
        name for name in ("ai_edge_litert", "tflite_runtime", "tensorflow") if importlib.util.find_spec(name))
    assert online["runtime"]["name"] == expected_runtime
    assert online["model"]["sha256"] == load_bundle(DIGITS_INT8).sha256 == offline["model"]["sha256"]
    early.close()

    late = Subscriber(broker.port, "edge/test-pi/status")  # a subscriber arriving later gets the retained state
    assert late.wait_for(lambda s: len(s.of_kind("status")) == 1, 5)
    assert late.of_kind("status")[0].retain
    assert late.of_kind("status")[0].json()["state"] == "offline"
    late.close()
