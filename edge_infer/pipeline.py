"""One input through the stages: gate → preprocess → infer → postprocess → decide (→ escalate → debounce).

`prepare` (decode, gate, preprocess) is `measure` (stateless: any thread, several at once) then `judge` (the
gate's and baseline's state: one input at a time, in input order); `finish` (inference unless its result is
given, decision, fallback) runs in input order.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from edge_infer.decide import DebouncedState, Debouncer, Decision, Thresholds, with_fallback
from edge_infer.gates import Verdict
from edge_infer.gates.baseline import Features, SceneBaseline, features
from edge_infer.gates.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DecodeRejected, decode_image, standardize
from edge_infer.gates.quality import DEFAULT_LIMITS, ImageGate, ImageQuality
from edge_infer.gates.sensor import SensorGate, SensorLimits
from edge_infer.manifest import SensorInputSpec
from edge_infer.model import Model, Ran
from edge_infer.monitor import channel_means
from edge_infer.preprocess import ViewGeometry
from edge_infer.review import CaptureStore
from edge_infer.sources import Sample
from edge_infer.tasks import TaskResult
from edge_infer.tasks.classification import Classification


def sample_image(sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
                 draft: tuple[int, int] | None = None) -> Image.Image | None:
    """The sample's picture: a live frame standardized, or its bytes decoded within the size limits (raises
    `DecodeRejected` with the verdict); None when it holds no picture."""
    if sample.image is not None:
        return standardize(sample.image)
    if sample.data is not None:
        return decode_image(sample.data, max_pixels, min_side, draft)
    return None


def tensor_for(model: Model, sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int = DEFAULT_MIN_SIDE) -> tuple[np.ndarray, ViewGeometry | None] | None:
    """One sample → `model`'s input tensor and where the frame landed in it: the route every model's input
    takes outside the gated pipeline (shadow candidates, golden inputs). None when the sample holds nothing."""
    if sample.window is not None:
        return model.window_tensor(sample.window), None
    image = sample_image(sample, max_pixels, min_side, model.draft_size)
    return None if image is None else model.input_for(image)


@dataclass(frozen=True)
class Measured:
    """A sample after the stateless part of the front half (`Pipeline.measure`): decoded, measured and made
    into a tensor — or a verdict already (it could not be decoded). `Pipeline.judge` makes it `Prepared`."""

    sample: Sample
    started: float
    verdict: Verdict | None = None
    image: Image.Image | None = None
    pixels: np.ndarray | None = None
    gray: np.ndarray | None = None
    quality: ImageQuality | None = None
    tensor: np.ndarray | None = None
    geometry: ViewGeometry | None = None
    scene: Features | None = None  # what the camera baseline compares (baseline on, gate on)
    frame: Image.Image | None = None  # the whole decoded frame (`image` is the model's region of it)


@dataclass(frozen=True)
class Prepared:
    """A sample after the CPU-bound front half (decode, gate, preprocess): a tensor, or a rejection.
    `stats` are the input statistics the drift monitor follows; `image`/`window` stay only when an escalation
    model may need to prepare its own input from them."""

    sample: Sample
    verdict: Verdict
    tensor: np.ndarray | None
    started: float
    geometry: ViewGeometry | None = None
    stats: dict[str, float] = field(default_factory=dict)
    image: Image.Image | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one sample: a rejection verdict, or a task result with its decision."""

    verdict: Verdict
    result: TaskResult | None = None
    decision: Decision | None = None
    latency_ms: float = 0.0
    state: DebouncedState | None = None
    stats: dict[str, float] = field(default_factory=dict)
    first: TaskResult | None = None  # the first model's result, when a second one decided (`path` escalated)
    ran_on: dict[str, str] | None = None  # the model variant and delegate that made `result` (`Engine.ran_on`)


@dataclass(frozen=True)
class Policy:
    """What happens to uncertain results (see `edge_infer.decide`)."""

    fallback: str = "publish"
    escalate_to: Model | None = None
    escalate_fallback: str = "publish"
    debounce: tuple[int, int] | None = None  # (N, M)
    uncertain: CaptureStore | None = None  # where uncertain / deferred inputs are kept for review


