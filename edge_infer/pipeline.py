"""One input through the stages: gate → preprocess → infer → postprocess → decide.

`Classifier` is also what the converter evaluates bundles with, so a reported accuracy is the accuracy of the
code that runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edge_infer.bundle import Bundle, BundleError
from edge_infer.capture import CaptureStore
from edge_infer.decide import Decision, Thresholds, decide
from edge_infer.gates import Verdict
from edge_infer.gates.image import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DecodeRejected, decode_image, standardize
from edge_infer.gates.quality import DEFAULT_LIMITS, ImageGate
from edge_infer.gates.sensor import SensorGate, SensorLimits
from edge_infer.manifest import ImageInputSpec, SensorInputSpec
from edge_infer.postprocess import Classification, classify
from edge_infer.preprocess import image_tensor, model_view, view_tensor, window_tensor
from edge_infer.runtime import Engine
from edge_infer.sources import Sample


class Classifier:
    """A bundle bound to an interpreter: decoded image (or sensor window) in, classification out."""

    def __init__(self, bundle: Bundle, threads: int = 1, runtime: str | None = None, top_k: int = 3) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.engine = Engine(bundle.model_bytes, threads=threads, runtime=runtime)
        self.top_k = top_k
        spec = self.manifest.input
        if isinstance(spec, SensorInputSpec):
            expected = (1, *spec.shape)
            described = f"{spec.window}-reading window of {len(spec.channels)} channels"
        else:
            expected = (1, spec.height, spec.width, spec.channels)
            described = f"{spec.width}x{spec.height} {spec.color}"
        if self.engine.inputs[0].shape != expected:
            raise BundleError(
                bundle.path,
                f"model input shape {self.engine.inputs[0].shape} does not match the manifest's "
                f"{described} input {expected}",
            )

    @property
    def kind(self) -> str:
        return "sensor" if isinstance(self.manifest.input, SensorInputSpec) else "image"

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """What JPEG draft decoding may reduce a frame to (see `decode_image`)."""
        spec = self.manifest.input
        return (spec.width, spec.height) if isinstance(spec, ImageInputSpec) else None

    def window_tensor(self, window: np.ndarray) -> np.ndarray:
        """Sensor window → input tensor (thread-safe)."""
        assert isinstance(self.manifest.input, SensorInputSpec)
        return window_tensor(window, self.manifest.input, self.engine.inputs[0])

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Decoded image → input tensor (thread-safe: touches no interpreter state)."""
        return image_tensor(image, self.manifest.input, self.engine.inputs[0])

    def view(self, image: Image.Image) -> Image.Image:
        """The decoded image at the model's size and colour (what the quality gate measures)."""
        return model_view(image, self.manifest.input)

    def view_tensor(self, view: Image.Image | np.ndarray) -> np.ndarray:
        return view_tensor(view, self.manifest.input, self.engine.inputs[0])

    def infer(self, tensor: np.ndarray) -> Classification:
        """Input tensor → classification (call from one thread: the interpreter is not thread-safe)."""
        outputs = self.engine.run(tensor)
        return classify(
            outputs[0], self.engine.outputs[0], self.manifest.labels, self.manifest.output_activation, self.top_k
        )

    def classify(self, image: Image.Image) -> Classification:
        return self.infer(self.prepare(image))


@dataclass(frozen=True)
class Prepared:
    """A sample after the CPU-bound front half (decode, gate, preprocess): a tensor, or a rejection."""

    sample: Sample
    verdict: Verdict
    tensor: np.ndarray | None
    started: float


@dataclass(frozen=True)
class Outcome:
    """What became of one sample: a rejection verdict, or a classification with its decision."""

    verdict: Verdict
    result: Classification | None = None
    decision: Decision | None = None
    latency_ms: float = 0.0


class Pipeline:
    def __init__(
        self,
        classifier: Classifier,
        thresholds: Thresholds,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        gate: ImageGate | None = None,
        capture: CaptureStore | None = None,
        sensor_gate: SensorGate | None = None,
    ) -> None:
        self.classifier = classifier
        self.thresholds = thresholds
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.gate = gate if gate is not None else ImageGate(DEFAULT_LIMITS)
        self.capture = capture
        spec = classifier.manifest.input
        if sensor_gate is None and isinstance(spec, SensorInputSpec):
            sensor_gate = SensorGate(spec, SensorLimits(low=spec.low, high=spec.high))
        self.sensor_gate = sensor_gate

    def prepare(self, sample: Sample) -> Prepared:
        """Front half: decode gate and preprocessing. Runs in its own thread when pipelined."""
        started = time.perf_counter()
        if sample.window is not None:
            return self._prepare_window(sample, started)
        try:
            if sample.image is not None:
                image = standardize(sample.image)
            elif sample.data is not None:
                image = decode_image(sample.data, self.max_pixels, self.min_side, self.classifier.draft_size)
            else:
                verdict = Verdict.reject("unreadable", sample.read_error or "the input could not be read")
                return Prepared(sample, verdict, None, started)
        except DecodeRejected as rejected:
            return self._rejected(sample, rejected.verdict, started)
        view = self.classifier.view(image)
        pixels = np.asarray(view)  # once, for the gate and the tensor
        verdict = self.gate.check(image, view, pixels)
        if not verdict.ok:
            return self._rejected(sample, verdict, started)
        return Prepared(sample, verdict, self.classifier.view_tensor(pixels), started)

    def _prepare_window(self, sample: Sample, started: float) -> Prepared:
        assert sample.window is not None and self.sensor_gate is not None
        verdict = self.sensor_gate.check(sample.window, sample.times)
        if not verdict.ok:
            return self._rejected(sample, verdict, started)
        return Prepared(sample, verdict, self.classifier.window_tensor(sample.window), started)

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
        header = ",".join(["t", *self.classifier.manifest.input.channels])  # type: ignore[union-attr]
        times = sample.times if sample.times is not None else np.arange(len(sample.window), dtype=float)
        rows = [",".join(repr(float(v)) for v in (t, *row)) for t, row in zip(times, sample.window, strict=False)]
        return ("\n".join([header, *rows]) + "\n").encode()

    def finish(self, prepared: Prepared) -> Outcome:
        """Back half: inference, postprocessing and the decision (the interpreter's thread)."""
        if prepared.tensor is None:
            return Outcome(prepared.verdict)
        result = self.classifier.infer(prepared.tensor)
        decision = decide(result, self.thresholds)
        return Outcome(prepared.verdict, result, decision, (time.perf_counter() - prepared.started) * 1000.0)

    def process(self, sample: Sample) -> Outcome:
        return self.finish(self.prepare(sample))
