"""Wiring: config → bundle, runtime, source, pipeline, outbox and publisher; signals; the main loop."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from edge_infer import __version__
from edge_infer.bundle import BundleError
from edge_infer.capture import review_store
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.decide import Thresholds
from edge_infer.gates.quality import gate_from_config
from edge_infer.gates.sensor import SensorGate, sensor_gate_from_config
from edge_infer.homeassistant import discovery_messages
from edge_infer.manifest import Manifest, SensorInputSpec
from edge_infer.messages import (
    Identity,
    event_payload,
    health_payload,
    message_id,
    rejection_payload,
    result_payload,
    status_payload,
)
from edge_infer.metrics import LatencyWindow, MetricsServer, ThermalGovernor, rss_bytes
from edge_infer.model import model_from_config
from edge_infer.monitor import monitor_from_config
from edge_infer.outbox import EVENTS, Limits, Outbox, Pending
from edge_infer.pipeline import Outcome, Pipeline, Policy, Prepared
from edge_infer.postprocess import Classification
from edge_infer.publisher import Publisher, settings_from_config
from edge_infer.reload import apply_reload
from edge_infer.service import Notifier, Progress, Watchdog
from edge_infer.sources import Sample, SourceError, make_source
from edge_infer.uploader import CaptureUploader
from edge_infer.writer import OutboxWriter

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


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


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.model = model_from_config(cfg.model)
        manifest = self.model.manifest
        decide_cfg = cfg.decide
        second = None
        if decide_cfg["fallback"] == "escalate":
            second = model_from_config(cfg.model, decide_cfg["escalate_to"])
            second.thresholds = Thresholds(second.manifest, decide_cfg["escalate_threshold"], {})
        policy = Policy(
            fallback=decide_cfg["fallback"],
            escalate_to=second,
            escalate_fallback=decide_cfg["escalate_fallback"],
            debounce=tuple(decide_cfg["debounce"]) if decide_cfg["debounce"] else None,  # type: ignore[arg-type]
            uncertain=review_store(decide_cfg["uncertain_dir"], decide_cfg["keep_uncertain"],
                                   decide_cfg["keep_uncertain_bytes"]),
        )
        try:
            self.pipeline = Pipeline(
                self.model,
                None,
                cfg.gate["max_pixels"],
                cfg.gate["min_side"],
                gate_from_config(cfg.gate, manifest.image_quality_reference),
                review_store(cfg.gate["rejected_dir"], cfg.gate["keep_rejected"], cfg.gate["keep_rejected_bytes"]),
                self._sensor_gate(cfg, manifest),
                policy,
            )
        except ValueError as exc:
            raise ConfigError(f"{cfg.path}: [decide]: {exc}") from None
        self.monitor = monitor_from_config(cfg.drift, manifest.drift_reference, self.model.thresholds.default)
        self.pipeline.colour_stats = any(s.name.startswith("mean.") for s in self.monitor.statistics)
        self.started_at = time.monotonic()
        self._last_health = self.started_at  # the first snapshot after one interval (and one at the end)
        self.identity = Identity(
            device_id=cfg.device["id"],
            boot_id=str(uuid.uuid4()),
            model={"name": manifest.name, "version": manifest.version, "sha256": manifest.model_sha256},
        )
        box = cfg.outbox
        limits = Limits(max_rows=box["max_rows"], max_bytes=box["max_bytes"], ttl_s=float(box["ttl"]),
                        policy=box["policy"])
        def events(seq: int, msg_id: str, name: str, details: dict) -> bytes:
            return event_payload(self.identity, seq, msg_id, name, details)

        self.escalated_model = None if second is None else {
            "name": second.manifest.name, "version": second.manifest.version, "sha256": second.manifest.model_sha256}
        primary = Outbox(box["path"], box["durability"], limits, event_builder=events, primary=True)
        if primary.replaced is not None:
            log.error("event=outbox_replaced %s", " ".join(f"{k}={v!r}" for k, v in primary.replaced.items()))
            primary.add_event("outbox_replaced", primary.replaced)
        self.outbox = Outbox(box["path"], box["durability"], limits)  # the main thread's own connection
        self.source = make_source(cfg.source, manifest.input)
        if self.source.kind != self.model.kind:
            raise SourceError(
                f"{cfg.path}: [source].type: a {cfg.source['type']!r} source gives {self.source.kind} input, but "
                f"the bundle's model takes {self.model.kind} input"
            )
        self.stop_event = threading.Event()
        self.summary = RunSummary()
        self.pulled = 0  # inputs the source offered (read or skipped): what back-pressure bounds
        self.publisher = Publisher(
            settings_from_config(cfg.mqtt, cfg.device["id"]),
            lambda: Outbox(box["path"], box["durability"], limits, event_builder=events),
            birth=lambda problems: status_payload(
                self.identity, "online", version=__version__, runtime=self.model.engine.runtime.to_dict(),
                problems=problems,
            ),
            will=lambda: status_payload(self.identity, "offline"),
            uploader=self._uploader(cfg),
        )
        if cfg.homeassistant["discovery"]:
            self.publisher.discovery = discovery_messages(
                cfg.homeassistant["prefix"], cfg.mqtt["topic_prefix"], cfg.device["id"], self.model.task,
                self.identity.model)
        self.notifier = Notifier()
        self.latency = LatencyWindow()
        self.progress = Progress(record=self.latency.add)
        th = cfg.thermal
        self.governor = ThermalGovernor(th["zone"], th["throttled"], th["max_temp"], th["resume_temp"],
                                        th["check_interval"], on_change=self.add_event)
        self._handoff: queue.Queue[Prepared | None] | None = None
        self.metrics_server: MetricsServer | None = None
        self.reload_requested = threading.Event()
        self.writer = OutboxWriter(
            primary,
            window_s=box["commit_window_ms"] / 1000.0,
            max_batch=box["max_batch"],
            on_committed=self.publisher.notify,
            on_problem=lambda text: self.publisher.set_problem("outbox", text),
            progress=self.progress,
        )

    def _uploader(self, cfg: Config) -> CaptureUploader | None:
        """Kept inputs go out over MQTT when the outbox is empty, if `[decide].upload` asks for it."""
        if not cfg.decide["upload"]:
            return None
        roots = {}
        if cfg.decide["keep_uncertain"]:
            roots["uncertain"] = cfg.decide["uncertain_dir"]
        if cfg.gate["keep_rejected"]:
            roots["rejected"] = cfg.gate["rejected_dir"]
        if not roots:
            raise ConfigError(f"{cfg.path}: [decide].upload: nothing is kept to upload (set [decide].keep_uncertain "
                              "or [gate].keep_rejected)")

        def envelope() -> dict:
            i = self.identity
            return {"v": 1, "device_id": i.device_id, "boot_id": i.boot_id, "model": i.model}

        return CaptureUploader(roots, envelope, cfg.decide["upload_max_bytes"], cfg.decide["upload_chunk_bytes"])

    @staticmethod
    def _sensor_gate(cfg: Config, manifest: Manifest) -> SensorGate | None:
        if not isinstance(manifest.input, SensorInputSpec):
            return None
        try:
            return sensor_gate_from_config(cfg.gate, manifest.input, manifest.sensor_reference)
        except ValueError as exc:
            raise ConfigError(f"{cfg.path}: {exc}") from None

    def _done(self, sample: Sample) -> bool:
        self.pulled += 1
        if self.outbox.is_processed(sample.source, sample.key):
            self.summary.skipped += 1
            return True
        return False

    def handle(self, sample: Sample) -> Outcome:
        """Process one sample and commit its result or rejection, with its checkpoint, to the outbox."""
        prepared = self._timed("decode", self.pipeline.prepare, sample)
        started = time.monotonic()
        outcome = self.commit(sample, self._timed("inference", self.pipeline.finish, prepared))
        self.governor.pace(time.monotonic() - started)
        return outcome

    def _timed(self, stage: str, work: Callable[[T], R], arg: T) -> R:
        """Run one stage of one input, visible to the watchdog while it runs."""
        self.progress.start(stage)
        try:
            return work(arg)
        finally:
            self.progress.done(stage)

    def commit(self, sample: Sample, outcome: Outcome) -> Outcome:
        """Hand a finished sample to the group-commit writer (blocks while its queue is full)."""
        msg_id = message_id(sample, self.identity.model["sha256"])
        committed = getattr(self.source, "committed", None)
        after = (lambda s=sample: committed(s)) if committed is not None and sample.path is not None else None
        # the queued payload builder must not pin the bytes, the frame or the window
        sample = dataclasses.replace(sample, data=None, image=None, window=None, times=None)
        result, decision, verdict = outcome.result, outcome.decision, outcome.verdict
        decided_by = self.escalated_model if decision is not None and decision.path == "escalated" else None
        if result is not None and decision is not None and decision.action == "publish":
            kind = "results"

            def build(seq: int) -> bytes:
                return result_payload(self.identity, seq, msg_id, sample, result, decision, outcome.latency_ms,
                                      outcome.state, decided_by)
        elif result is None and self.cfg.gate["publish_rejections"]:
            kind = "rejections"

            def build(seq: int) -> bytes:
                return rejection_payload(self.identity, seq, msg_id, sample, verdict)
        else:  # suppressed, deferred, or an unpublished rejection: counted and checkpointed, not published
            kind, build = "results" if result is not None else "rejections", None

        if not self.writer.put(Pending(kind, msg_id, build, (sample.source, sample.key), after), self.stop_event):
            return outcome  # stopping: not committed, so the input is processed again on the next start
        if result is not None and decision is not None:
            self.summary.results += 1
            self.summary.uncertain += decision.status == "uncertain"
            self.summary.suppressed += decision.action == "suppress"
            self.summary.deferred += decision.action == "defer"
            self.summary.escalated += decision.path == "escalated"
            log.debug("event=result input=%s task=%s status=%s path=%s action=%s", sample.input_id, result.task,
                      decision.status, decision.path, decision.action)
            self._observe(outcome)
        else:
            reason = verdict.reason or "unknown"
            self.summary.rejections[reason] = self.summary.rejections.get(reason, 0) + 1
            log.info("event=rejected input=%s reason=%s detail=%r", sample.input_id, reason, verdict.detail)
        return outcome

    def _observe(self, outcome: Outcome) -> None:
        """Feed the drift monitor; each alarm state change becomes one event on `events`."""
        if not self.monitor.enabled:
            return
        decision = outcome.decision
        assert outcome.result is not None and decision is not None
        # the reference describes the first model's outputs: an escalated input counts as that model's uncertain
        result = outcome.first if outcome.first is not None else outcome.result
        label = confidence = uncertain = None
        if isinstance(result, Classification):
            label, confidence = result.label, result.confidence
            uncertain = decision.status == "uncertain" or outcome.first is not None
        for change in self.monitor.observe(outcome.stats, label, confidence, uncertain):
            log.warning("event=%s statistic=%s psi=%.3f", change.event, change.statistic, change.psi)
            self.add_event(change.event, change.details)

    def add_event(self, name: str, details: dict) -> None:
        """Queue an `events` message through the group-commit writer (in order with the results around it)."""
        msg_id = uuid.uuid4().hex

        def build(seq: int) -> bytes:
            return event_payload(self.identity, seq, msg_id, name, details)

        self.writer.put(Pending(EVENTS, msg_id, build), self.stop_event)

    def health(self) -> dict:
        """The counters, drift state and scores a `health` message carries."""
        s = self.summary
        uptime = time.monotonic() - self.started_at
        runtime = self.model.engine.runtime
        return {
            "uptime_s": round(uptime, 1),
            "runtime": f"{runtime.name} {runtime.version}",
            "results": s.results, "uncertain": s.uncertain,
            "uncertain_rate": round(s.uncertain / s.results, 4) if s.results else 0.0,
            "results_per_s": round(s.results / uptime, 3) if uptime > 0 else 0.0,
            "paths": dict(self.pipeline.paths), "actions": dict(self.pipeline.actions),
            "rejections": dict(sorted(s.rejections.items())), "skipped": s.skipped,
            "dropped": getattr(self.source, "dropped", 0),
            "published": self.publisher.published,
            "backlog": self._backlog(),
            "queues": {"handoff": self._handoff.qsize() if self._handoff is not None else 0,
                       "writer": self.writer.queued},
            "latency": self.latency.summary(),
            "thermal": self.governor.to_dict(),
            "rss_bytes": rss_bytes(),
            "drift": self.monitor.to_dict(),
        }

    def _scrape(self) -> dict:
        doc = self.health()
        doc["model_info"] = self.identity.model
        return doc

    def _backlog(self) -> int:
        """Stored, unacknowledged messages (read on its own connection: health runs on several threads)."""
        try:  # closed at once: a lingering reader would keep the WAL from being checkpointed at exit
            with contextlib.closing(sqlite3.connect(f"file:{self.outbox.path}?mode=ro", uri=True,
                                                    timeout=1.0)) as db:
                row = db.execute("SELECT COUNT(*) FROM messages").fetchone()
            return int(row[0]) if row else 0
        except sqlite3.Error:
            return -1

    def _maybe_health(self, force: bool = False) -> None:
        interval = self.cfg.health["interval"]
        now = time.monotonic()
        if interval <= 0 or (not force and now - self._last_health < interval):
            return
        self._last_health = now
        self.publisher.offer("health", health_payload(self.identity, self.health()))

    def run(self, once: bool = False) -> RunSummary:
        """Process inputs until SIGTERM/SIGINT (or, with `once`, until the source is exhausted and the
        outbox has been given a chance to drain)."""
        runtime = self.model.engine.runtime
        log.info(
            "event=start version=%s device=%s boot_id=%s model=%s@%s sha256=%s runtime=%s/%s outbox=%s",
            __version__, self.identity.device_id, self.identity.boot_id, self.identity.model["name"],
            self.identity.model["version"], self.identity.model["sha256"][:12], runtime.name, runtime.version,
            self.outbox.path,
        )
        if self.pipeline.sensor_gate is not None:
            sl = self.pipeline.sensor_gate.limits
            log.info("event=gate kind=sensor limits=%s low=%s high=%s min_std=%s max_step=%s max_gap_factor=%s",
                     sl.source, sl.low, sl.high, sl.min_std, sl.max_step, sl.max_gap_factor)
        else:
            limits = self.pipeline.gate.limits
            log.info("event=gate quality=%s limits=%s %s", self.pipeline.gate.enabled, limits.source,
                     " ".join(f"{k}={v:.4g}" for k, v in limits.to_dict().items() if isinstance(v, float)))
        if self.cfg.metrics["port"]:  # first: a port in use is a one-line error, before anything runs
            try:
                self.metrics_server = MetricsServer(self.cfg.metrics["bind"], self.cfg.metrics["port"], self._scrape)
            except OSError as exc:
                raise ConfigError(f"{self.cfg.path}: [metrics]: cannot listen on {self.cfg.metrics['bind']}:"
                                  f"{self.cfg.metrics['port']}: {exc.strerror}") from None
            self.metrics_server.start()
            log.info("event=metrics_listening address=%s:%d", self.cfg.metrics["bind"], self.metrics_server.port)
        self.writer.start()
        self.publisher.start()
        watchdog = None
        if self.notifier.watchdog_s:
            watchdog = Watchdog(self.notifier, self.progress, self.notifier.watchdog_s, self.status_line)
            watchdog.start()
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        self.notifier.send(READY=1, STATUS=self.status_line())
        try:
            if self.cfg.pipeline["mode"] == "pipelined":
                self._run_pipelined(once)
            else:
                for sample in self.source.samples(self.stop_event, once, self._done):
                    self.handle(sample)
            self.writer.flush()
            if once:
                self._drain(self.cfg.mqtt["drain_timeout"])
            self._maybe_health(force=True)  # the final counts, sent before `offline`
        finally:
            self.notifier.send(STOPPING=1, STATUS="stopping: storing and sending what is in flight")
            if watchdog is not None:
                watchdog.stopping.set()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            self.writer.stop()
            self.publisher.stop()
            self.summary.published = self.publisher.published
            self.summary.dead_letters = self.publisher.dead_lettered
            self.summary.queued = self.outbox.backlog()
            self.outbox.close()
            self.writer.outbox.close()
        log.info(
            "event=stop results=%d uncertain=%d escalated=%d suppressed=%d deferred=%d rejected=%d skipped=%d "
            "dropped=%d published=%d queued=%d uncommitted=%d rejections=%s drift=%s",
            self.summary.results, self.summary.uncertain, self.summary.escalated, self.summary.suppressed,
            self.summary.deferred, self.summary.rejected, self.summary.skipped,
            getattr(self.source, "dropped", 0), self.summary.published, self.summary.queued, self.writer.lost_on_stop,
            ",".join(f"{k}:{v}" for k, v in sorted(self.summary.rejections.items())) or "-",
            ",".join(sorted(self.monitor.alarmed)) or ("-" if self.monitor.enabled else "off"),
        )
        return self.summary

    def _run_pipelined(self, once: bool) -> None:
        """Decode and preprocess in one thread while this one runs the interpreter; a bounded queue between
        them (and the writer's behind) makes the slowest stage set the pace instead of a growing backlog.
        Order is preserved: one producer, one consumer."""
        handoff: queue.Queue[Prepared | None] = queue.Queue(maxsize=self.cfg.pipeline["queue_size"])
        failure: list[BaseException] = []

        def front() -> None:
            try:
                for sample in self.source.samples(self.stop_event, once, self._done):
                    prepared = self._timed("decode", self.pipeline.prepare, sample)
                    while not self.stop_event.is_set():
                        try:
                            handoff.put(prepared, timeout=0.2)
                            break
                        except queue.Full:
                            continue
            except BaseException as exc:  # surfaced in the main thread below
                failure.append(exc)
            finally:
                handoff.put(None)

        thread = threading.Thread(target=front, name="decode", daemon=True)
        thread.start()
        self._handoff = handoff
        while (prepared := handoff.get()) is not None:
            started = time.monotonic()
            self.commit(prepared.sample, self._timed("inference", self.pipeline.finish, prepared))
            self.governor.pace(time.monotonic() - started)
        thread.join()
        if failure:
            raise failure[0]

    def _drain(self, timeout: float) -> None:
        """Wait for the publisher to empty the outbox; give up early when the broker is unreachable."""
        deadline = time.monotonic() + timeout
        self.publisher.notify()
        while (self.outbox.backlog() or self.publisher.uploading()) and time.monotonic() < deadline \
                and not self.stop_event.is_set():
            if self.publisher.unreachable():
                break
            time.sleep(0.05)

    def status_line(self) -> str:
        """systemd's STATUS=: one line a `systemctl status` reader understands."""
        s = self.summary
        drift = ",".join(sorted(self.monitor.alarmed)) or ("ok" if self.monitor.scores else "warming up")
        return (f"{s.results} results ({s.uncertain} uncertain), {s.rejected} rejected; "
                f"published {self.publisher.published}; drift {drift}")

    def _housekeeping(self) -> None:
        """Its own thread: SIGHUP reloads, the periodic health snapshot and the thermal check, also while no
        input arrives."""
        while not self.stop_event.is_set():
            if self.reload_requested.wait(min(0.5, max(0.05, self.cfg.health["interval"] or 0.5))):
                self.reload_requested.clear()
                self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
                self.reload()
                self.notifier.send(READY=1, STATUS=self.status_line())
            self.governor.check()
            self._maybe_health()

    def reload(self) -> dict[str, object]:
        """SIGHUP: re-read the config file; apply what can change while running (thresholds, fallbacks,
        debounce, gate limits, drift levels, health interval, log level) and name what needs a restart. One
        `config_reloaded` (or `config_reload_failed`) event says which."""
        try:
            new = load_config(self.cfg.path)
            applied, restart = apply_reload(self, new)
        except (ConfigError, BundleError, ValueError) as exc:
            log.error("event=config_reload_failed error=%r (keeping the running config)", str(exc))
            details: dict[str, object] = {"error": str(exc)[:500]}
            self.add_event("config_reload_failed", details)
            return details
        log.info("event=config_reloaded applied=%s needs_restart=%s", ",".join(applied) or "-",
                 ",".join(restart) or "-")
        details = {"applied": applied, "needs_restart": restart}
        self.add_event("config_reloaded", details)
        return details

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            log.info("event=signal signal=%s (stopping)", signal.Signals(signum).name)
            self.stop_event.set()

        def on_hangup(_signum: int, _frame: object) -> None:
            log.info("event=signal signal=SIGHUP (reloading the config)")
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)
