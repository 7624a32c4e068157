"""Health and metrics through the public surface: the Prometheus endpoint parsed by the client library's own
parser, `health` on MQTT with latencies and board state, and thermal back-off driven by a fake thermal zone."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge_infer.thermal import ThermalGovernor, read_throttled
from tests.conftest import DIGITS_INT8, REPO, write_config
from tests.device.faults import make_frames, wait_until
from tests.helpers.broker import Mosquitto, free_port
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber


def _daemon(tmp_path: Path, broker: Mosquitto, extra: str) -> tuple[Path, subprocess.Popen[str]]:
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port)
    cfg.write_text(cfg.read_text() + extra)
    (tmp_path / "in").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return cfg, proc


def _scrape(port: int) -> dict:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(body)}


def test_prometheus_scrape_parses_and_counts_what_happened(tmp_path: Path, broker: Mosquitto) -> None:
    """Parsed by prometheus_client's own parser: `_total` counters with labels, stage histograms whose `_count`
    grows by exactly the inputs that went through, the standard `process_*` metrics, no hand-made duplicates."""
    zone = tmp_path / "temp"
    zone.write_text("51234\n")
    port = free_port()
    _, proc = _daemon(tmp_path, broker, f'\n[metrics]\nport = {port}\n\n[thermal]\nzone = "{zone}"\n'
                                        'check_interval = 0.1\n')
    try:
        make_frames(tmp_path / "in", 30)
        (tmp_path / "in" / "empty.png").write_bytes(b"")
        assert wait_until(lambda: _results(port) >= 30, 60), proc.stderr
        families = _scrape(port)
        value = {name: f.samples[0].value for name, f in families.items() if f.samples}
        assert families["edge_infer_results"].type == "counter"
        assert sum(s.value for s in families["edge_infer_results"].samples if s.name.endswith("_total")) == 30
        rejections = {s.labels["reason"]: s.value for s in families["edge_infer_rejections"].samples
                      if s.name.endswith("_total")}
        assert rejections == {"empty_file": 1.0}
        inference = _count(families, "inference")
        assert inference >= 30 and families["edge_infer_stage_duration_seconds"].type == "histogram"
        assert {"decode", "inference", "commit"} <= {s.labels["stage"] for s in
                                                      families["edge_infer_stage_duration_seconds"].samples}
        make_frames(tmp_path / "in", 7, start=30)
        assert wait_until(lambda: _results(port) >= 37, 60)
        assert _count(_scrape(port), "inference") == inference + 7  # every input, not a sliding window
        assert value["edge_infer_temperature_celsius"] == 51.234
        assert value["edge_infer_thermal_backoff_level"] == 0
        assert value["process_resident_memory_bytes"] > 10_000_000 and value["process_start_time_seconds"] > 0
        assert not {"edge_infer_resident_memory_bytes", "edge_infer_uptime_seconds",
                    "edge_infer_results_by_path", "edge_infer_stage_latency_seconds"} & set(families)
        info = families["edge_infer_model_info"].samples[0].labels
        assert info["model"] == "digits" and info["runtime"]
    finally:
        proc.terminate()
        proc.wait(30)


def _count(families: dict, stage: str) -> float:
    return next(s.value for s in families["edge_infer_stage_duration_seconds"].samples
                if s.name.endswith("_count") and s.labels["stage"] == stage)


def _results(port: int) -> float:
    try:
        return sum(s.value for s in _scrape(port)["edge_infer_results"].samples if s.name.endswith("_total"))
    except (OSError, KeyError, IndexError):
        return 0.0


def test_thermal_backoff_steps_down_when_hot_and_recovers_when_cool(tmp_path: Path, broker: Mosquitto) -> None:
    zone = tmp_path / "temp"
    zone.write_text("45000\n")
    sub = Subscriber(broker.port, "edge/test-pi/#")
    _, proc = _daemon(tmp_path, broker, f'\n[thermal]\nzone = "{zone}"\nmax_temp = 80\nresume_temp = 70\n'
                                        'check_interval = 0.05\n\n[health]\ninterval = 0.2\n')
    try:
        make_frames(tmp_path / "in", 10)
        assert wait_until(lambda: len(sub.of_kind("results")) >= 10, 60), proc.stderr
        zone.write_text("86500\n")  # the SoC heats up
        make_frames(tmp_path / "in", 60, start=10)
        assert wait_until(lambda: any(m.json()["event"] == "thermal_backoff" for m in sub.of_kind("events")), 60)
        assert wait_until(lambda: _last_health(sub)["thermal"]["level"] >= 1, 30)
        hot = _last_health(sub)
        validate("health", hot)
        assert hot["thermal"]["temperature_c"] == 86.5 and hot["thermal"]["duty"] < 1.0
        zone.write_text("52000\n")  # and cools down
        make_frames(tmp_path / "in", 20, start=70)
        assert wait_until(lambda: any(m.json()["event"] == "thermal_recovered" and m.json()["details"]["level"] == 0
                                      for m in sub.of_kind("events")), 60)
        assert wait_until(lambda: _last_health(sub)["thermal"]["level"] == 0, 30)
        assert wait_until(lambda: len(sub.of_kind("results")) >= 90, 60), "nothing is lost by slowing down"
        events = [m.json() for m in sub.of_kind("events")]
        for doc in events:
            validate("events", doc)
        backoffs = [e["details"]["level"] for e in events if e["event"] == "thermal_backoff"]
        recoveries = [e["details"]["level"] for e in events if e["event"] == "thermal_recovered"]
        assert backoffs == list(range(1, len(backoffs) + 1)), "one step at a time, up"
        assert recoveries == list(range(len(backoffs) - 1, -1, -1)), "and down"
        health = _last_health(sub)
        assert {"decode", "inference", "commit"} <= set(health["latency"]) and health["rss_bytes"] > 0
    finally:
        proc.terminate()
        proc.wait(30)


def _last_health(sub: Subscriber) -> dict:
    docs = sub.of_kind("health")
    return docs[-1].json() if docs else {"thermal": {"level": -1}}


def test_governor_duty_cycle_and_pi_throttle_flags(tmp_path: Path) -> None:
    zone, flags = tmp_path / "temp", tmp_path / "throttled"
    zone.write_text("60000")
    flags.write_text("0x50000")  # throttled and under-voltage *since boot*, nothing now
    clock, slept = [0.0], []
    gov = ThermalGovernor(str(zone), str(flags), 80, 70, check_s=1.0, clock=lambda: clock[0], sleep=slept.append)
    gov.pace(0.1)
    assert gov.level == 0 and slept == []
    flags.write_text("0x4")  # throttling now: hot even though the zone reads 60 °C
    clock[0] = 2.0
    gov.pace(0.1)
    assert gov.level == 1 and slept == [0.1]  # duty 0.5: rest as long as the work took
    clock[0] = 4.0
    gov.pace(0.1)
    assert gov.level == 2 and abs(slept[-1] - 0.3) < 1e-9  # duty 0.25: three times as long
    assert read_throttled(str(flags))["now"] == ["throttled"]
    flags.write_text("0x0")
    clock[0] = 6.0
    gov.pace(0.1)
    assert gov.level == 1  # cool again: one step at a time


def test_a_metrics_port_in_use_is_a_one_line_error(tmp_path: Path, broker: Mosquitto) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        _, proc = _daemon(tmp_path, broker, f"\n[metrics]\nport = {taken.getsockname()[1]}\n")
        assert proc.wait(60) == 2
        err = proc.stderr.read() if proc.stderr else ""
        assert "[metrics]: cannot listen on 127.0.0.1" in err and "Traceback" not in err
    finally:
        taken.close()


def test_latency_percentiles_are_numpys_without_importing_numpy_ma() -> None:
    import numpy as np
    import pytest

    from edge_infer.metrics import percentile

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 1000):
        values = sorted(rng.exponential(0.01, n).tolist())
        for q in (0, 50, 95, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-15)
    code = ("import sys; from edge_infer.metrics import LatencyWindow; w = LatencyWindow()\n"
            "for i in range(50): w.add('inference', i / 1000)\n"
            "assert w.summary()['inference']['n'] == 50; print('numpy.ma' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
