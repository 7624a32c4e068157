"""The daemon: the parts `edge_infer.app.compose` builds, run as threads — source → pipeline → group-commit
writer → outbox → sink — with a housekeeping thread for reloads, commands, updates, health and the thermal check;
signals; a clean stop."""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from edge_infer.app import compose, startup
from edge_infer.app.dashboard import Dashboard
from edge_infer.app.endpoints import Endpoints
from edge_infer.app.interpreters import Lane, Lanes, interpreter_count, run_in_order
from edge_infer.app.payloads import payload_for
from edge_infer.app.summary import RunSummary, health_doc, log_start, log_stop
from edge_infer.config import Config
from edge_infer.control.accelerator import AcceleratorWatch
from edge_infer.control.commands import CommandError
from edge_infer.control.reload import reload_from_file
from edge_infer.decide import Decision
from edge_infer.delegates import CPU
from edge_infer.inbox import Inbox
from edge_infer.memory import trim
from edge_infer.messages import Identity, event_payload, health_payload, message_id, snapshot_payload
from edge_infer.metrics import LatencyWindow
from edge_infer.model import Model
from edge_infer.monitor import DriftMonitor
from edge_infer.outbox import EVENTS, Outbox, Pending
from edge_infer.pipeline import Outcome, Pipeline, Prepared
from edge_infer.service import Notifier, Progress, Watchdog
from edge_infer.sinks import Sink
from edge_infer.sources import Sample, Source
from edge_infer.sources.health import SourceHealth
from edge_infer.tasks import TaskResult
from edge_infer.thermal import ThermalGovernor
from edge_infer.writer import OutboxWriter

log = logging.getLogger(__name__)
TRIM_INTERVAL_S = 10.0  # malloc_trim from the housekeeping thread
T = TypeVar("T")
R = TypeVar("R")


class DaemonFailed(Exception):
    """The daemon stopped itself because part of it stopped working; one line."""


SinkFactory = Callable[[Callable[[], Outbox]], Sink]  # given an outbox opener, a sink


