"""Health and metrics: stage latencies and memory for the `health` message, and an optional Prometheus endpoint
(prometheus_client's exposition, bound to loopback unless configured otherwise). Thermal back-off is
`edge_infer.thermal`."""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


# stage-time histogram buckets (seconds): a Pi Zero's MobileNet invoke (~0.3 s) to a commit batch (~1 ms)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolated linearly between the two nearest (numpy's default) —
    without `np.percentile`, whose first call imports numpy.ma (0.3 s and a few MB on a small board)."""
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class LatencyWindow:
    """Each stage's durations: the last `size` for p50 / p95 on demand (the `health` message), and cumulative
    histogram buckets over the whole run (Prometheus). Thread-safe; an `add` costs a bisect and two adds."""

    def __init__(self, size: int = 1000) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._size = size
        self._counts: dict[str, list[int]] = {}  # per bucket (not cumulative), the last one is +Inf
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        window = self._windows.get(stage)
        if window is None:
            window = self._windows.setdefault(stage, deque(maxlen=self._size))
        window.append(seconds)
        slot = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            counts = self._counts.get(stage)
            if counts is None:
                counts = self._counts[stage] = [0] * (len(BUCKETS) + 1)
            counts[slot] += 1
            self._sums[stage] = self._sums.get(stage, 0.0) + seconds

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, window in list(self._windows.items()):
            values = sorted(window)
            if values:
                p50, p95 = percentile(values, 50), percentile(values, 95)
                out[stage] = {"p50_ms": round(p50 * 1000, 3), "p95_ms": round(p95 * 1000, 3), "n": len(values)}
        return out

    def histograms(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        """Per stage: cumulative (upper bound, count) pairs ending with "+Inf", and the sum of all durations."""
        with self._lock:
            snapshot = {stage: (list(counts), self._sums[stage]) for stage, counts in self._counts.items()}
        out = {}
        for stage, (counts, total) in snapshot.items():
            running = list(itertools.accumulate(counts))
            out[stage] = ([(repr(b), c) for b, c in zip(BUCKETS, running, strict=False)] + [("+Inf", running[-1])],
                          total)
        return out


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _family(kind: Any, name: str, doc: str, values: dict[str, float] | float, label: str | None = None) -> Any:
    """A counter or gauge family `edge_infer_<name>`: one value, or one per `label` value."""
    family = kind(f"edge_infer_{name}", doc, labels=[label] if label else None)
    for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
        family.add_metric([key] if label else [], value)
    return family


class HealthCollector:
    """A prometheus_client collector over the daemon's own counters: each scrape reads the `health` snapshot
    and the stage histograms, so the counts have one source (the run's summary) and cost nothing between
    scrapes. Names follow Prometheus's conventions: `_total` counters with labels, `_seconds` histograms."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], latency: LatencyWindow) -> None:
        self.snapshot, self.latency = snapshot, latency

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        h = self.snapshot()
        counter, gauge = functools.partial(_family, CounterMetricFamily), functools.partial(_family, GaugeMetricFamily)
        model = h.get("model_info", {})
        info = GaugeMetricFamily("edge_infer_model_info", "The model and runtime serving (always 1).",
                                 labels=["model", "version", "sha256", "runtime"])
        info.add_metric([model.get("name", ""), model.get("version", ""), model.get("sha256", "")[:12],
                         h.get("runtime", "")], 1)
        yield info
        yield counter("results", "Results decided, by the model that decided them (path).", h.get("paths", {}),
                      "path")
        yield counter("uncertain_results", "Results below their label's threshold.", h["uncertain"])
        yield counter("result_actions", "Results published, suppressed or deferred.", h.get("actions", {}), "action")
        yield counter("rejections", "Inputs rejected, by reason.", h.get("rejections", {}), "reason")
        yield counter("dropped_frames", "Live frames dropped because the pipeline was busy.", h.get("dropped", 0))
        yield counter("published_messages", "Messages the broker acknowledged.", h.get("published", 0))
        yield gauge("outbox_backlog_messages", "Messages stored, not yet acknowledged.", h.get("backlog", 0))
        yield gauge("queue_depth", "Items waiting between stages.", h.get("queues", {}), "queue")
        stages = HistogramMetricFamily("edge_infer_stage_duration_seconds", "Time each input spent in each stage.",
                                       labels=["stage"])
        for stage, (buckets, total) in sorted(self.latency.histograms().items()):
            stages.add_metric([stage], buckets, total)
        yield stages
        yield from self._conditions(h, gauge, counter)

    @staticmethod
    def _conditions(h: dict[str, Any], gauge: Callable[..., Any], counter: Callable[..., Any]) -> Iterator[Any]:
        drift = h.get("drift", {})
        scores = drift.get("scores", {})
        yield gauge("drift_psi", "Population stability index of each monitored statistic.", scores, "statistic")
        yield gauge("drift_alarm", "1 while a statistic is in drift alarm.",
                    {k: 1.0 if k in drift.get("alarmed", []) else 0.0 for k in scores}, "statistic")
        thermal = h.get("thermal", {})
        if thermal.get("temperature_c") is not None:
            yield gauge("temperature_celsius", "SoC temperature.", thermal["temperature_c"])
        yield gauge("thermal_backoff_level", "0: full speed; each level halves the duty cycle.",
                    thermal.get("level", 0))
        source = h.get("source") or {"up": True, "losses": 0}  # a folder or a pipe is never "lost"
        yield gauge("source_up", "1 while the source delivers; 0 while a live source is lost and retried.",
                    1.0 if source["up"] else 0.0)
        yield counter("source_losses", "Times the live source was lost.", source["losses"])
        if (baseline := h.get("baseline")) is not None:
            active = set(baseline.get("conditions", []))
            yield gauge("scene_condition", "1 while the camera's baseline holds this condition.",
                        {c: 1.0 if c in active else 0.0 for c in ("fogged", "obstructed", "defocused",
                                                                   "scene_changed")}, "condition")
        yield gauge("accelerator_lost", "1 while a configured accelerator is lost and the CPU runs the model.",
                    1.0 if (h.get("accelerator") or {}).get("lost") else 0.0)


def render_prometheus(collector: HealthCollector) -> tuple[bytes, str]:
    """The scrape body and its content type: the collector plus the standard `process_*` and `python_info`."""
    from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


CONNECTION_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 8


class BoundedHTTPServer(ThreadingHTTPServer):
    """At most `MAX_CONNECTIONS` connections served at once (a thread each); more are closed at once."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class MetricsServer:
    """`GET /metrics` on `host:port` in its own thread; `collector` reads the daemon's counters on each scrape
    (prometheus_client is imported only when metrics are on)."""

    def __init__(self, host: str, port: int, collector: HealthCollector) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body, content_type = render_prometheus(collector)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:  # scrapes are not log events
                return

        Handler.timeout = CONNECTION_TIMEOUT_S  # a client that sends nothing is dropped after this
        self.server = BoundedHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
