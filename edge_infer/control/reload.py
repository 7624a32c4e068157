"""SIGHUP: apply a changed config to a running daemon where that is safe, and say what needs a restart.

Applied live (each by replacing one object, which the pipeline reads once per input): thresholds, zones and
top-k; fallbacks, debounce and the review folders; gate limits and rejected-input keeping; drift levels;
health interval; log level. Everything else (model bundle and runtime, source, MQTT, outbox, pipeline, device)
keeps its running value until a restart, and is listed as `needs_restart`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from edge_infer.bundle import BundleError
from edge_infer.config import Config, ConfigError, load_config
from edge_infer.decide import Thresholds
from edge_infer.gates.quality import gate_from_config
from edge_infer.logs import setup_logging
from edge_infer.model import threshold_problem
from edge_infer.review import review_store
from edge_infer.serving import Serving, sensor_gate_for
from edge_infer.tasks.zones import zones_from_config

log = logging.getLogger(__name__)
LIVE_MODEL_KEYS = ("threshold", "thresholds", "zones", "top_k")
RESTART_SECTIONS = ("device", "source", "mqtt", "sink", "outbox", "pipeline", "service", "metrics", "web",
                    "thermal", "homeassistant", "fleet", "update", "commands")
RESTART_GATE_KEYS = ("baseline", "baseline_warmup")  # the baseline is built once, with the daemon
RESTART_DECIDE_KEYS = ("escalate_to", "escalate_threshold", "upload", "upload_max_bytes", "upload_chunk_bytes")


def _changed(old: Any, new: Any) -> list[str]:
    """The keys whose values differ between two tables of one section (a plug-in's table may have changed
    type: keys only one of them has count as changed)."""
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _needs_restart(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(every `section.key` that only a restart changes, the `[decide]` keys among them)."""
    restart: list[str] = []
    for section in RESTART_SECTIONS:
        restart += [f"{section}.{k}" for k in _changed(getattr(old, section), getattr(new, section))]
    restart += [f"model.{k}" for k in _changed(old.model, new.model) if k not in LIVE_MODEL_KEYS]
    restart += [f"gate.{k}" for k in _changed(old.gate, new.gate) if k in RESTART_GATE_KEYS]
    escalation_switch = "escalate" in (old.decide.fallback, new.decide.fallback) and \
        old.decide.fallback != new.decide.fallback
    decide_restart = [k for k in _changed(old.decide, new.decide) if k in RESTART_DECIDE_KEYS]
    decide_restart += ["fallback"] if escalation_switch else []
    restart += [f"decide.{k}" for k in decide_restart]
    return restart, decide_restart


def reload_from_file(serving: Serving, announce: Callable[[str, dict], None]) -> dict[str, object]:
    """Re-read the running config's file and `apply_reload` it; one `config_reloaded` (or, keeping the running
    config, `config_reload_failed`) event through `announce` says which. Returns that event's details."""
    try:
        applied, restart = apply_reload(serving, load_config(serving.cfg.path))
    except (ConfigError, BundleError, ValueError) as exc:
        log.error("event=config_reload_failed error=%r (keeping the running config)", str(exc))
        details: dict[str, object] = {"error": str(exc)[:500]}
        announce("config_reload_failed", details)
        return details
    log.info("event=config_reloaded applied=%s needs_restart=%s", ",".join(applied) or "-", ",".join(restart) or "-")
    details = {"applied": applied, "needs_restart": restart}
    announce("config_reloaded", details)
    return details


def apply_reload(serving: Serving, new: Config) -> tuple[list[str], list[str]]:
    """Apply `new` to what `serving` runs; returns (applied, needs_restart) as `section.key` names. What can
    still fail is checked before anything changes: a refused reload (ValueError, ConfigError) changes nothing.
    Holds the port's lock throughout: a model swap never interleaves with it."""
    with serving.lock:
        return _apply(serving, new)


def _apply(serving: Serving, new: Config) -> tuple[list[str], list[str]]:
    old = serving.cfg
    restart, decide_restart = _needs_restart(old, new)
    model, pipeline = serving.model, serving.pipeline
    live_cfg = serving.model_cfg(new)  # the remote set-threshold overrides stay on top of the file's values
    if problem := threshold_problem(model.task, live_cfg.threshold):
        raise ValueError(problem)
    changes: dict[str, Any] = {}
    applied = [f"model.{k}" for k in _changed(old.model, new.model) if k in LIVE_MODEL_KEYS]
    if applied:
        changes["model"] = model.with_rules(
            thresholds=Thresholds(model.manifest, live_cfg.threshold, dict(live_cfg.thresholds)),
            zones=zones_from_config(new.model.zones), top_k=new.model.top_k)

    live_decide = [k for k in _changed(old.decide, new.decide) if k not in decide_restart]
    if live_decide:
        d = new.decide
        uncertain = pipeline.policy.uncertain
        if {"keep_uncertain", "keep_uncertain_bytes", "uncertain_dir"} & set(live_decide):
            uncertain = review_store(d.uncertain_dir, d.keep_uncertain, d.keep_uncertain_bytes)
        fallback = old.decide.fallback if "fallback" in decide_restart else d.fallback
        changes["policy"] = dataclasses.replace(
            pipeline.policy, fallback=fallback, escalate_fallback=d.escalate_fallback, debounce=d.debounce,
            uncertain=uncertain)
        applied += [f"decide.{k}" for k in live_decide]

    gate_changes = [k for k in _changed(old.gate, new.gate) if k not in RESTART_GATE_KEYS]
    if gate_changes:
        g = new.gate
        if pipeline.sensor_gate is not None:
            changes["sensor_gate"] = sensor_gate_for(new, model.manifest)
        else:
            changes["gate"] = gate_from_config(g, model.manifest.image_quality_reference)
        changes["capture"] = review_store(g.rejected_dir, g.keep_rejected, g.keep_rejected_bytes)
        changes["max_pixels"], changes["min_side"] = g.max_pixels, g.min_side
        applied += [f"gate.{k}" for k in gate_changes]

    drift_changes = _changed(old.drift, new.drift)
    if drift_changes:
        changes["monitor"] = serving.monitor_for(model, new.drift)
        applied += [f"drift.{k}" for k in drift_changes]
    applied += [f"health.{k}" for k in _changed(old.health, new.health)]
    if old.log != new.log:
        setup_logging(new.log.level, new.log.format)
        applied += [f"log.{k}" for k in _changed(old.log, new.log)]

    # the running config: live parts from `new`, the rest as it runs until a restart
    keep = {section: getattr(old, section) for section in RESTART_SECTIONS}
    model_cfg = dataclasses.replace(old.model, **{k: getattr(new.model, k) for k in LIVE_MODEL_KEYS})
    decide_cfg = dataclasses.replace(new.decide, **{k: getattr(old.decide, k) for k in decide_restart})
    gate_cfg = dataclasses.replace(new.gate, **{k: getattr(old.gate, k) for k in RESTART_GATE_KEYS})
    serving.apply(dataclasses.replace(new, model=model_cfg, decide=decide_cfg, gate=gate_cfg, **keep), **changes)
    return applied, sorted(set(restart))