class Daemon:
    """Wires the parts (each one build step) and runs them; see the module docstring. `source` and `sink`
    replace the configured ones (a program embedding edge-infer; the fast test tier: `ListSource`,
    `MemorySink`)."""

    def __init__(self, cfg: Config, source: Source | None = None, sink: SinkFactory | None = None) -> None:
        startup.prepare_process(cfg)
        self.failure: str | None = None  # why the daemon stopped itself (a worker thread died)
        self.finished_at: dict[str, float] = {}  # when a `once` run had all stored, delivered: what `bench` times
        self.winding_down = False
        self._housekeeper: threading.Thread | None = None
        self.watchdog: Watchdog | None = None  # while running under systemd's watchdog
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.summary = RunSummary()
        self.pulled = 0  # inputs the source offered (read or skipped): what back-pressure bounds
        self._notes: list[startup.Note] = []  # announced once the writer runs
        self._last: tuple[Sample, TaskResult, Decision, Identity] | None = None  # for `snapshot`
        self._handoff: queue.Queue[Any] | None = None  # decode → inference, one interpreter (`_run_pipelined`)
        self._lanes: Lanes | None = None  # several (`_run_pipelined`)
        self._last_health = self._last_scan = 0.0
        self._last_trim = self.started_at = time.monotonic()

        keys = startup.fleet_keys(cfg)
        slots = startup.open_slots(cfg, self._notes)
        model, previous = startup.start_model(cfg, slots, keys, self._notes)
        self.crashes, rest = startup.after_crash(cfg, model, self._notes)
        self.serving = compose.serving(cfg, model, slots)
        self._last_health = self.started_at  # the first snapshot after one interval (and one at the end)
        escalate = self.pipeline.policy.escalate_to
        self.escalated_model = None if escalate is None else escalate.info
        events = compose.event_builder(self.serving)
        primary = compose.primary_outbox(cfg, events)
        self.outbox = compose.outbox_opener(cfg)()  # the main thread's own connection
        self.source = source if source is not None else compose.source(cfg, model)
        self.source_health: SourceHealth | None = getattr(self.source, "health", None)
        if self.source_health is not None:
            self.source_health.listeners.append(self._source_changed)
        if self.pipeline.baseline is not None:
            self.pipeline.baseline.listeners.append(self._scene_changed)
        self.inbox = Inbox(cfg.commands.max_message_bytes) if cfg.commands.enabled else None
        opener = compose.outbox_opener(cfg, events, receipts=True)
        watched = compose.watched_conditions(cfg, self.source, self.serving)
        self.sink = sink(opener) if sink is not None else compose.sink(cfg, self.serving, opener, self.inbox,
                                                                       watched)
        self.serving.on_swap.append(lambda: self.sink.refresh(compose.discovery(self.cfg, self.serving, watched)))
        self.dashboard = Dashboard(cfg.mqtt, self.sink, lambda: self.model.manifest.labels)
        self.notifier = Notifier()
        self.latency = LatencyWindow()
        self.progress = Progress(record=self.latency.add)
        th = cfg.thermal
        self.governor = ThermalGovernor(th.zone, th.throttled, th.max_temp, th.resume_temp,
                                        th.check_interval, on_change=self.add_event)
        self.endpoints = Endpoints(cfg, self._scrape, self.latency, self._view_status)
        box = cfg.outbox
        self.writer = OutboxWriter(primary, window_s=box.commit_window_ms / 1000.0, max_batch=box.max_batch,
                                   on_committed=self.sink.notify,
                                   on_problem=lambda text: self.sink.set_problem("outbox", text),
                                   progress=self.progress)
        self.updater = compose.updater(cfg, slots, keys, self.serving, self.add_event, self.latency.summary,
                                       previous)
        self.accelerator = AcceleratorWatch(self.serving, self._accelerator_changed, rest_s=rest) \
            if compose.accelerator_watched(cfg) else None
        handlers = {"reload": self._reload_command, "snapshot": self.snapshot,
                    "set-threshold": self.serving.set_threshold}
        self.commands = compose.commands(cfg, keys, self.add_event, self.inbox, handlers, self.updater)

    # ---- what the serving port holds -------------------------------------------------------------------------
    @property
    def cfg(self) -> Config:
        return self.serving.cfg

    @property
    def model(self) -> Model:
        return self.serving.model

    @property
    def pipeline(self) -> Pipeline:
        return self.serving.pipeline

    @property
    def monitor(self) -> DriftMonitor:
        return self.serving.monitor

    @property
    def identity(self) -> Identity:
        return self.serving.identity

    # ---- the data path ---------------------------------------------------------------------------------------
    def _done(self, sample: Sample) -> bool:
        """The source asks before it reads: an input whose result is already stored is skipped."""
        self.pulled += 1
        if not self.source.live and self.outbox.is_processed(sample.source, sample.key):
            self.summary.skipped += 1
            return True
        return False

    def _samples(self, once: bool) -> Iterator[Sample]:
        """The source's inputs; one that killed the service before is handed on unreadable (`edge_infer.crashes`)."""
        return self.crashes.screen(self.source.samples(self.stop_event, once, self._done))

    def handle(self, sample: Sample) -> Outcome:
        """Process one sample and commit its result or rejection, with its checkpoint, to the outbox."""
        pipeline = self.pipeline
        return self._finish(pipeline, self._timed("decode", pipeline.prepare, sample))

    def _finish(self, pipeline: Pipeline, prepared: Prepared | Sample, lane: Lane | None = None) -> Outcome:
        """The back half of one input, on the pipeline (model) that took it: inference — or, from its `lane`,
        the measured input and its result, judged here in input order — then commit and pacing."""
        started = time.monotonic()
        try:
            if lane is None:
                assert isinstance(prepared, Prepared)
                outcome = self._timed("inference", pipeline.finish, prepared)
            else:
                measured, ran = lane()  # raises what the lane met
                prepared = pipeline.judge(measured)
                outcome = pipeline.finish(prepared, ran)
        except Exception as exc:  # a just-promoted model that fails is rolled back; the input runs again
            if self.updater is None or not self.updater.failed(pipeline, exc):
                raise
            pipeline = self.pipeline
            if lane is not None:  # the lanes may be running this model: the rerun gets its own interpreter
                pipeline = pipeline.replaced(model=pipeline.model.on_engine(pipeline.model.engine.twin()))
            sample = prepared.sample if isinstance(prepared, Prepared) else prepared
            prepared = pipeline.prepare(sample)
            outcome = self._timed("inference", pipeline.finish, prepared)
        busy = time.monotonic() - started
        if self.updater is not None:
            self.updater.observe(pipeline, prepared.sample, outcome, busy * 1000.0)
        outcome = self.commit(prepared.sample, outcome, pipeline)
        self.governor.pace(time.monotonic() - started)
        return outcome

    def _timed(self, stage: str, work: Callable[[T], R], arg: T) -> R:
        """Run one stage of one input (`arg`: it, or what holds it as `.sample`), visible to the watchdog while it
        runs and marked in flight on this thread (a fatal signal meanwhile counts against it)."""
        self.progress.start(stage)
        sample = arg if isinstance(arg, Sample) else getattr(arg, "sample", None)
        self.crashes.mark(sample.key if isinstance(sample, Sample) else None)
        try:
            return work(arg)
        finally:
            self.crashes.mark(None)
            self.progress.done(stage)

    def commit(self, sample: Sample, outcome: Outcome, pipeline: Pipeline | None = None) -> Outcome:
        """Hand a finished sample to the group-commit writer (blocks while its queue is full). Its message names
        the model of the pipeline that produced it (which differs from the current one only around a swap)."""
        pipeline = pipeline or self.pipeline
        identity = self.identity
        if pipeline.info is not identity.model:
            identity = dataclasses.replace(identity, model=pipeline.info)
        msg_id = message_id(sample, pipeline.info["sha256"])
        committed = getattr(self.source, "committed", None)
        after = (lambda s=sample: committed(s)) if committed is not None and sample.path is not None else None
        result, decision = outcome.result, outcome.decision
        if result is not None and decision is not None and self.commands is not None:
            self._last = (sample, result, decision, identity)  # one input kept, for `snapshot`
        self.dashboard.observe(sample, outcome)  # label states and the picture, when they are due
        self.endpoints.observe(sample, outcome)
        kind, build = payload_for(sample, outcome, identity, msg_id, self.escalated_model,
                                  self.cfg.gate.publish_rejections)
        # a live frame is never offered again: no checkpoint (the table would grow by every frame, forever)
        checkpoint = None if self.source.live else (sample.source, sample.key)
        forget = getattr(self.source, "forgets_committed", False)
        if not self.writer.put(Pending(kind, msg_id, build, checkpoint, after, forget), self.stop_event):
            return outcome  # stopping: not committed, so the input is processed again on the next start
        self.summary.count(sample, outcome)
        if result is not None and pipeline.info is self.pipeline.info:  # the drift reference is the current model's
            for change in self.serving.observe(outcome):
                log.warning("event=%s statistic=%s psi=%.3f", change.event, change.statistic, change.psi)
                self.add_event(change.event, change.details)
        return outcome

    def add_event(self, name: str, details: dict) -> None:
        """Queue an `events` message through the group-commit writer (in order with the results around it)."""
        msg_id = uuid.uuid4().hex

        def build(seq: int) -> bytes:
            return event_payload(self.identity, seq, msg_id, name, details)

        self.writer.put(Pending(EVENTS, msg_id, build), self.stop_event)

    def _source_changed(self, up: bool, reason: str | None, held_s: float) -> None:
        """The source lost its input or got it back (its own thread): an event, a problem, the status line."""
        name = self.source.name
        if up:
            log.warning("event=source_restored source=%s down_s=%.1f", name, held_s)
            self.add_event("source_restored", {"source": name, "down_s": round(held_s, 1)})
        else:
            log.warning("event=source_lost source=%s reason=%r (retrying)", name, reason)
            self.add_event("source_lost", {"source": name, "reason": reason})
        self.sink.set_problem("source", None if up else f"{name}: {reason} (retrying)")
        self.notifier.send(STATUS=self.status_line())

    def _accelerator_changed(self, name: str, details: dict[str, Any]) -> None:
        """The accelerator went away (the CPU runs the model) or came back: an event, a problem, the status."""
        log.warning("event=%s %s", name, " ".join(f"{k}={v!r}" for k, v in details.items()))
        self.add_event(name, details)
        lost = name == "accelerator_lost"
        self.sink.set_problem("accelerator", f"{details['delegate']}: {details['error']} (running on the CPU, "
                                             "retrying)" if lost else None)

    def _scene_changed(self, condition: str, started: bool, details: dict[str, Any]) -> None:
        """The camera's baseline says a condition started or ended (the front thread)."""
        log.warning("event=%s condition=%s", "scene_problem" if started else "scene_problem_cleared", condition)
        self.add_event("scene_problem" if started else "scene_problem_cleared", details)
        baseline = self.pipeline.baseline
        active = baseline.to_dict()["conditions"] if baseline is not None else []
        self.sink.set_problem("scene", ", ".join(active) or None)

    # ---- health --------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The counters, drift state and scores a `health` message carries."""
        lanes, handoff = self._lanes, self._handoff
        waiting = lanes.waiting if lanes is not None else handoff.qsize() if handoff is not None else 0
        return health_doc(self, {"handoff": waiting, "writer": self.writer.queued})

    def _view_status(self) -> dict[str, Any]:
        """What the live view shows beside its own state (each push, while someone watches)."""
        return {"device": self.identity.device_id, "model": self.identity.model, "health": self.health(),
                "broker": getattr(self.sink, "broker", None) or "not connected", "line": self.status_line()}

    def _scrape(self) -> dict[str, Any]:
        doc = self.health()
        doc["model_info"] = self.identity.model
        return doc

    def _maybe_health(self, force: bool = False) -> None:
        interval = self.cfg.health.interval
        now = time.monotonic()
        if interval <= 0 or (not force and now - self._last_health < interval):
            return
        self._last_health = now
        self.sink.offer("health", health_payload(self.identity, self.health()))

    def status_line(self) -> str:
        """systemd's STATUS=: one line a `systemctl status` reader understands."""
        s = self.summary
        drift = ",".join(sorted(self.monitor.alarmed)) or ("ok" if self.monitor.scores else "warming up")
        health = self.source_health
        down = f"SOURCE DOWN ({health.reason}), retrying; " if health is not None and not health.up else ""
        return (f"{down}{s.results} results ({s.uncertain} uncertain), {s.rejected} rejected; "
                f"published {self.sink.published}; drift {drift}")

    # ---- running ---------------------------------------------------------------------------------------------
    def _start_threads(self) -> None:
        """Metrics and the live view (first: a port in use is a one-line error before anything runs), writer,
        sink, watchdog, housekeeping; then READY."""
        self.endpoints.start()
        self.writer.start()
        for name, details in self._notes:
            self.add_event(name, details)
        if self._notes:  # stored before any input runs: the one that crashed the last run may crash this one
            self.writer.flush(timeout=10.0)
        self.sink.start()
        if self.notifier.watchdog_s:
            self.watchdog = Watchdog(self.notifier, self.progress, self.notifier.watchdog_s, self.status_line,
                                     self.crashes.hung)
            self.watchdog.start()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        self._housekeeper.start()
        self.notifier.send(READY=1, STATUS=self.status_line())

    def run(self, once: bool = False) -> RunSummary:
        """Process inputs until SIGTERM/SIGINT (or, with `once`, until the source is exhausted and the
        outbox has been given a chance to drain)."""
        log_start(self)
        self._start_threads()
        self.crashes.arm()  # a fatal signal from here on leaves every thread's stack for the next start
        try:
            if self.cfg.pipeline.mode == "pipelined":
                self._run_pipelined(once)
            else:
                for sample in self._samples(once):
                    self.handle(sample)
            self.writer.flush()
            self.finished_at["stored"] = time.monotonic()
            trim()  # the source is done: what the frames used goes back to the system
            if once:
                self._drain(self.cfg.mqtt.drain_timeout)
                self.finished_at["delivered"] = time.monotonic()
            self._maybe_health(force=True)  # the final counts, sent before `offline`
            if self.updater is not None:
                self.updater.stopped_cleanly()
        finally:
            self._stop_threads()
            self.crashes.disarm()
        if self.failure is not None:
            raise DaemonFailed(self.failure)
        log_stop(self)
        return self.summary

    def _stop_threads(self) -> None:
        self.winding_down = True  # the writer and the sink stop now, on purpose
        if self._housekeeper is not None:  # it ends first: nothing of it runs on what is being closed
            self.reload_requested.set()  # wakes it; it sees `winding_down` and ends instead of reloading
            self._housekeeper.join(10.0)
        if self.pipeline.baseline is not None:
            self.pipeline.baseline.save()
        self.notifier.send(STOPPING=1, STATUS="stopping: storing and sending what is in flight")
        if self.watchdog is not None:
            self.watchdog.stopping.set()
        self.endpoints.stop()
        self.writer.stop()
        self.sink.stop()
        self.summary.published = self.sink.published
        self.summary.dead_letters = self.sink.dead_lettered
        self.summary.queued = self.outbox.backlog()
        self.outbox.close()
        self.writer.outbox.close()

    def _run_pipelined(self, once: bool) -> None:
        """Decode and inference at once: on lanes, each with its own interpreter, committing in input order
        (`[pipeline] interpreters`, see `edge_infer.app.interpreters`); or, with one interpreter, a decode thread
        preparing while this one infers. A bounded hand-off makes the slowest stage set the pace instead of a
        growing backlog."""
        # sensor windows are tiny models, nothing to split; an accelerator is one device, shared by one interpreter
        size = interpreter_count(self.cfg.pipeline.interpreters, self.cfg.model.threads) \
            if self.pipeline.model.kind == "image" and self.cfg.model.delegate in CPU else 1
        log.info("event=pipeline interpreters=%d threads_each=%d queue=%d", size, self.cfg.model.threads,
                 self.cfg.pipeline.queue_size)
        if size > 1:
            self._lanes = Lanes(size, max(self.cfg.pipeline.queue_size, 2 * size), self._timed, self._finish)
            self._lanes.run(((self.pipeline, sample) for sample in self._samples(once)), self.stop_event)
            return
        self._handoff = queue.Queue(maxsize=self.cfg.pipeline.queue_size)

        def decoded() -> Iterator[tuple[Pipeline, Prepared]]:
            for sample in self._samples(once):
                pipeline = self.pipeline  # once per input: a model swap takes effect between inputs
                yield pipeline, self._timed("decode", pipeline.prepare, sample)

        run_in_order(decoded(), self._handoff, self.stop_event, lambda item: self._finish(*item))

    def _drain(self, timeout: float) -> None:
        """Wait for the sink to empty the outbox; give up early when the broker is unreachable."""
        deadline = time.monotonic() + timeout
        self.sink.notify()
        while (self.outbox.backlog() or self.sink.uploading()) and time.monotonic() < deadline \
                and not self.stop_event.is_set():
            if self.sink.unreachable():
                break
            time.sleep(0.01)

    # ---- the control thread ---------------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        """Its own thread: SIGHUP reloads, commands, updates, the periodic health snapshot and the thermal check,
        also while no input arrives; and the check that the writer and the sink still run."""
        while not (self.stop_event.is_set() or self.winding_down):
            try:
                self._housekeeping_turn()
            except Exception:  # one failing step must never stop health, reloads and the thread check
                log.exception("event=housekeeping_error")
            self._check_threads()

    def _housekeeping_turn(self) -> None:
        if self.reload_requested.wait(min(0.5, max(0.05, self.cfg.health.interval or 0.5))):
            if self.winding_down:
                return
            self.reload_requested.clear()
            self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
            self.reload()
            self.notifier.send(READY=1, STATUS=self.status_line())
        try:
            self._control()
            if self.accelerator is not None:
                self.accelerator.turn()
        except Exception:  # commands and updates must never stop health, reloads and the thermal check
            log.exception("event=control_error")
        if time.monotonic() - self._last_trim >= TRIM_INTERVAL_S:
            self._last_trim = time.monotonic()
            trim()
        self.governor.check()
        self._maybe_health()

    def _control(self) -> None:
        """Commands that arrived, an unfinished transfer's clock, new bundles in incoming/ (control thread)."""
        if self.commands is not None and self.inbox is not None:
            while (item := self.inbox.get()) is not None:
                self.commands.handle(*item)
            self.commands.tick()
        if self.updater is not None and time.monotonic() - self._last_scan >= 1.0:
            self._last_scan = time.monotonic()
            self.updater.scan()

    def _check_threads(self) -> None:
        """A worker thread that died would leave a daemon that reads input and never stores or sends it: stop
        loudly instead (status problem, log line, non-zero exit), so systemd restarts the service."""
        dead = [t.name for t in (self.writer, self.sink) if not t.is_alive()]
        if not dead or self.stop_event.is_set() or self.winding_down or self.failure is not None:
            return
        self.failure = f"the {', '.join(dead)} thread stopped unexpectedly"
        log.critical("event=thread_died threads=%s (stopping; the service manager restarts the daemon)",
                     ",".join(dead))
        self.sink.set_problem("threads", self.failure)
        self.stop_event.set()

    def reload(self) -> dict[str, object]:
        """SIGHUP: re-read the config file and apply what can change while running (`edge_infer.control.reload`);
        one `config_reloaded` (or `config_reload_failed`) event says which."""
        return reload_from_file(self.serving, self.add_event)

    def _reload_command(self, _args: dict[str, Any]) -> dict[str, Any]:
        result = self.reload()
        if "error" in result:
            raise CommandError("config_invalid", str(result["error"]))
        return dict(result)

    def snapshot(self, _args: dict[str, Any] | None = None) -> dict[str, Any]:
        """`snapshot`: the latest result, its input annotated, published once on `snapshot`."""
        from edge_infer.snapshot import snapshot_doc  # Pillow's drawing and fonts: only when a snapshot is asked for

        last = self._last
        if last is None:
            raise CommandError("no_result", "no input has produced a result since the daemon started")
        sample, result, decision, identity = last
        picture = snapshot_doc(sample.data if sample.data is not None else sample.image, result, decision)
        self.sink.offer("snapshot", snapshot_payload(identity, sample, result, decision, picture))
        return {"topic": f"{self.cfg.mqtt.topic_prefix}/{self.identity.device_id}/snapshot",
                "input": sample.input_id, "image": bool(picture)}

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
