"""The serving port: everything a model swap changes, owned in one place.

`Serving` holds the running model, its pipeline (gates, rules, fallbacks), its drift monitor, the identity every
message carries, and the running config they were built from. The inference thread reads `pipeline` once per
input; `serve` (a promotion or a rollback), `set_threshold` and `apply` (a reload) replace parts of it under
`lock`, between two inputs. The control code (commands, reload, updates) receives this port and an event
callable, never the daemon.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_infer.config import Config, ConfigError
from edge_infer.decide import Thresholds
from edge_infer.gates.baseline import SceneBaseline
from edge_infer.gates.quality import gate_from_config
from edge_infer.gates.sensor import SensorGate, sensor_gate_from_config
from edge_infer.manifest import Manifest, SensorInputSpec
from edge_infer.messages import Identity
from edge_infer.model import Model, model_from_config, threshold_problem
from edge_infer.monitor import DriftChange, DriftMonitor, monitor_from_config
from edge_infer.options import freeze
from edge_infer.pipeline import Outcome, Pipeline, Policy, tensor_for
from edge_infer.review import CaptureStore
from edge_infer.runtime import Engine
from edge_infer.sections import DriftConfig, ModelConfig
from edge_infer.slots import Slots
from edge_infer.sources import Sample
from edge_infer.tasks import TaskResult
from edge_infer.tasks.classification import Classification

log = logging.getLogger(__name__)


def sensor_gate_for(cfg: Config, manifest: Manifest) -> SensorGate | None:
    """`[gate]` for a sensor model (None for an image model); a one-line config error when it does not fit."""
    if not isinstance(manifest.input, SensorInputSpec):
        return None
    try:
        return sensor_gate_from_config(cfg.gate, manifest.input, manifest.sensor_reference)
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: {exc}") from None


def model_settings(cfg: Config, overrides: dict[str, Any]) -> ModelConfig:
    """`[model]` with the remote `set-threshold` overrides on top (they persist in the slot state)."""
    changes: dict[str, Any] = {}
    if "threshold" in overrides:
        changes["threshold"] = overrides["threshold"]
    if overrides.get("thresholds"):
        changes["thresholds"] = freeze({**cfg.model.thresholds, **overrides["thresholds"]})
    return dataclasses.replace(cfg.model, **changes)


def threshold_overrides(args: dict[str, Any], current: dict[str, Any], model: Model) -> dict[str, Any]:
    """`set-threshold`'s arguments → the new overrides (raises ValueError with a one-line reason)."""
    if args.get("reset"):
        return {}
    if "threshold" not in args and "thresholds" not in args:
        raise ValueError("give threshold, thresholds (label → value) or reset")
    overrides = dict(current)
    if "threshold" in args:
        value = args["threshold"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"threshold: expected a number, got {value!r}")
        if problem := threshold_problem(model.task, float(value)):
            raise ValueError(problem)
        overrides["threshold"] = float(value)
    if "thresholds" in args:
        table = args["thresholds"]
        labels = set(model.manifest.labels)
        if not isinstance(table, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in table.values()):
            raise ValueError("thresholds: expected {label: number from 0 to 1}")
        if unknown := sorted(set(table) - labels):
            raise ValueError(f"thresholds: unknown labels {', '.join(unknown)} (the model's: "
                             f"{', '.join(sorted(labels))})")
        overrides["thresholds"] = {**overrides.get("thresholds", {}), **{k: float(v) for k, v in table.items()}}
    return overrides


