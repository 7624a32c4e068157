"""Model updates: signed bundle in → verified → canary on golden inputs → (shadow) → promoted → watched → kept
or rolled back. Every step is one event on `events`; a refused bundle never touches the running model.

Bundles arrive in `[update].incoming_dir` (write them as `*.part` and rename, or copy in and let them settle)
or over MQTT in chunks (`cmd/update-model`, see `edge_infer.control.transfer`). The verify and canary steps run
on the daemon's control thread; the shadow and watch steps observe live results on the inference thread, and a
rollback swaps back (through the serving port) to the previous model — kept loaded during the watch window —
between two inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_infer.bundle import BundleError, read_parts
from edge_infer.control import AddEvent
from edge_infer.golden import canary, read_golden
from edge_infer.messages import EVENT_SEVERITY
from edge_infer.model import Model
from edge_infer.pipeline import Outcome, Pipeline
from edge_infer.runtime import RuntimeUnavailable
from edge_infer.sections import UpdateConfig
from edge_infer.serving import Serving
from edge_infer.signing import SignatureError, verify_bundle
from edge_infer.slots import Slots
from edge_infer.sources import Sample

log = logging.getLogger(__name__)
SETTLE_S = 1.0  # a file in incoming/ unchanged this long is complete
KEEP_REFUSED = 5  # refused bundles kept in incoming/refused/ for the owner to look at
MIN_WATCHED = 50  # results before the watch may judge a regression
MIN_LATENCY_RISE_MS = 5.0  # a latency regression is also this much slower, not only `watch_latency_ratio` ×
PROCESSING = ".processing"  # a bundle is moved here before it is looked at: a crash cannot offer it again


def _p95(values: Any) -> float | None:
    values = list(values)
    return float(np.percentile(values, 95)) if len(values) >= 20 else None


@dataclass
class Watch:
    """The watch window after a promotion: the new model's live results against the old model's baseline."""

    baseline_uncertain: float | None
    baseline_p95_ms: float | None
    results: int = 0
    uncertain: int = 0
    times_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"results": self.results, "uncertain_rate": round(self.uncertain / self.results, 4) if self.results
                else None, "baseline_uncertain_rate": self.baseline_uncertain,
                "p95_ms": _p95(self.times_ms), "baseline_p95_ms": self.baseline_p95_ms}


def regression(watch: Watch, cfg: UpdateConfig) -> str | None:
    """Why the watched model is worse than the one it replaced, or None: its uncertain rate rose more than
    `max_uncertain_increase`, or its p95 inference time is above `watch_latency_ratio` × before *and* at least
    `MIN_LATENCY_RISE_MS` more (below that, a sub-millisecond model's p95 is scheduling noise)."""
    rate, allowed = watch.uncertain / watch.results, cfg.max_uncertain_increase
    if watch.baseline_uncertain is not None and rate - watch.baseline_uncertain > allowed:
        return (f"uncertain rate rose from {watch.baseline_uncertain:.1%} to {rate:.1%} over {watch.results} "
                f"results (allowed: +{allowed:.0%})")
    p95, before = _p95(watch.times_ms), watch.baseline_p95_ms
    if before and p95 and p95 > cfg.watch_latency_ratio * before and p95 - before >= MIN_LATENCY_RISE_MS:
        return f"p95 inference time rose from {before:.2f} ms to {p95:.2f} ms (allowed: ×{cfg.watch_latency_ratio})"
    return None


@dataclass
class Shadow:
    """A candidate running beside the live model on the next `needed` inputs before it may be promoted."""

    model: Model
    slot: str
    needed: int
    canary: dict[str, Any]
    seen: int = 0
    agreed: int = 0
    uncertain: int = 0


class Updater:
    """The update steps on the serving port. `live_latency` gives the running model's inference latency
    summary (`{"inference": {"n", "p95_ms", …}}`), the canary's latency yardstick."""

    def __init__(self, update_cfg: UpdateConfig, slots: Slots, keys: list, serving: Serving,
                 add_event: AddEvent, live_latency: Callable[[], dict[str, Any]]) -> None:
        self.serving = serving
        self.slots = slots
        self.add_event = add_event
        self.live_latency = live_latency
        cfg = update_cfg
        self.cfg = cfg
        self.keys = keys
        self.incoming = Path(cfg.incoming_dir)
        self.previous: Model | None = None  # kept loaded while the promoted model is watched
        self.watch: Watch | None = None
        self.shadow: Shadow | None = None
        self.recent: deque[tuple[bool, float]] = deque(maxlen=max(cfg.watch, MIN_WATCHED))
        self.lock = serving.lock  # promotion, rollback and reload never interleave
        self._sizes: dict[str, tuple[int, float]] = {}

    # ---- arrival ---------------------------------------------------------------------------------------------
    def scan(self) -> None:
        """Offer every settled bundle in the incoming folder (control thread)."""
        try:
            entries = sorted(p for p in self.incoming.iterdir() if p.is_file() and not p.name.startswith(".")
                             and not p.name.endswith(".part"))
        except FileNotFoundError:
            return
        now = time.time()
        for path in entries:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # taken away between the listing and now
            seen = self._sizes.get(path.name)
            self._sizes[path.name] = (st.st_size, st.st_mtime)
            if seen != (st.st_size, st.st_mtime) or now - st.st_mtime < SETTLE_S:
                continue  # still being written
            self._sizes.pop(path.name, None)
            self.take(path, "incoming")

    def take(self, path: Path, source: str) -> dict[str, Any]:
        """The whole intake of one bundle file; returns what became of it (the answer to `update-model`). The
        file is consumed: first moved out of incoming/ (so a crash while it is checked cannot offer it again),
        then into a slot, or into incoming/refused/. Only a regular file within `max_bundle_bytes` is read."""
        work = self.incoming / PROCESSING
        work.mkdir(parents=True, exist_ok=True)
        taken = work / path.name
        try:
            os.replace(path, taken)
        except OSError as exc:
            log.warning("event=update_not_taken file=%s error=%r", path.name, exc.strerror)
            return {"ok": False, "reason": "unreadable", "detail": f"cannot take the file: {exc.strerror}"}
        try:
            fd = os.open(taken, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:  # ELOOP: a symbolic link is never followed
            return self._refuse(taken, {"source": source, "file": path.name}, "not_a_file",
                                f"cannot open it without following links: {exc.strerror}")
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            received: dict[str, Any] = {"source": source, "file": path.name, "bytes": st.st_size}
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.cfg.max_bundle_bytes:
                what = "not a regular file" if not stat.S_ISREG(st.st_mode) else \
                    f"{st.st_size} bytes, over [update].max_bundle_bytes ({self.cfg.max_bundle_bytes})"
                return self._refuse(taken, received, "too_large" if stat.S_ISREG(st.st_mode) else "not_a_file",
                                    what)
            received["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
        self._event("update_received", received)
        try:
            outcome = self._intake(taken, received)
        except Exception as exc:  # never let an update take the daemon down
            log.exception("event=update_error file=%s", path.name)
            outcome = self._refuse(path, received, "error", f"{type(exc).__name__}: {exc}")
        return outcome

    def _intake(self, path: Path, received: dict[str, Any]) -> dict[str, Any]:
        if self.watch is not None or self.shadow is not None:
            what = "watched after its promotion" if self.watch is not None else "running in shadow"
            return self._refuse(path, received, "busy", f"another update is being {what}; send this one after it "
                                                        "is confirmed or rolled back")
        try:
            signer = verify_bundle(path, self.keys, self.cfg.max_bundle_bytes)
        except SignatureError as exc:
            return self._refuse(path, received, exc.reason, exc.detail)
        slot = self.slots.candidate()
        target = self.slots.path(slot)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        try:
            verify_bundle(target, self.keys)  # the copy is what runs: check it, not the original
            candidate = self.serving.open_model(target)
            golden = read_golden(read_parts(target).members)
        except (SignatureError, BundleError, RuntimeUnavailable, ValueError) as exc:
            target.unlink(missing_ok=True)
            return self._refuse(path, received, "does_not_load", str(exc))
        running = self.serving.model
        if candidate.kind != running.kind or candidate.task != running.task:
            target.unlink(missing_ok=True)
            return self._refuse(path, received, "incompatible",
                                f"the new model is a {candidate.kind} {candidate.task} model, the running one a "
                                f"{running.kind} {running.task} model (change the config and restart instead)")
        if golden is None:
            target.unlink(missing_ok=True)
            return self._refuse(path, received, "no_golden", "the bundle carries no golden inputs to run a canary "
                                                             "on (edge-convert adds them; see --golden)")
        report = canary(candidate, golden, self.cfg.min_agreement, self._budget_ms())
        details = {**received, "slot": slot, "signed_by": signer, "model": candidate.info,
                   "canary": report.to_dict()}
        if not report.passed:
            target.unlink(missing_ok=True)
            self._event("canary_failed", details)
            return self._refuse(path, received, "canary_failed", report.reason, announce=False)
        self._event("canary_passed", details)
        path.unlink(missing_ok=True)
        if self.cfg.shadow > 0:
            with self.lock:
                self.shadow = Shadow(candidate, slot, self.cfg.shadow, report.to_dict())
            self._event("shadow_started", {"slot": slot, "model": candidate.info, "inputs": self.cfg.shadow})
            return {"ok": True, "step": "shadow", **details}
        self.promote(candidate, slot, report.to_dict())
        return {"ok": True, "step": "promoted", **details}

    def _budget_ms(self) -> float | None:
        """The canary's latency budget: `max_latency_ms`, and `max_latency_ratio` × the running model's live
        p95 inference time (when there is one) — whichever is tighter."""
        budgets = []
        if self.cfg.max_latency_ms is not None:
            budgets.append(float(self.cfg.max_latency_ms))
        live = self.live_latency().get("inference")
        if live and live["n"] >= 20:
            budgets.append(self.cfg.max_latency_ratio * live["p95_ms"])
        return min(budgets) if budgets else None

    def _refuse(self, path: Path, received: dict[str, Any], reason: str, detail: str,
                announce: bool = True) -> dict[str, Any]:
        """Keep a refused bundle in incoming/refused/ (the newest few) and say why; the running model stays."""
        if announce:
            self._event("update_refused", {**received, "reason": reason, "detail": detail[:500]})
        refused = self.incoming / "refused"
        try:
            refused.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                os.replace(path, refused / path.name)
            for old in sorted(refused.iterdir(), key=lambda p: p.lstat().st_mtime)[:-KEEP_REFUSED]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("event=update_refused_not_kept file=%s error=%r", path.name, str(exc))
        return {"ok": False, "reason": reason, "detail": detail[:500], **received}

    # ---- promotion, watch, rollback ---------------------------------------------------------------------------
    def promote(self, candidate: Model, slot: str, canary_report: dict[str, Any]) -> None:
        with self.lock:
            old = self.serving.model
            recent = list(self.recent)  # one C-level copy: the inference thread appends meanwhile
            baseline = [u for u, _ in recent], [t for _, t in recent]
            watch = Watch(round(sum(baseline[0]) / len(baseline[0]), 4) if len(baseline[0]) >= 20 else None,
                          _p95(baseline[1]))
            self.serving.serve(candidate)  # first: if it cannot serve, nothing has changed
            state = self.slots.state
            previous_slot = state.active
            state.previous, state.active = previous_slot, slot
            baseline_doc = {"uncertain_rate": watch.baseline_uncertain, "p95_ms": watch.baseline_p95_ms}
            state.probation = ({"since": time.time(), "clean_stop": False, "baseline": baseline_doc}
                               if self.cfg.watch > 0 else None)
            self.slots.save()
            self.recent.clear()
            if self.cfg.watch > 0:
                self.previous, self.watch = old, watch
        self._event("model_promoted", {"from": old.info, "to": candidate.info, "slot": slot,
                                       "previous_slot": previous_slot, "canary": canary_report,
                                       "watch": self.cfg.watch})

    def observe(self, pipeline: Pipeline, sample: Sample, outcome: Outcome, inference_ms: float) -> None:
        """One finished input (inference thread): shadow comparison, watch-window accounting, baseline."""
        if outcome.result is None or outcome.decision is None:
            return
        uncertain = outcome.decision.status == "uncertain"
        if pipeline.info is not self.serving.pipeline.info:
            return  # an input the previous model prepared before a swap
        self.recent.append((uncertain, inference_ms))
        if self.shadow is not None:
            self._shadow(sample, outcome)
        watch = self.watch
        if watch is None:
            return
        watch.results += 1
        watch.uncertain += uncertain
        watch.times_ms.append(inference_ms)
        if watch.results >= MIN_WATCHED and (watch.results % 25 == 0 or watch.results >= self.cfg.watch):
            problem = self._regression(watch)
            if problem:
                self.rollback(problem)
            elif watch.results >= self.cfg.watch:
                self._confirm()

    def _regression(self, watch: Watch) -> str | None:
        return regression(watch, self.cfg)

    def failed(self, pipeline: Pipeline, exc: BaseException) -> bool:
        """The promoted model raised on a live input (inference thread): roll back now and tell the caller to run
        the input again on the previous model. False when there is nothing to roll back to."""
        if self.watch is None or self.previous is None or pipeline.info is not self.serving.pipeline.info:
            return False
        self.rollback(f"the new model failed on a live input: {type(exc).__name__}: {exc}"[:300])
        return True

    def _confirm(self) -> None:
        with self.lock:
            watch, self.watch, self.previous = self.watch, None, None
            self.slots.state.probation = None
            self.slots.save()
        self._event("model_confirmed", {"model": self.serving.model.info, "slot": self.slots.state.active,
                                        "watch": watch.to_dict() if watch else {}})

    def rollback(self, reason: str) -> None:
        """Back to the previous model (kept loaded), between two inputs."""
        with self.lock:
            previous, watch = self.previous, self.watch
            if previous is None:
                return
            bad, state = self.serving.model, self.slots.state
            self.slots.roll_back()
            self.serving.serve(previous)
            self.previous, self.watch = None, None
            self.recent.clear()
        self._event("model_rolled_back", {"reason": reason, "from": bad.info, "to": previous.info,
                                          "slot": state.active, "watch": watch.to_dict() if watch else {}})

    def _shadow(self, sample: Sample, outcome: Outcome) -> None:
        """Run the shadow candidate on the same input (its own preprocessing) and compare."""
        shadow = self.shadow
        assert shadow is not None and outcome.result is not None
        try:
            result = self.serving.shadow_result(shadow.model, sample)
        except Exception as exc:
            self.shadow = None
            self.slots.path(shadow.slot).unlink(missing_ok=True)
            self._event("shadow_failed", {"slot": shadow.slot, "model": shadow.model.info,
                                          "reason": f"{type(exc).__name__}: {exc}"[:300]})
            return
        if result is None:
            return
        shadow.seen += 1
        shadow.agreed += self.serving.model.task_impl.agrees(result, outcome.result)  # the task says what agrees
        if shadow.seen < shadow.needed:
            return
        agreement = shadow.agreed / shadow.seen
        details = {"slot": shadow.slot, "model": shadow.model.info, "inputs": shadow.seen,
                   "agreement": round(agreement, 4), "required": self.cfg.shadow_min_agreement}
        self.shadow = None
        if agreement < self.cfg.shadow_min_agreement:
            self.slots.path(shadow.slot).unlink(missing_ok=True)
            self._event("shadow_failed", {**details, "reason": f"agreed with the running model on {agreement:.1%} "
                                                               "of live inputs"})
            return
        self._event("shadow_passed", details)
        self.promote(shadow.model, shadow.slot, shadow.canary)

    def to_dict(self) -> dict[str, Any]:
        """For `health`: the active slot, and a watch or shadow in progress."""
        doc: dict[str, Any] = {"slot": self.slots.state.active}
        if self.watch is not None:
            doc["watching"] = {**self.watch.to_dict(), "of": self.cfg.watch}
        if self.shadow is not None:
            doc["shadow"] = {"slot": self.shadow.slot, "seen": self.shadow.seen, "of": self.shadow.needed,
                             "agreed": self.shadow.agreed}
        return doc

    # ---- start and stop ---------------------------------------------------------------------------------------
    def stopped_cleanly(self) -> None:
        """A clean stop during the watch window: the next start watches again instead of rolling back."""
        if self.slots.state.probation is not None:
            self.slots.state.probation["clean_stop"] = True
            self.slots.save()

    def recover(self) -> None:
        """At start: a bundle left in incoming/.processing/ was being checked when the daemon died — refuse it
        (kept in refused/) instead of offering it again."""
        work = self.incoming / PROCESSING
        try:
            left = sorted(work.iterdir())
        except FileNotFoundError:
            return
        for path in left:
            self._refuse(path, {"source": "incoming", "file": path.name}, "interrupted",
                         "the daemon stopped while this bundle was being checked; offer it again to retry")

    def resume(self, previous: Model | None) -> None:
        """At start: a model on probation gets a new watch window, with the baseline it was promoted against."""
        probation = self.slots.state.probation
        if probation is None or previous is None or self.cfg.watch <= 0:
            return
        base = probation.get("baseline", {})
        self.previous = previous
        self.watch = Watch(base.get("uncertain_rate"), base.get("p95_ms"))
        probation["clean_stop"] = False
        self.slots.save()

    def _event(self, name: str, details: dict[str, Any]) -> None:
        """One `events` message and one log line (at the event's severity) per step."""
        level = {"warning": logging.WARNING, "error": logging.ERROR}.get(EVENT_SEVERITY.get(name, ""), logging.INFO)
        log.log(level, "event=%s %s", name, " ".join(
            f"{k}={json.dumps(v, separators=(',', ':'), ensure_ascii=False)[:300]}" for k, v in details.items()))
        self.add_event(name, details)
