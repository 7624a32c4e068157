"""Delivery benchmark: durable enqueue rate and backlog drain rate, each against a baseline measured in the
same run on the same machine (so the ratios mean something on a noisy host).

    .venvs/litert/bin/python tests/benchmarks/bench_delivery.py [--messages 20000]

- enqueue: results committed to the outbox at durability=full through the group-commit writer, vs one
  transaction (one fsync) per result — what a naive durable queue does.
- drain:   a backlog published at QoS 1 to a local mosquitto by the publisher (windowed, acked rows deleted
  from SQLite), vs a naive loop that publishes and waits for each PUBACK in turn (no storage at all).
- latency: at a camera's pace (a result committed every 200 ms), from the commit until a subscriber has it, vs
  the same publisher waiting its idle 50 ms between looks at the outbox (`active_s = 0`, as before session 14).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_infer.outbox import Outbox, Pending
from edge_infer.sinks.mqtt import Publisher
from edge_infer.sinks.mqtt_settings import MqttSettings
from edge_infer.writer import OutboxWriter
from tests.benchmarks.verdict import figure
from tests.helpers.broker import Mosquitto

PAYLOAD = (b'{"v":1,"device_id":"bench","result":{"label":"7","confidence":0.99}' + b" " * 520 + b"}")[:600]


def pending(i: int) -> Pending:
    return Pending("results", f"{i:032x}", lambda seq: PAYLOAD, ("bench", f"input-{i}"))


def enqueue_grouped(path: Path, n: int) -> float:
    box = Outbox(path, "full", primary=True)
    writer = OutboxWriter(box, window_s=0.02, max_batch=256, on_committed=lambda: None, on_problem=lambda _: None)
    writer.start()
    started = time.perf_counter()
    for i in range(n):
        writer.put(pending(i))
    writer.flush()
    elapsed = time.perf_counter() - started
    writer.stop()
    box.close()
    return n / elapsed


def enqueue_one_by_one(path: Path, n: int) -> float:
    box = Outbox(path, "full", primary=True)
    started = time.perf_counter()
    for i in range(n):
        box.commit_batch([pending(i)])
    elapsed = time.perf_counter() - started
    box.close()
    return n / elapsed


def drain_publisher(path: Path, n: int, port: int) -> float:
    box = Outbox(path, "full", primary=True)
    for start in range(0, n, 1000):
        box.commit_batch([pending(i) for i in range(start, min(n, start + 1000))])
    settings = MqttSettings(hosts=[("127.0.0.1", port)], topic_prefix="bench", device_id="pub",
                            client_id="bench-publisher", max_inflight=64)
    # the sink's own connection, as the daemon opens it (`compose.outbox_opener(receipts=True)`): no fsync per
    # batch of acknowledgements
    publisher = Publisher(settings, lambda: Outbox(path, "normal"), birth=lambda _p: b"{}", will=lambda: b"{}")
    started = time.perf_counter()
    publisher.start()
    while box.backlog():
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    publisher.stop()
    box.close()
    return n / elapsed


def drain_naive(n: int, port: int) -> float:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    for _ in range(n):
        client.publish("bench/naive/results", PAYLOAD, qos=1).wait_for_publish()
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return n / elapsed


def latency(path: Path, port: int, active_s: float, n: int = 30) -> list[float]:
    """Milliseconds from each commit (and the writer's `notify`) until a subscriber received it, sorted."""
    box = Outbox(path, "full", primary=True)
    settings = MqttSettings(hosts=[("127.0.0.1", port)], topic_prefix="bench", device_id="lat",
                            client_id=f"bench-latency-{active_s}")
    publisher = Publisher(settings, lambda: Outbox(path, "normal"), birth=lambda _p: b"{}", will=lambda: b"{}")
    publisher.active_s = active_s
    received: dict[bytes, float] = {}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{active_s}")
    sub.on_message = lambda _c, _u, msg: received.setdefault(msg.payload, time.monotonic())
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/lat/results", qos=1)
    sub.loop_start()
    publisher.start()
    publisher.connected.wait(10)
    committed: dict[bytes, float] = {}
    for i in range(n):
        time.sleep(0.2)
        payload = b'{"n":%d}' % i
        box.commit("results", f"{i:032x}", lambda _seq, p=payload: p)
        committed[payload] = time.monotonic()
        publisher.notify()
    deadline = time.monotonic() + 10
    while len(received) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    publisher.stop()
    sub.loop_stop()
    box.close()
    return sorted(1000.0 * (received[p] - t) for p, t in committed.items() if p in received)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="bench-delivery-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        grouped = enqueue_grouped(root / "a.db", n)
        single = enqueue_one_by_one(root / "b.db", max(500, n // 20))
        broker = Mosquitto(root / "broker").start()
        try:
            drained = drain_publisher(root / "c.db", n, broker.port)
            naive = drain_naive(max(500, n // 10), broker.port)
            quick = latency(root / "d.db", broker.port, 1.0)
            idle = latency(root / "e.db", broker.port, 0.0)
        finally:
            broker.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"disk under {tempfile.gettempdir() if not os.environ.get('BENCH_DIR') else os.environ['BENCH_DIR']}")
    print(f"{'measure':<44} {'msg/s':>10}")
    print(f"{'durable enqueue, group commit (full)':<44} {grouped:>10,.0f}")
    print(f"{'  baseline: one transaction per result':<44} {single:>10,.0f}   ratio {grouped / single:.1f}x")
    print(f"{'backlog drain, QoS 1, acked rows deleted':<44} {drained:>10,.0f}")
    print(f"{'  baseline: publish + wait for PUBACK each':<44} {naive:>10,.0f}   ratio {drained / naive:.1f}x")
    for name, ms in (("latency at 5 results/s, commit → subscriber", quick), ("  baseline: 50 ms idle wait", idle)):
        print(f"{name:<44} median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * len(ms))]:.1f} ms "
              f"({len(ms)} messages)")
    figure("delivery: group commit / one transaction per result", grouped / single, 2.0, at_least=True,
           baseline=f"{single:,.0f} msg/s")
    figure("delivery: durable enqueue", grouped, 5000, at_least=True, unit=" msg/s")
    figure("delivery: pipelined drain / publish-and-wait", drained / naive, 1.2, at_least=True,
           baseline=f"{naive:,.0f} msg/s")
    figure("delivery: drain at QoS 1", drained, 3000, at_least=True, unit=" msg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
