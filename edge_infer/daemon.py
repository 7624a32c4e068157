"""Wiring: config → bundle, runtime, source, pipeline, outbox and publisher; signals; the main loop."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import queue
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from edge_infer import __version__
from edge_infer.bundle import BundleError, read_manifest_doc
from edge_infer.capture import CaptureStore, review_store
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.decide import Decision, Thresholds
from edge_infer.gates.image import decode_image, standardize
from edge_infer.gates.quality import gate_from_config
from edge_infer.gates.sensor import SensorGate, sensor_gate_from_config
from edge_infer.homeassistant import discovery_messages
from edge_infer.inbox import Inbox
from edge_infer.manifest import Manifest, SensorInputSpec
from edge_infer.memory import limit_arenas, trim
from edge_infer.messages import (
    Identity,
    event_payload,
    health_payload,
    message_id,
    rejection_payload,
    result_payload,
    snapshot_payload,
    status_payload,
)
from edge_infer.metrics import LatencyWindow, MetricsServer, ThermalGovernor, rss_bytes
from edge_infer.model import Model, model_from_config, threshold_problem
from edge_infer.monitor import DriftMonitor, monitor_from_config
from edge_infer.outbox import EVENTS, Limits, Outbox, Pending
from edge_infer.pipeline import Outcome, Pipeline, Policy, Prepared
from edge_infer.postprocess import Classification, TaskResult
from edge_infer.publisher import Publisher, settings_from_config
from edge_infer.reload import apply_reload
from edge_infer.runtime import RuntimeUnavailable
from edge_infer.service import Notifier, Progress, Watchdog
from edge_infer.signing import SignatureError, load_public_key, verify_bundle
from edge_infer.slots import CONFIG, Slots
from edge_infer.sources import Sample, SourceError, make_source
from edge_infer.uploader import CaptureUploader
from edge_infer.writer import OutboxWriter

if TYPE_CHECKING:
    from edge_infer.commands import Commands
    from edge_infer.updates import Updater

log = logging.getLogger(__name__)
TRIM_INTERVAL_S = 10.0  # malloc_trim from the housekeeping thread
T = TypeVar("T")
R = TypeVar("R")


class DaemonFailed(Exception):
    """The daemon stopped itself because part of it stopped working; one line."""


def _check_state_dir(cfg: Config) -> None:
    """`[device].state_dir` must be a folder this user can write: a one-line config error otherwise."""
    folder = Path(cfg.device["state_dir"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{cfg.path}: [device].state_dir: cannot write to {folder}: {exc.strerror} (create it "
                          f"for the daemon's user, or choose another folder)") from None


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
        limit_arenas()  # before any thread starts (see edge_infer.memory)
        os.umask(0o027)  # what the daemon writes (outbox, state, kept inputs) is never world-readable
        _check_state_dir(cfg)
        self.cfg = cfg
        self.failure: str | None = None  # why the daemon stopped itself (a worker thread died)
        self.winding_down = False
        self.watchdog: Watchdog | None = None  # while running under systemd's watchdog
        self.swap_lock = threading.RLock()  # a model swap (update, rollback) and a reload never interleave
        self._startup_events: list[tuple[str, dict]] = []  # announced once the writer runs
        self.fleet_keys = self._fleet_keys(cfg)
        self.slots = self._slots(cfg) if cfg.update["enabled"] or cfg.commands["enabled"] else None
        self.model, previous = self._start_model()
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
        self.pipeline = self._pipeline_for(self.model, policy,
                                           review_store(cfg.gate["rejected_dir"], cfg.gate["keep_rejected"],
                                                        cfg.gate["keep_rejected_bytes"]))
        self.monitor = self._monitor_for(self.pipeline)
        self.started_at = time.monotonic()
        self._last_health = self.started_at  # the first snapshot after one interval (and one at the end)
        self.identity = Identity(device_id=cfg.device["id"], boot_id=str(uuid.uuid4()), model=self.pipeline.info)
        box = cfg.outbox
        limits = Limits(max_rows=box["max_rows"], max_bytes=box["max_bytes"], ttl_s=float(box["ttl"]),
                        policy=box["policy"])
        def events(seq: int, msg_id: str, name: str, details: dict) -> bytes:
            return event_payload(self.identity, seq, msg_id, name, details)

        self.escalated_model = None if second is None else second.info
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
        self.inbox = Inbox(cfg.commands["max_message_bytes"]) if cfg.commands["enabled"] else None
        self._last: tuple[Sample, TaskResult, Decision, Identity] | None = None  # for `snapshot`
        self.pulled = 0  # inputs the source offered (read or skipped): what back-pressure bounds
        self.publisher = self._publisher(lambda: Outbox(box["path"], box["durability"], limits, event_builder=events))
        self.notifier = Notifier()
        self.latency = LatencyWindow()
        self.progress = Progress(record=self.latency.add)
        th = cfg.thermal
        self.governor = ThermalGovernor(th["zone"], th["throttled"], th["max_temp"], th["resume_temp"],
                                        th["check_interval"], on_change=self.add_event)
        self._handoff: queue.Queue[tuple[Pipeline, Prepared] | None] | None = None
        self._last_scan = 0.0
        self._last_trim = time.monotonic()
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

        self.updater: Updater | None = None
        self.commands: Commands | None = None
        if cfg.update["enabled"] and self.slots is not None:  # imported only when on: a smaller daemon otherwise
            from edge_infer.updates import Updater

            self.updater = Updater(self, self.slots)
            self.updater.recover()
            self.updater.resume(previous)
        if cfg.commands["enabled"]:
            from edge_infer.commands import Commands

            self.commands = Commands(self)

    def _publisher(self, open_outbox: Callable[[], Outbox]) -> Publisher:
        """The MQTT side: its own outbox connection, the retained status, Home Assistant discovery, commands."""
        cfg = self.cfg
        publisher = Publisher(
            settings_from_config(cfg.mqtt, cfg.device["id"], cfg.commands["max_message_bytes"]),
            open_outbox,
            birth=lambda problems: status_payload(
                self.identity, "online", version=__version__, runtime=self.model.engine.runtime.to_dict(),
                problems=problems,
            ),
            will=lambda: status_payload(self.identity, "offline"),
            uploader=self._uploader(cfg),
            commands=self.inbox,
        )
        publisher.discovery = self._discovery()
        return publisher

    # ---- models: start-up choice, slots, swaps ----------------------------------------------------------------
    @staticmethod
    def _fleet_keys(cfg: Config) -> list:
        """`[fleet].keys`, loaded (only when updates or signed commands need them: that imports cryptography)."""
        if not (cfg.update["enabled"] or (cfg.commands["enabled"] and cfg.commands["auth"] == "signed")):
            return []
        try:
            return [load_public_key(k) for k in cfg.fleet["keys"]]
        except ValueError as exc:
            raise ConfigError(f"{cfg.path}: [fleet].keys: {exc}") from None

    def _slots(self, cfg: Config) -> Slots:
        bundle = Path(cfg.model["bundle"])
        try:
            sha = str(read_manifest_doc(bundle)[1]["model"]["sha256"])
        except (BundleError, KeyError, TypeError):
            sha = hashlib.sha256(bundle.read_bytes()).hexdigest() if bundle.is_file() else ""
        slots = Slots(cfg.update["slots_dir"], bundle, sha)
        if slots.reset_reason:
            log.warning("event=model_slots_reset reason=%r", slots.reset_reason)
            self._startup_events.append(("model_slots_reset", {"reason": slots.reset_reason}))
            slots.save()
        return slots

    def model_cfg(self, cfg: Config | None = None, overrides: dict | None = None) -> dict:
        """`[model]` with the remote `set-threshold` overrides on top (they persist in the slot state)."""
        cfg = cfg or self.cfg
        if overrides is None:
            overrides = self.slots.state.overrides if self.slots is not None else {}
        merged = dict(cfg.model)
        if "threshold" in overrides:
            merged["threshold"] = overrides["threshold"]
        if overrides.get("thresholds"):
            merged["thresholds"] = {**merged["thresholds"], **overrides["thresholds"]}
        return merged

    def open_model(self, bundle: Path | str) -> Model:
        """A bundle with this device's `[model]` settings (threads, runtime, thresholds, overrides)."""
        return model_from_config({**self.model_cfg(), "bundle": str(bundle)})

    def _start_model(self) -> tuple[Model, Model | None]:
        """The model to run: the active slot's (re-verified), else the config's. A model that was on probation
        when the daemon died is rolled back. Returns it and, when it is still being watched, the previous one."""
        if self.slots is None:
            return model_from_config(self.model_cfg()), None
        state = self.slots.state
        if state.probation is not None and not state.probation.get("clean_stop"):
            bad = self.slots.roll_back()
            reason = "the daemon stopped without a clean shutdown while the new model was being watched"
            log.error("event=model_rolled_back slot=%s reason=%r", bad, reason)
            self._startup_events.append(("model_rolled_back", {"reason": reason, "from_slot": bad,
                                                               "slot": state.active}))
        if state.active != CONFIG:
            try:
                if self.cfg.update["enabled"]:
                    verify_bundle(self.slots.path(state.active), self.fleet_keys)
                model = self.open_model(self.slots.path(state.active))
            except (SignatureError, BundleError, RuntimeUnavailable) as exc:
                reason = f"slot {state.active} cannot run ({exc}); running the config's bundle"
                log.error("event=model_slot_unusable reason=%r", reason)
                self._startup_events.append(("model_slot_unusable", {"slot": state.active, "reason": reason}))
                state.active, state.previous, state.probation = CONFIG, None, None
                self.slots.save()
            else:
                previous = None
                if state.probation is not None and state.previous is not None:
                    with contextlib.suppress(BundleError, RuntimeUnavailable):
                        previous = self.open_model(self.slots.path(state.previous))
                return model, previous
        return model_from_config(self.model_cfg()), None

    def _pipeline_for(self, model: Model, policy: Policy, capture: CaptureStore | None) -> Pipeline:
        cfg = self.cfg
        try:
            return Pipeline(model, None, cfg.gate["max_pixels"], cfg.gate["min_side"],
                            gate_from_config(cfg.gate, model.manifest.image_quality_reference), capture,
                            self._sensor_gate(cfg, model.manifest), policy)
        except ValueError as exc:
            raise ConfigError(f"{cfg.path}: [decide]: {exc}") from None

    def _monitor_for(self, pipeline: Pipeline) -> DriftMonitor:
        model = pipeline.model
        monitor = monitor_from_config(self.cfg.drift, model.manifest.drift_reference, model.thresholds.default)
        pipeline.colour_stats = any(s.name.startswith("mean.") for s in monitor.statistics)
        return monitor

    def serve(self, model: Model) -> None:
        """Switch to `model` between two inputs: its own gate reference, drift monitor and identity; the review
        folders, counters and fallbacks carry over. Inputs already prepared finish on the model that prepared
        them."""
        with self.swap_lock:
            old = self.pipeline
            pipeline = self._pipeline_for(model, old.policy, old.capture)
            pipeline.paths, pipeline.actions = old.paths, old.actions
            pipeline.max_pixels, pipeline.min_side = old.max_pixels, old.min_side
            self.monitor = self._monitor_for(pipeline)
            self.model = model
            self.identity = dataclasses.replace(self.identity, model=pipeline.info)
            self.pipeline = pipeline  # last: the front thread picks it up with its next input
        self.publisher.refresh(self._discovery())  # retained status and Home Assistant name the new model

    def _discovery(self) -> list[tuple[str, bytes]]:
        if not self.cfg.homeassistant["discovery"]:
            return []
        return discovery_messages(self.cfg.homeassistant["prefix"], self.cfg.mqtt["topic_prefix"],
                                  self.cfg.device["id"], self.model.task, self.identity.model)

    def shadow_result(self, model: Model, sample: Sample) -> TaskResult | None:
        """`model`'s result on a live input, prepared its own way (a shadow candidate; inference thread)."""
        if sample.window is not None:
            return model.run(model.window_tensor(sample.window))
        if sample.image is not None:
            image = standardize(sample.image)
        elif sample.data is not None:
            image = decode_image(sample.data, self.cfg.gate["max_pixels"], self.cfg.gate["min_side"],
                                 model.draft_size)
        else:
            return None
        return model.run(*model.input_for(image))

    # ---- remote commands ----------------------------------------------------------------------------------------
    def set_threshold(self, args: dict) -> dict:
        """`set-threshold`: {"threshold": x} and/or {"thresholds": {label: x}}, or {"reset": true}. Applied to the
        next input and kept across restarts (in the slot state) until reset."""
        assert self.slots is not None
        overrides = {} if args.get("reset") else dict(self.slots.state.overrides)
        if not args.get("reset"):
            if "threshold" not in args and "thresholds" not in args:
                raise ValueError("give threshold, thresholds (label → value) or reset")
            if "threshold" in args:
                value = args["threshold"]
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                        or value < 0:
                    raise ValueError(f"threshold: expected a number, got {value!r}")
                if problem := threshold_problem(self.model.task, float(value)):
                    raise ValueError(problem)
                overrides["threshold"] = float(value)
            if "thresholds" in args:
                table = args["thresholds"]
                labels = set(self.model.manifest.labels)
                if not isinstance(table, dict) or not all(
                        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in table.values()):
                    raise ValueError("thresholds: expected {label: number from 0 to 1}")
                if unknown := sorted(set(table) - labels):
                    raise ValueError(f"thresholds: unknown labels {', '.join(unknown)} (the model's: "
                                     f"{', '.join(sorted(labels))})")
                overrides["thresholds"] = {**overrides.get("thresholds", {}), **{k: float(v) for k, v in table.items()}}
        merged = self.model_cfg(overrides=overrides)
        with self.swap_lock:
            self.model.thresholds = Thresholds(self.model.manifest, merged["threshold"], merged["thresholds"])
            self.slots.state.overrides = overrides
            self.slots.save()
        log.info("event=threshold_set threshold=%s thresholds=%s", merged["threshold"], merged["thresholds"])
        return {"threshold": merged["threshold"], "thresholds": merged["thresholds"], "persisted": True}

    def snapshot(self) -> dict:
        """`snapshot`: the latest result, its input annotated, published once on `snapshot`."""
        from edge_infer.commands import CommandError
        from edge_infer.snapshot import snapshot_doc  # Pillow's drawing and fonts: only when a snapshot is asked for

        last = self._last
        if last is None:
            raise CommandError("no_result", "no input has produced a result since the daemon started")
        sample, result, decision, identity = last
        picture = snapshot_doc(sample.data if sample.data is not None else sample.image, result, decision)
        self.publisher.offer("snapshot", snapshot_payload(identity, sample, result, decision, picture))
        return {"topic": f"{self.cfg.mqtt['topic_prefix']}/{self.identity.device_id}/snapshot",
                "input": sample.input_id, "image": bool(picture)}

    def _control(self) -> None:
        """Commands that arrived, an unfinished transfer's clock, new bundles in incoming/ (control thread)."""
        if self.commands is not None and self.inbox is not None:
            while (item := self.inbox.get()) is not None:
                self.commands.handle(*item)
            self.commands.tick()
        if self.updater is not None and time.monotonic() - self._last_scan >= 1.0:
            self._last_scan = time.monotonic()
            self.updater.scan()

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
        if not self.source.live and self.outbox.is_processed(sample.source, sample.key):
            self.summary.skipped += 1
            return True
        return False

    def handle(self, sample: Sample) -> Outcome:
        """Process one sample and commit its result or rejection, with its checkpoint, to the outbox."""
        pipeline = self.pipeline
        return self._back(pipeline, self._timed("decode", pipeline.prepare, sample))

    def _back(self, pipeline: Pipeline, prepared: Prepared) -> Outcome:
        """The back half of one input, on the pipeline (model) that prepared it: inference, commit, pacing."""
        started = time.monotonic()
        try:
            outcome = self._timed("inference", pipeline.finish, prepared)
        except Exception as exc:  # a just-promoted model that fails is rolled back; the input runs again
            if self.updater is None or not self.updater.failed(pipeline, exc):
                raise
            pipeline = self.pipeline
            outcome = self._timed("inference", pipeline.finish, pipeline.prepare(prepared.sample))
        busy = time.monotonic() - started
        if self.updater is not None:
            self.updater.observe(pipeline, prepared.sample, outcome, busy * 1000.0)
        outcome = self.commit(prepared.sample, outcome, pipeline)
        self.governor.pace(time.monotonic() - started)
        return outcome

    def _timed(self, stage: str, work: Callable[[T], R], arg: T) -> R:
        """Run one stage of one input, visible to the watchdog while it runs."""
        self.progress.start(stage)
        try:
            return work(arg)
        finally:
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
        result, decision, verdict = outcome.result, outcome.decision, outcome.verdict
        if result is not None and decision is not None and self.commands is not None:
            self._last = (sample, result, decision, identity)  # one input kept, for `snapshot`
        # the queued payload builder must not pin the bytes, the frame or the window
        sample = dataclasses.replace(sample, data=None, image=None, window=None, times=None)
        decided_by = self.escalated_model if decision is not None and decision.path == "escalated" else None
        if result is not None and decision is not None and decision.action == "publish":
            kind = "results"

            def build(seq: int) -> bytes:
                return result_payload(identity, seq, msg_id, sample, result, decision, outcome.latency_ms,
                                      outcome.state, decided_by)
        elif result is None and self.cfg.gate["publish_rejections"]:
            kind = "rejections"

            def build(seq: int) -> bytes:
                return rejection_payload(identity, seq, msg_id, sample, verdict)
        else:  # suppressed, deferred, or an unpublished rejection: counted and checkpointed, not published
            kind, build = "results" if result is not None else "rejections", None

        # a live frame is never offered again: no checkpoint (the table would grow by every frame, forever)
        checkpoint = None if self.source.live else (sample.source, sample.key)
        forget = getattr(self.source, "forgets_committed", False)
        if not self.writer.put(Pending(kind, msg_id, build, checkpoint, after, forget), self.stop_event):
            return outcome  # stopping: not committed, so the input is processed again on the next start
        if result is not None and decision is not None:
            self.summary.results += 1
            self.summary.uncertain += decision.status == "uncertain"
            self.summary.suppressed += decision.action == "suppress"
            self.summary.deferred += decision.action == "defer"
            self.summary.escalated += decision.path == "escalated"
            log.debug("event=result input=%s task=%s status=%s path=%s action=%s", sample.input_id, result.task,
                      decision.status, decision.path, decision.action)
            if pipeline is self.pipeline:  # the drift reference is the current model's
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
            "threads": {"writer": self.writer.is_alive(), "publisher": self.publisher.is_alive()},
            "drift": self.monitor.to_dict(),
            **({"update": self.updater.to_dict()} if self.updater is not None else {}),
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
        for name, details in self._startup_events:
            self.add_event(name, details)
        self.publisher.start()
        watchdog = None
        if self.notifier.watchdog_s:
            watchdog = Watchdog(self.notifier, self.progress, self.notifier.watchdog_s, self.status_line)
            watchdog.start()
        self.watchdog = watchdog
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        self.notifier.send(READY=1, STATUS=self.status_line())
        try:
            if self.cfg.pipeline["mode"] == "pipelined":
                self._run_pipelined(once)
            else:
                for sample in self.source.samples(self.stop_event, once, self._done):
                    self.handle(sample)
            self.writer.flush()
            trim()  # the source is done: what the frames used goes back to the system
            if once:
                self._drain(self.cfg.mqtt["drain_timeout"])
            self._maybe_health(force=True)  # the final counts, sent before `offline`
            if self.updater is not None:
                self.updater.stopped_cleanly()
        finally:
            self.winding_down = True  # the writer and the publisher stop now, on purpose
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
        if self.failure is not None:
            raise DaemonFailed(self.failure)
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
        handoff: queue.Queue[tuple[Pipeline, Prepared] | None] = queue.Queue(maxsize=self.cfg.pipeline["queue_size"])
        failure: list[BaseException] = []

        def front() -> None:
            try:
                for sample in self.source.samples(self.stop_event, once, self._done):
                    pipeline = self.pipeline  # once per input: a model swap takes effect between inputs
                    prepared = self._timed("decode", pipeline.prepare, sample)
                    while not self.stop_event.is_set():
                        try:
                            handoff.put((pipeline, prepared), timeout=0.2)
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
        while (item := handoff.get()) is not None:
            self._back(*item)
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
        input arrives; and the check that the writer and the publisher still run."""
        while not self.stop_event.is_set():
            try:
                self._housekeeping_turn()
            except Exception:  # one failing step must never stop health, reloads and the thread check
                log.exception("event=housekeeping_error")
            self._check_threads()

    def _housekeeping_turn(self) -> None:
        if self.reload_requested.wait(min(0.5, max(0.05, self.cfg.health["interval"] or 0.5))):
            self.reload_requested.clear()
            self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
            self.reload()
            self.notifier.send(READY=1, STATUS=self.status_line())
        try:
            self._control()
        except Exception:  # commands and updates must never stop health, reloads and the thermal check
            log.exception("event=control_error")
        if time.monotonic() - self._last_trim >= TRIM_INTERVAL_S:
            self._last_trim = time.monotonic()
            trim()
        self.governor.check()
        self._maybe_health()

    def _check_threads(self) -> None:
        """A worker thread that died would leave a daemon that reads input and never stores or sends it: stop
        loudly instead (status problem, log line, non-zero exit), so systemd restarts the service."""
        dead = [t.name for t in (self.writer, self.publisher) if not t.is_alive()]
        if not dead or self.stop_event.is_set() or self.winding_down or self.failure is not None:
            return
        self.failure = f"the {', '.join(dead)} thread stopped unexpectedly"
        log.critical("event=thread_died threads=%s (stopping; the service manager restarts the daemon)",
                     ",".join(dead))
        self.publisher.set_problem("threads", self.failure)
        self.stop_event.set()

    def reload(self) -> dict[str, object]:
        """SIGHUP: re-read the config file; apply what can change while running (thresholds, fallbacks,
        debounce, gate limits, drift levels, health interval, log level) and name what needs a restart. One
        `config_reloaded` (or `config_reload_failed`) event says which."""
        try:
            new = load_config(self.cfg.path)
            with self.swap_lock:
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