class Serving:
    """The running model and everything built for it (see the module docstring for who may change what)."""

    def __init__(self, cfg: Config, model: Model, policy: Policy, rejected: CaptureStore | None,
                 slots: Slots | None = None, baseline: SceneBaseline | None = None) -> None:
        self.cfg = cfg
        self.slots = slots
        self.lock = threading.RLock()  # a swap (update, rollback), a reload and set-threshold never interleave
        self.on_swap: list[Callable[[], None]] = []  # told after each `serve` (the sink re-announces the model)
        self.monitor = self.monitor_for(model)
        self.pipeline = self.pipeline_for(model, policy, rejected, baseline)
        self.identity = Identity(device_id=cfg.device.id, boot_id=str(uuid.uuid4()), model=self.pipeline.info)

    @property
    def model(self) -> Model:
        """The model the pipeline runs (with its rules)."""
        return self.pipeline.model

    # ---- building ----------------------------------------------------------------------------------------------
    def model_cfg(self, cfg: Config | None = None, overrides: dict[str, Any] | None = None) -> ModelConfig:
        """`[model]` of `cfg` (the running one by default) with the persisted threshold overrides on top."""
        if overrides is None:
            overrides = self.slots.state.overrides if self.slots is not None else {}
        return model_settings(cfg or self.cfg, overrides)

    def open_model(self, bundle: Path | str) -> Model:
        """A bundle with this device's `[model]` settings (threads, runtime, thresholds, overrides)."""
        return model_from_config(dataclasses.replace(self.model_cfg(), bundle=str(bundle)))

    def pipeline_for(self, model: Model, policy: Policy, rejected: CaptureStore | None,
                     baseline: SceneBaseline | None = None) -> Pipeline:
        """A pipeline for `model` under the running `[gate]` (call `monitor_for(model)` first: the pipeline
        measures colour when the monitor follows it)."""
        cfg = self.cfg
        try:
            return Pipeline(model, None, cfg.gate.max_pixels, cfg.gate.min_side,
                            gate_from_config(cfg.gate, model.manifest.image_quality_reference), rejected,
                            sensor_gate_for(cfg, model.manifest), policy, _wants_colour(self.monitor), baseline)
        except ValueError as exc:
            raise ConfigError(f"{cfg.path}: [decide]: {exc}") from None

    def monitor_for(self, model: Model, drift: DriftConfig | None = None) -> DriftMonitor:
        return monitor_from_config(drift or self.cfg.drift, model.manifest.drift_reference, model.thresholds.default)

    # ---- changing ----------------------------------------------------------------------------------------------
    def serve(self, model: Model) -> None:
        """Switch to `model` between two inputs: its own gate reference, drift monitor and identity; the review
        folders, counters and fallbacks carry over. Inputs already prepared finish on the model that prepared
        them."""
        with self.lock:
            old = self.pipeline
            self.monitor = self.monitor_for(model)
            pipeline = self.pipeline_for(model, old.policy, old.capture, old.baseline)
            pipeline.paths, pipeline.actions = old.paths, old.actions  # the run's counters (not yet serving)
            pipeline.max_pixels, pipeline.min_side = old.max_pixels, old.min_side
            self.identity = dataclasses.replace(self.identity, model=pipeline.info)
            self.pipeline = pipeline  # last: the front thread picks it up with its next input
        for listener in self.on_swap:
            listener()

    def apply(self, cfg: Config, *, model: Model | None = None, monitor: DriftMonitor | None = None,
              **parts: Any) -> None:
        """A reload's live changes: `model` (new rules), `monitor` and pipeline parts (see
        `Pipeline.REPLACEABLE`) become a new pipeline swapped in between two inputs; `cfg` becomes the running
        config."""
        with self.lock:
            if monitor is not None:
                self.monitor = monitor
                parts["colour_stats"] = _wants_colour(monitor)
            if model is not None:
                parts["model"] = model
            self.pipeline = self.pipeline.replaced(**parts)
            self.cfg = cfg

    def use_engine(self, engine: Engine) -> None:
        """Run the same model (same rules) on another interpreter of it from the next input on — the accelerator
        back after a CPU fallback. Inputs already under way finish on the interpreter they started on."""
        with self.lock:
            self.pipeline = self.pipeline.replaced(model=self.pipeline.model.on_engine(engine))

    def set_threshold(self, args: dict[str, Any]) -> dict[str, Any]:
        """`set-threshold`: {"threshold": x} and/or {"thresholds": {label: x}}, or {"reset": true}. Applied to the
        next input and kept across restarts (in the slot state) until reset. Raises ValueError to refuse."""
        if self.slots is None:
            raise ValueError("set-threshold needs [update] or [commands] enabled (it persists in the slot state)")
        overrides = threshold_overrides(args, self.slots.state.overrides, self.model)
        merged = self.model_cfg(overrides=overrides)
        with self.lock:
            model = self.model
            thresholds = Thresholds(model.manifest, merged.threshold, dict(merged.thresholds))
            self.pipeline = self.pipeline.replaced(model=model.with_rules(thresholds=thresholds))
            self.slots.state.overrides = overrides
            self.slots.save()
        log.info("event=threshold_set threshold=%s thresholds=%s", merged.threshold, dict(merged.thresholds))
        return {"threshold": merged.threshold, "thresholds": dict(merged.thresholds), "persisted": True}

    # ---- reading -----------------------------------------------------------------------------------------------
    def shadow_result(self, model: Model, sample: Sample) -> TaskResult | None:
        """`model`'s result on a live input, prepared its own way (a shadow candidate; inference thread)."""
        prepared = tensor_for(model, sample, self.cfg.gate.max_pixels, self.cfg.gate.min_side)
        return None if prepared is None else model.run(*prepared)

    def observe(self, outcome: Outcome) -> list[DriftChange]:
        """Feed one accepted input to the drift monitor; returns its alarm state changes."""
        monitor = self.monitor
        decision = outcome.decision
        if not monitor.enabled or outcome.result is None or decision is None:
            return []
        # the reference describes the first model's outputs: an escalated input counts as that model's uncertain
        result = outcome.first if outcome.first is not None else outcome.result
        label = confidence = uncertain = None
        if isinstance(result, Classification):
            label, confidence = result.label, result.confidence
            uncertain = decision.status == "uncertain" or outcome.first is not None
        return monitor.observe(outcome.stats, label, confidence, uncertain)


def _wants_colour(monitor: DriftMonitor) -> bool:
    """Whether the monitor follows per-channel means (the pipeline then measures them)."""
    return any(s.name.startswith("mean.") for s in monitor.statistics)
