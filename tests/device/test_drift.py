"""Drift on real held-out digits: an in-distribution stream raises nothing; darker, blurred or one-class
streams raise the right alarm within a few hundred inputs — through the pipeline, and end to end on MQTT."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from edge_infer.monitor import DriftMonitor, Statistic, psi
from tests.benchmarks.drift import HELD_OUT, SHIFTS, run_stream
from tests.conftest import DIGITS_INT8, run_cli, write_config
from tests.helpers.broker import Mosquitto
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    ref = [0.1] * 10
    assert psi(ref, ref) == pytest.approx(0.0)
    shifts = [psi(ref, [0.1 - d] * 5 + [0.1 + d] * 5) for d in (0.01, 0.03, 0.06)]
    assert shifts == sorted(shifts) and shifts[0] < 0.1 < shifts[-1]


def test_one_event_per_state_change_with_hysteresis() -> None:
    stat = Statistic("level", "input", (0.5, 0.5), (0.0, 1.0, 2.0))
    monitor = DriftMonitor([stat], window=40, every=10, alarm=0.25, clear=0.1)
    events = []
    mixed = [0.5, 1.5] * 50  # half in each bin, as the reference has it
    for value in mixed + [1.5] * 200 + mixed * 3:  # in, shifted, back again
        events += [c.event for c in monitor.observe({"level": value})]
    assert events == ["drift_detected", "drift_cleared"]


def test_an_in_distribution_stream_raises_no_alarm() -> None:
    report = run_stream("in-distribution", None, None, 3000, 0)
    assert report.false_alarms == 0 and report.rejected == 0


@pytest.mark.parametrize(("shift", "expected"), [
    ("darker (brightness ×0.75)", "brightness"),
    ("blurred (Gaussian σ 0.8 px)", "sharpness"),
    ("skewed (only the digit 1)", "predicted_class"),
])
def test_a_shifted_stream_raises_the_right_alarm_within_a_few_hundred_inputs(shift: str, expected: str) -> None:
    transform, only = SHIFTS[shift]
    report = run_stream(shift, transform, only, 600, 500)
    assert report.false_alarms == 0
    assert report.delay is not None and report.delay <= 300, report
    assert expected in report.alarmed, report


def test_drift_is_published_on_events_and_in_health(tmp_path: Path, broker: Mosquitto) -> None:
    """The daemon's defaults, a folder of darkened held-out digits: one drift_detected event per statistic that
    moved, and the health snapshot says so."""
    folder = tmp_path / "in"
    folder.mkdir()
    files = sorted(HELD_OUT.glob("*/*.png"))
    for i in range(600):  # interleave the classes, as a camera would see them
        path = files[(i * 37) % len(files)]
        buf = io.BytesIO()
        ImageEnhance.Brightness(Image.open(path)).enhance(0.7).save(buf, "PNG")
        (folder / f"{i:04d}.png").write_bytes(buf.getvalue())
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=folder, state=tmp_path / "s",
                       port=broker.port, drift="window = 200\nevery = 20")
    sub = Subscriber(broker.port, "edge/test-pi/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda s: len(s.of_kind("results")) >= 600 and s.of_kind("health"))
    events = [m.json() for m in sub.of_kind("events")]
    for doc in events:
        validate("events", doc)
    moved = {e["details"]["statistic"]: e["details"] for e in events if e["event"] == "drift_detected"}
    assert "brightness" in moved and len(events) == len(moved), [e["event"] for e in events]
    assert moved["brightness"]["live_mean"] < 0.8 * moved["brightness"]["reference_mean"]
    health = sub.of_kind("health")[-1].json()
    validate("health", health)
    assert health["drift"]["state"] == "drift" and "brightness" in health["drift"]["alarmed"]
    assert health["results"] == 600
    assert "drift=" in proc.stderr and "brightness" in proc.stderr.split("event=stop", 1)[1]
