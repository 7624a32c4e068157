"""Health and metrics: stage latencies and memory for the `health` message, and an optional Prometheus endpoint
(text format 0.0.4, bound to loopback unless configured otherwise). Thermal back-off is `edge_infer.thermal`."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class LatencyWindow:
    """The last `size` durations of each stage; p50 / p95 on demand (thread-safe appends)."""

    def __init__(self, size: int = 1000) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._size = size

    def add(self, stage: str, seconds: float) -> None:
        window = self._windows.get(stage)
        if window is None:
            window = self._windows.setdefault(stage, deque(maxlen=self._size))
        window.append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, window in list(self._windows.items()):
            values = np.fromiter(list(window), dtype=np.float64)
            if values.size:
                p50, p95 = np.percentile(values, [50, 95])
                out[stage] = {"p50_ms": round(float(p50) * 1000, 3), "p95_ms": round(float(p95) * 1000, 3),
                              "n": int(values.size)}
        return out


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _labels(**labels: Any) -> str:
    def esc(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}" if labels else ""


def render_prometheus(health: dict[str, Any]) -> str:
    """The `health` snapshot in Prometheus text format."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        lines.append(f"# HELP edge_infer_{name} {help_text}")
        lines.append(f"# TYPE edge_infer_{name} {kind}")
        for labels, value in samples:
            lines.append(f"edge_infer_{name}{_labels(**labels)} {float(value)!r}")

    model = health.get("model_info", {})
    metric("info", "gauge", "Model and runtime of the running daemon.",
           [({"model": model.get("name", ""), "version": model.get("version", ""),
              "sha256": model.get("sha256", "")[:12], "runtime": health.get("runtime", "")}, 1)])
    metric("uptime_seconds", "gauge", "Seconds since the daemon started.", [({}, health["uptime_s"])])
    metric("results_total", "counter", "Results decided.", [({}, health["results"])])
    metric("uncertain_total", "counter", "Results below their label's threshold.", [({}, health["uncertain"])])
    metric("results_by_path_total", "counter", "Results by the model that decided them.",
           [({"path": k}, v) for k, v in health.get("paths", {}).items()])
    metric("results_by_action_total", "counter", "Results published, suppressed or deferred.",
           [({"action": k}, v) for k, v in health.get("actions", {}).items()])
    metric("rejections_total", "counter", "Inputs rejected, by reason.",
           [({"reason": k}, v) for k, v in health.get("rejections", {}).items()])
    metric("dropped_total", "counter", "Live frames dropped because the pipeline was busy.",
           [({}, health.get("dropped", 0))])
    metric("published_total", "counter", "Messages acknowledged by the broker.", [({}, health.get("published", 0))])
    metric("outbox_backlog", "gauge", "Messages stored, not yet acknowledged.", [({}, health.get("backlog", 0))])
    metric("queue_depth", "gauge", "Items waiting between stages.",
           [({"queue": k}, v) for k, v in health.get("queues", {}).items()])
    latency = health.get("latency", {})
    lines.append("# HELP edge_infer_stage_latency_seconds Per-stage time over the last 1000 inputs.")
    lines.append("# TYPE edge_infer_stage_latency_seconds summary")
    for stage, q in latency.items():
        for quantile, key in (("0.5", "p50_ms"), ("0.95", "p95_ms")):
            lines.append(f"edge_infer_stage_latency_seconds{_labels(stage=stage, quantile=quantile)} "
                         f"{float(q[key]) / 1000.0!r}")
        lines.append(f"edge_infer_stage_latency_seconds_count{_labels(stage=stage)} {float(q['n'])!r}")
    drift = health.get("drift", {})
    metric("drift_psi", "gauge", "Population stability index of each monitored statistic.",
           [({"statistic": k}, v) for k, v in drift.get("scores", {}).items()])
    metric("drift_alarm", "gauge", "1 while a statistic is in drift alarm.",
           [({"statistic": k}, 1.0 if k in drift.get("alarmed", []) else 0.0) for k in drift.get("scores", {})])
    thermal = health.get("thermal", {})
    if thermal.get("temperature_c") is not None:
        metric("temperature_celsius", "gauge", "SoC temperature.", [({}, thermal["temperature_c"])])
    metric("thermal_backoff_level", "gauge", "0: full speed; each level halves the duty cycle.",
           [({}, thermal.get("level", 0))])
    metric("resident_memory_bytes", "gauge", "Resident set size.", [({}, health.get("rss_bytes", 0))])
    return "\n".join(lines) + "\n"


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
    """`GET /metrics` on `host:port` in its own thread; `snapshot` builds the health dict on each scrape."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = render_prometheus(snapshot()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
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
