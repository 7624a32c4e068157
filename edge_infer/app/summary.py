"""What the daemon tells about itself: the run's counters, the `health` document, the start and stop lines."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_infer import __version__
from edge_infer.messages import Identity
from edge_infer.metrics import LatencyWindow, rss_bytes
from edge_infer.model import Model
from edge_infer.monitor import DriftMonitor
from edge_infer.outbox import Outbox
from edge_infer.outbox_items import stored_count
from edge_infer.pipeline import Outcome, Pipeline
from edge_infer.sinks import Sink
from edge_infer.sources import Sample, Source
from edge_infer.thermal import ThermalGovernor
from edge_infer.writer import OutboxWriter

log = logging.getLogger("edge_infer.app.daemon")  # one logger for the daemon's lines


@dataclass
class RunSummary:
    results: int = 0
    uncertain: int = 0
    suppressed: int = 0
    deferred: int = 0
    escalated: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    published: int = 0
    queued: int = 0
    dead_letters: int = 0

    @property
    def rejected(self) -> int:
        return sum(self.rejections.values())

    def count(self, sample: Sample, outcome: Outcome) -> None:
        """One committed input: its result's decision, or its rejection reason (and a log line)."""
        result, decision, verdict = outcome.result, outcome.decision, outcome.verdict
        if result is not None and decision is not None:
            self.results += 1
            self.uncertain += decision.status == "uncertain"
            self.suppressed += decision.action == "suppress"
            self.deferred += decision.action == "defer"
            self.escalated += decision.path == "escalated"
            log.debug("event=result input=%s task=%s status=%s path=%s action=%s", sample.input_id, result.task,
                      decision.status, decision.path, decision.action)
            return
        reason = verdict.reason or "unknown"
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        log.info("event=rejected input=%s reason=%s detail=%r", sample.input_id, reason, verdict.detail)


class Running(Protocol):
    """The parts of a running daemon these reports read."""

    summary: RunSummary
    started_at: float
    source: Source
    outbox: Outbox
    writer: OutboxWriter
    sink: Sink
    latency: LatencyWindow
    governor: ThermalGovernor
    updater: Any

    @property
    def model(self) -> Model: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def monitor(self) -> DriftMonitor: ...
    @property
    def identity(self) -> Identity: ...


def health_doc(d: Running, queues: dict[str, int]) -> dict[str, Any]:
    """The counters, drift state and scores a `health` message carries."""
    s = d.summary
    uptime = time.monotonic() - d.started_at
    runtime = d.model.engine.runtime
    return {
        "uptime_s": round(uptime, 1),
        "runtime": f"{runtime.name} {runtime.version}",
        "results": s.results, "uncertain": s.uncertain,
        "uncertain_rate": round(s.uncertain / s.results, 4) if s.results else 0.0,
        "results_per_s": round(s.results / uptime, 3) if uptime > 0 else 0.0,
        "paths": dict(d.pipeline.paths), "actions": dict(d.pipeline.actions),
        "rejections": dict(sorted(s.rejections.items())), "skipped": s.skipped,
        "dropped": getattr(d.source, "dropped", 0),
        **({"source": health.to_dict()} if (health := getattr(d.source, "health", None)) is not None else {}),
        **({"baseline": d.pipeline.baseline.to_dict()} if d.pipeline.baseline is not None else {}),
        **({"accelerator": watch.to_dict()} if (watch := getattr(d, "accelerator", None)) is not None else {}),
        "published": d.sink.published,
        "backlog": stored_count(d.outbox.path),
        "queues": queues,
        "latency": d.latency.summary(),
        "thermal": d.governor.to_dict(),
        "rss_bytes": rss_bytes(),
        "threads": {"writer": d.writer.is_alive(), "sink": d.sink.is_alive()},
        "problems": d.sink.problems(),
        "drift": d.monitor.to_dict(),
        **({"update": d.updater.to_dict()} if d.updater is not None else {}),
    }


def log_start(d: Running) -> None:
    """The `start` line (what runs, where it stores) and the `gate` line (the limits inputs are checked against)."""
    runtime, identity = d.model.engine.runtime, d.identity
    log.info("event=start version=%s device=%s boot_id=%s model=%s@%s sha256=%s runtime=%s/%s outbox=%s",
             __version__, identity.device_id, identity.boot_id, identity.model["name"], identity.model["version"],
             identity.model["sha256"][:12], runtime.name, runtime.version, d.outbox.path)
    pipeline = d.pipeline
    if pipeline.sensor_gate is not None:
        sl = pipeline.sensor_gate.limits
        log.info("event=gate kind=sensor limits=%s low=%s high=%s min_std=%s max_step=%s max_gap_factor=%s",
                 sl.source, sl.low, sl.high, sl.min_std, sl.max_step, sl.max_gap_factor)
    else:
        limits = pipeline.gate.limits
        log.info("event=gate quality=%s limits=%s %s", pipeline.gate.enabled, limits.source,
                 " ".join(f"{k}={v:.4g}" for k, v in limits.to_dict().items() if isinstance(v, float)))


def log_stop(d: Running) -> None:
    """The `stop` line: every counter of the run."""
    s = d.summary
    log.info("event=stop results=%d uncertain=%d escalated=%d suppressed=%d deferred=%d rejected=%d skipped=%d "
             "dropped=%d published=%d queued=%d uncommitted=%d rejections=%s drift=%s",
             s.results, s.uncertain, s.escalated, s.suppressed, s.deferred, s.rejected, s.skipped,
             getattr(d.source, "dropped", 0), s.published, s.queued, d.writer.lost_on_stop,
             ",".join(f"{k}:{v}" for k, v in sorted(s.rejections.items())) or "-",
             ",".join(sorted(d.monitor.alarmed)) or ("-" if d.monitor.enabled else "off"))
