"""SIGHUP: apply a changed config to a running daemon where that is safe, and say what needs a restart.

Applied live (each by replacing one object, which the pipeline reads once per input): thresholds, zones and
top-k; fallbacks, debounce and the review folders; gate limits and rejected-input keeping; drift levels;
health interval; log level. Everything else (model bundle and runtime, source, MQTT, outbox, pipeline, device)
keeps its running value until a restart, and is listed as `needs_restart`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from edge_infer.capture import review_store
from edge_infer.config import Config
from edge_infer.decide import Debouncer, Thresholds
from edge_infer.gates.quality import gate_from_config
from edge_infer.logs import setup_logging
from edge_infer.model import threshold_problem, zones_from_config
from edge_infer.monitor import monitor_from_config

if TYPE_CHECKING:
    from edge_infer.daemon import Daemon

LIVE_MODEL_KEYS = ("threshold", "thresholds", "zones", "top_k")
RESTART_SECTIONS = ("device", "source", "mqtt", "outbox", "pipeline", "service", "metrics", "thermal",
                    "homeassistant", "fleet", "update", "commands")
RESTART_DECIDE_KEYS = ("escalate_to", "escalate_threshold", "upload", "upload_max_bytes", "upload_chunk_bytes")


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def apply_reload(daemon: Daemon, new: Config) -> tuple[list[str], list[str]]:
    """Apply `new` to `daemon`; returns (applied, needs_restart) as `section.key` names."""
    old = daemon.cfg
    applied: list[str] = []
    restart: list[str] = []
    for section in RESTART_SECTIONS:
        restart += [f"{section}.{k}" for k in _changed(getattr(old, section), getattr(new, section))]
    model_changes = _changed(old.model, new.model)
    restart += [f"model.{k}" for k in model_changes if k not in LIVE_MODEL_KEYS]
    decide_changes = _changed(old.decide, new.decide)
    escalation_switch = "escalate" in (old.decide["fallback"], new.decide["fallback"]) and \
        old.decide["fallback"] != new.decide["fallback"]
    decide_restart = [k for k in decide_changes if k in RESTART_DECIDE_KEYS] + (["fallback"] if escalation_switch
                                                                               else [])
    restart += [f"decide.{k}" for k in decide_restart]

    model, pipeline = daemon.model, daemon.pipeline
    # what can still fail is checked before anything changes: a refused reload leaves the daemon as it was
    live_cfg = daemon.model_cfg(new)  # the remote set-threshold overrides stay on top of the file's values
    threshold = live_cfg["threshold"]
    if problem := threshold_problem(model.task, threshold):
        raise ValueError(problem)
    gate_changes = _changed(old.gate, new.gate)
    sensor_gate = daemon._sensor_gate(new, model.manifest) if gate_changes and pipeline.sensor_gate else None

    live_model = [k for k in model_changes if k in LIVE_MODEL_KEYS]
    if {"threshold", "thresholds"} & set(live_model):
        model.thresholds = Thresholds(model.manifest, threshold, dict(live_cfg["thresholds"]))
    if "zones" in live_model:
        model.zones = zones_from_config(new.model["zones"])
    if "top_k" in live_model:
        model.top_k = new.model["top_k"]
    applied += [f"model.{k}" for k in live_model]

    live_decide = [k for k in decide_changes if k not in decide_restart]
    if live_decide:
        d = new.decide
        uncertain = pipeline.policy.uncertain
        if {"keep_uncertain", "keep_uncertain_bytes", "uncertain_dir"} & set(live_decide):
            uncertain = review_store(d["uncertain_dir"], d["keep_uncertain"], d["keep_uncertain_bytes"])
        fallback = d["fallback"] if not escalation_switch else old.decide["fallback"]
        pipeline.policy = dataclasses.replace(
            pipeline.policy, fallback=fallback, escalate_fallback=d["escalate_fallback"],
            debounce=tuple(d["debounce"]) if d["debounce"] else None, uncertain=uncertain)  # type: ignore[arg-type]
        if "debounce" in live_decide:
            pipeline.debouncer = Debouncer(*d["debounce"]) if d["debounce"] else None
        applied += [f"decide.{k}" for k in live_decide]

    if gate_changes:
        g = new.gate
        if sensor_gate is not None:
            pipeline.sensor_gate = sensor_gate
        else:
            pipeline.gate = gate_from_config(g, model.manifest.image_quality_reference)
        pipeline.max_pixels, pipeline.min_side = g["max_pixels"], g["min_side"]
        pipeline.capture = review_store(g["rejected_dir"], g["keep_rejected"], g["keep_rejected_bytes"])
        applied += [f"gate.{k}" for k in gate_changes]

    drift_changes = _changed(old.drift, new.drift)
    if drift_changes:
        dr = new.drift
        daemon.monitor = monitor_from_config(dr, model.manifest.drift_reference, model.thresholds.default)
        applied += [f"drift.{k}" for k in drift_changes]
    applied += [f"health.{k}" for k in _changed(old.health, new.health)]
    if old.log != new.log:
        setup_logging(new.log["level"], new.log["format"])
        applied += [f"log.{k}" for k in _changed(old.log, new.log)]

    # the running config: live parts from `new`, the rest as it runs until a restart
    keep = {section: getattr(old, section) for section in RESTART_SECTIONS}
    model_cfg = {**old.model, **{k: new.model[k] for k in LIVE_MODEL_KEYS}}
    decide_cfg = {**new.decide, **{k: old.decide[k] for k in decide_restart}}
    daemon.cfg = dataclasses.replace(new, model=model_cfg, decide=decide_cfg, **keep)
    return applied, sorted(set(restart))
