"""The pipelined path (decode/preprocess in one thread, inference on one or several interpreters, commits in input
order) gives exactly the sequential path's results in the same order, and a stalled stage holds the others
back."""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from PIL import Image

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from tests.conftest import DIGITS_INT8, REPO, run_cli, write_config
from tests.device.faults import make_frames, wait_until
from tests.device.test_daemon_mqtt import make_inputs
from tests.helpers.broker import Mosquitto, free_port
from tests.helpers.subscriber import Subscriber


def outbox_docs(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM messages ORDER BY seq")]


def comparable(doc: dict) -> tuple:
    return (doc["seq"], doc["msg_id"], doc["input"]["id"], doc.get("result"), doc.get("reason"), doc.get("status"))


def test_pipelined_equals_sequential(tmp_path: Path) -> None:
    make_inputs(tmp_path / "in")
    frame = Image.open(next((tmp_path / "in").glob("7_*.png"))).convert("RGB").resize((640, 480))
    buf = io.BytesIO()
    frame.save(buf, "JPEG", quality=90)  # a camera-sized JPEG: decoded at reduced scale (draft) on both paths
    (tmp_path / "in" / "camera.jpg").write_bytes(buf.getvalue())
    port = free_port()
    docs = {}
    runs = {"sequential": 'mode = "sequential"', **{f"pipelined-{n}": f"interpreters = {n}" for n in (1, 2, 3)}}
    for name, setting in runs.items():
        cfg = write_config(tmp_path / f"{name}.toml", bundle=DIGITS_INT8, source=tmp_path / "in",
                           state=tmp_path / name, port=port)
        cfg.write_text(cfg.read_text() + f"\n[pipeline]\n{setting}\n")
        proc = run_cli("run", "--config", str(cfg), "--once")
        assert proc.returncode == 0, proc.stderr
        if name != "sequential":
            assert f"interpreters={name[-1]} " in proc.stderr  # the pool the run used
        docs[name] = outbox_docs(tmp_path / name / "outbox.db")
    for name in runs:  # any number of interpreters: the same results, in the same order
        assert len(docs[name]) == 454, name
        assert [comparable(d) for d in docs[name]] == [comparable(d) for d in docs["sequential"]], name
    camera = next(d for d in docs["pipelined-3"] if d["input"]["id"] == "camera.jpg")
    assert camera["result"]["label"] == "7"


def test_a_stalled_outbox_holds_the_pipeline_back(tmp_path: Path) -> None:
    """Another process holds the outbox's write lock: commits stall, the writer's and the hand-off queues
    fill, and the source stops being read — memory does not grow with the backlog. Then it all goes through."""
    make_frames(tmp_path / "in", 300)
    cfg_path = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                            port=free_port(), outbox="max_batch = 16")
    cfg_path.write_text(cfg_path.read_text() + "\n[pipeline]\ninterpreters = 2\n")  # hand-off depth 4 anywhere
    daemon = Daemon(load_config(cfg_path))
    blocker = sqlite3.connect(tmp_path / "s" / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # e.g. a long-running backup or a person poking at it with sqlite3
    runner = threading.Thread(target=daemon.run, kwargs={"once": True})
    runner.start()
    try:  # first the witness that the pipeline filled up behind the stalled commit, then the bound
        assert wait_until(lambda: daemon.health()["queues"] == {"handoff": 4, "writer": 16}, 60), daemon.health()
        # writer queue (16) + the batch it is trying to commit (16) + hand-off (4) + one in each thread
        assert 16 + 4 <= daemon.pulled <= 16 + 16 + 4 + 3, daemon.pulled
        assert daemon.writer.committed == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_until(lambda: not runner.is_alive(), 60)
    assert daemon.pulled == 300 and daemon.summary.results == 300
    assert len(outbox_docs(tmp_path / "s" / "outbox.db")) == 300


def test_bench_command_measures_every_stage(tmp_path: Path) -> None:
    """Every stage and ratio, and the end-to-end run: every result published to the given broker (a subscriber
    there sees them, under the bench's own topic prefix) and acknowledged."""
    demo = REPO / "device_configs" / "demo.toml"
    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port, "#")
    try:
        proc = run_cli("bench", "--config", str(demo), "--frames", "30", "--rounds", "1", "--json",
                       "--broker", f"127.0.0.1:{broker.port}", timeout=300)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        # 30 frames, two of them the gate refuses: 28 results, all from the one delivered run
        assert wait_until(lambda: len(subscriber.of_kind("results")) >= 28, 30)
        results = subscriber.of_kind("results")
        assert len(results) == 28 and all(m.topic.startswith("edge-infer-bench/") for m in subscriber.all())
        assert not any(m.topic.startswith("homeassistant/") for m in subscriber.all())
    finally:
        subscriber.close()
        broker.stop()
    cores = report["machine"]["usable_cores"]
    assert set(report["stages"]) == {"invoke", "decode_preprocess", "decode_gate", "quality_gate", "all_cores",
                                     "pipeline_pipelined", "pipeline_sequential", "pipeline_delivered",
                                     "naive_loop", *{f"naive_loop_{n}" for n in (1, cores)}}
    ratios, stages = report["ratios"], report["stages"]
    assert ratios["delivered_vs_naive"] == pytest.approx(
        stages["pipeline_delivered"]["per_s"] / stages["naive_loop"]["per_s"], rel=0.01, abs=0.001)
    assert ratios["pipeline_vs_all_cores"] == pytest.approx(
        stages["pipeline_pipelined"]["per_s"] / stages["all_cores"]["per_s"], rel=0.01, abs=0.001)
    naive = report["stages"]["naive_loop"]  # the faster of the naive loop at 1 thread and at one per core
    assert naive["per_s"] == max(report["stages"][f"naive_loop_{n}"]["per_s"] for n in (1, cores))
    limit = cores / ((report["stages"]["decode_preprocess"]["ms"] + report["stages"]["invoke"]["ms"]) / 1000)
    assert report["ratios"]["pipeline_vs_cpu_limit"] == pytest.approx(
        report["stages"]["pipeline_pipelined"]["per_s"] / limit, rel=0.01, abs=0.001)  # rounded to 3 places
    assert report["interpreters"] == min(cores, 4) and report["rss_per_extra_interpreter_mb"] >= 0
    assert report["quality_gate"]["limits"]["source"] == "reference"  # the demo bundle carries its reference
    # the demo folder holds two frames the gate must refuse: out-of-focus.png and lights-off.png
    assert report["quality_gate"]["rejected"] == 2 and 0 < report["ratios"]["quality_gate_share_of_frame"] < 10
    assert all(stage["per_s"] > 0 for stage in report["stages"].values())
    assert report["frames"] == 30 and report["frame_size"] == "32x32 PNG"
    assert 0 < report["startup_to_first_result_s"] < 60 and report["rss_ratio"] > 0.5
    # every timed stage says what it cost: CPU per frame, cores kept busy, the hypervisor's steal (Linux counts it)
    for name, stage in stages.items():
        if name != "quality_gate":  # summed from inside the front half: no span of its own
            assert stage["cpu_ms"] > 0 and stage["cores_busy"] > 0 and stage["steal_pct"] >= 0, name
    assert all(stages[name]["cores_busy"] <= 1.2 for name in ("invoke", "decode_preprocess", "decode_gate"))
    assert all(ratios[f"{name}_vs_cpu_limit_given"] > 0 for name in ("pipeline", "all_cores", "delivered"))
    # the rounds' spread of each headline ratio: with one round, lowest = highest = the ratio itself
    assert set(report["spread"]) == {"pipeline_vs_naive", "delivered_vs_naive", "pipeline_vs_cpu_limit",
                                     "delivered_vs_cpu_limit"}
    for name, (low, high) in report["spread"].items():
        assert low == high == pytest.approx(ratios[name], rel=0.01, abs=0.002), name


def test_bench_refuses_a_broker_that_is_not_host_and_port() -> None:
    demo = REPO / "device_configs" / "demo.toml"
    proc = run_cli("bench", "--config", str(demo), "--broker", "localhost")
    assert proc.returncode == 2 and "--broker 'localhost': expected HOST:PORT" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_without_images_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    proc = run_cli("bench", "--config", str(cfg))
    assert proc.returncode == 2 and "no decodable images to benchmark with" in proc.stderr