class Pipeline:
    """The stages for one model. Its parts (model and rules, gates, policy) are fixed once it serves: a change
    is `replaced(...)`, a new pipeline the serving port swaps in between two inputs. Only the run state (path
    and action counters, debounce history, the camera baseline) carries over from one to the next."""

    REPLACEABLE = frozenset({"model", "max_pixels", "min_side", "gate", "capture", "sensor_gate", "policy",
                             "colour_stats", "baseline"})

    def __init__(
        self,
        model: Model,
        thresholds: Thresholds | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        gate: ImageGate | None = None,
        capture: CaptureStore | None = None,
        sensor_gate: SensorGate | None = None,
        policy: Policy | None = None,
        colour_stats: bool = False,
        baseline: SceneBaseline | None = None,
    ) -> None:
        self.model = model if thresholds is None else model.with_rules(thresholds=thresholds)
        self.info = model.info  # one dict per model: names it in every message
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.gate = gate if gate is not None else ImageGate(DEFAULT_LIMITS)
        self.capture = capture
        spec = model.manifest.input
        if sensor_gate is None and isinstance(spec, SensorInputSpec):
            sensor_gate = SensorGate(spec, SensorLimits(low=spec.low, high=spec.high))
        self.sensor_gate = sensor_gate
        self.policy = policy or Policy()
        second = self.policy.escalate_to
        if second is not None and second.kind != model.kind:
            raise ValueError(f"the escalation model takes {second.kind} input, the first model {model.kind} input")
        self.debouncer = Debouncer(*self.policy.debounce) if self.policy.debounce else None
        self.colour_stats = colour_stats  # per-channel means for the drift monitor (its reference has them)
        self.baseline = baseline  # the camera's own normal, learned from accepted frames (one per stream)
        self.paths = {"model": 0, "escalated": 0}
        self.actions = {"published": 0, "suppressed": 0, "deferred": 0}

    def replaced(self, **parts: Any) -> Pipeline:
        """A new pipeline with some parts replaced (see `REPLACEABLE`); counters carry over, and the debounce
        history unless the debounce rule changed. This one is left as it was: inputs it prepared finish on it."""
        if unknown := set(parts) - self.REPLACEABLE:
            raise TypeError(f"not a replaceable part of a pipeline: {', '.join(sorted(unknown))}")
        new = copy.copy(self)
        new.__dict__.update(parts)
        if new.model.info != self.info:  # another model (new rules on the same one keep their name)
            new.info = new.model.info
        if "policy" in parts and new.policy.debounce != self.policy.debounce:
            new.debouncer = Debouncer(*new.policy.debounce) if new.policy.debounce else None
        return new

    def prepare(self, sample: Sample) -> Prepared:
        """Front half: decode, gate and preprocessing (`measure`, then `judge`). Its own thread when pipelined."""
        return self.judge(self.measure(sample))

    def measure(self, sample: Sample) -> Measured:
        """The stateless part of the front half, safe in any thread: decode, the model's view, the gate's
        metrics, the input tensor (a sensor window waits for `judge`)."""
        started = time.perf_counter()
        if sample.window is not None:
            return Measured(sample, started)
        try:
            frame = sample_image(sample, self.max_pixels, self.min_side, self.model.draft_size)
        except DecodeRejected as rejected:
            return Measured(sample, started, rejected.verdict)
        if frame is None:
            return Measured(sample, started, Verdict.reject("unreadable", sample.read_error or
                                                            "the input could not be read"))
        try:
            image = self.model.region(frame)  # `crop`: the gate, the view and the baseline see only the region
        except ValueError as exc:
            return Measured(sample, started, Verdict.reject("too_small", str(exc)))
        view = self.model.view(image)
        pixels = np.asarray(view)  # once, for the gate and the tensor
        gray, quality, plane = self.gate.measure(image, view, pixels)
        scene = features(image, quality.focus, plane) if self.baseline is not None and quality is not None else None
        geometry = self.model.geometry(image) if self.model.task_impl.needs_geometry else None  # boxes, masks
        return Measured(sample, started, None, image, pixels, gray, quality, self.model.view_tensor(pixels),
                        geometry, scene, frame)

    def judge(self, m: Measured) -> Prepared:
        """The stateful part, one input at a time in input order: the gate's verdict (a stuck camera, the limits),
        the camera baseline, the rejection capture, the drift statistics."""
        sample, started = m.sample, m.started
        if sample.window is not None:
            return self._prepare_window(sample, started)
        if m.verdict is not None:
            return self._rejected(sample, m.verdict, started)
        assert m.image is not None and m.pixels is not None and m.gray is not None
        verdict = self.gate.judge(m.gray, m.quality)
        quality = verdict.metrics.get("quality")
        if verdict.ok and m.scene is not None and self.baseline is not None:
            departed = self.baseline.judge(m.scene)
            verdict = verdict if departed.ok else departed
        if not verdict.ok:
            return self._rejected(sample, verdict, started)
        stats = {} if quality is None else {
            "brightness": quality.brightness, "contrast": quality.contrast, "sharpness": quality.sharpness}
        if self.colour_stats and m.pixels.ndim == 3:
            stats.update(zip(("mean.R", "mean.G", "mean.B"), channel_means(m.pixels), strict=True))
        return Prepared(sample, verdict, m.tensor, started, m.geometry, stats,
                        m.frame if self.policy.escalate_to is not None else None)

    def _prepare_window(self, sample: Sample, started: float) -> Prepared:
        assert sample.window is not None and self.sensor_gate is not None
        verdict = self.sensor_gate.check(sample.window, sample.times)
        if not verdict.ok:
            return self._rejected(sample, verdict, started)
        spec = self.model.manifest.input
        assert isinstance(spec, SensorInputSpec)
        means, stds = sample.window.mean(axis=0), sample.window.std(axis=0)
        stats = {f"{c}.mean": float(means[i]) for i, c in enumerate(spec.channels)}
        stats |= {f"{c}.std": float(stds[i]) for i, c in enumerate(spec.channels)}
        return Prepared(sample, verdict, self.model.window_tensor(sample.window), started, None, stats)
    def _rejected(self, sample: Sample, verdict: Verdict, started: float) -> Prepared:
        if self.capture is None:
            return Prepared(sample, verdict, None, started)
        data = sample.data if sample.data is not None else self._window_csv(sample)
        if data:
            self.capture.save(verdict.reason or "rejected", sample.input_id, data, {
                "input_id": sample.input_id, "source": sample.source, "reason": verdict.reason,
                "detail": verdict.detail, "metrics": verdict.metrics, "captured_at": sample.ts,
            })
        return Prepared(sample, verdict, None, started)

    def _window_csv(self, sample: Sample) -> bytes | None:
        """A rejected sensor window as CSV (`t` and the channels), for the review folder."""
        if sample.window is None:
            return None
        header = ",".join(["t", *self.model.manifest.input.channels])  # type: ignore[union-attr]
        times = sample.times if sample.times is not None else np.arange(len(sample.window), dtype=float)
        rows = [",".join(repr(float(v)) for v in (t, *row)) for t, row in zip(times, sample.window, strict=False)]
        return ("\n".join([header, *rows]) + "\n").encode()

    def finish(self, prepared: Prepared, ran: Ran | None = None) -> Outcome:
        """Back half: inference (unless `ran` is this input's result, from another interpreter of this pipeline's
        model), postprocessing, the decision and its fallback. Inputs finish one at a time, in input order."""
        if prepared.tensor is None:
            return Outcome(prepared.verdict)
        result, ran_on = ran if ran is not None else self.model.ran(prepared.tensor, prepared.geometry)
        decision = self.model.decide(result)
        policy = self.policy
        first = None
        if decision.status == "uncertain" and policy.fallback == "escalate" and policy.escalate_to is not None:
            first = result
            (result, ran_on), second = self._escalate(prepared, policy.escalate_to)
            decision = with_fallback(second, policy.escalate_fallback, "escalated")
            if decision.status == "ok":  # the bigger model was sure: that is the fallback this result took
                decision = replace(decision, fallback="escalate")
        else:
            decision = with_fallback(decision, policy.fallback)
        if decision.status == "uncertain":
            self._keep(prepared, result, decision)
        self.paths[decision.path] += 1
        self.actions[{"publish": "published", "suppress": "suppressed", "defer": "deferred"}[decision.action]] += 1
        state = None
        if self.debouncer is not None:
            state = self.debouncer.update(result.event_key if decision.status == "ok" else None)
        return Outcome(prepared.verdict, result, decision, (time.perf_counter() - prepared.started) * 1000.0, state,
                       prepared.stats, first, ran_on)

    def _escalate(self, prepared: Prepared, second: Model) -> tuple[Ran, Decision]:
        """The second model's own preprocessing of the same input, its result and its own thresholds."""
        if prepared.sample.window is not None:
            tensor, geometry = second.window_tensor(prepared.sample.window), None
        else:
            assert prepared.image is not None  # decoded once, by the first model's prepare
            tensor, geometry = second.input_for(prepared.image)
        ran = second.ran(tensor, geometry)
        return ran, second.decide(ran.result)

    def _keep(self, prepared: Prepared, result: TaskResult, decision: Decision) -> None:
        """An uncertain input into the review folder, under its predicted label (a person confirms it)."""
        store = self.policy.uncertain
        sample = prepared.sample
        if store is None:
            return
        data = sample.data if sample.data is not None else self._window_csv(sample)
        if not data:
            return
        group = result.label if isinstance(result, Classification) else "uncertain"
        store.save(group, sample.input_id, data, {
            "input_id": sample.input_id, "source": sample.source, "task": result.task, "result": result.to_dict(),
            "decision": decision.to_dict(), "action": decision.action, "captured_at": sample.ts,
        })

    def process(self, sample: Sample) -> Outcome:
        return self.finish(self.prepare(sample))
