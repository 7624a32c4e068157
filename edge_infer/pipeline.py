"""One input through the stages: gate → preprocess → infer → postprocess → decide.

`Classifier` is also what the converter evaluates bundles with, so a reported accuracy is the accuracy of the
code that runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from PIL import Image

from edge_infer.bundle import Bundle, BundleError
from edge_infer.decide import Decision, Thresholds, decide
from edge_infer.gates import Verdict
from edge_infer.gates.image import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DecodeRejected, decode_image
from edge_infer.postprocess import Classification, classify
from edge_infer.preprocess import image_tensor
from edge_infer.runtime import Engine
from edge_infer.sources import Sample


class Classifier:
    """A bundle bound to an interpreter: decoded image in, classification out."""

    def __init__(self, bundle: Bundle, threads: int = 1, runtime: str | None = None, top_k: int = 3) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.engine = Engine(bundle.model_bytes, threads=threads, runtime=runtime)
        self.top_k = top_k
        spec = self.manifest.input
        expected = (1, spec.height, spec.width, spec.channels)
        if self.engine.inputs[0].shape != expected:
            raise BundleError(
                bundle.path,
                f"model input shape {self.engine.inputs[0].shape} does not match the manifest's "
                f"{spec.width}x{spec.height} {spec.color} input {expected}",
            )

    def classify(self, image: Image.Image) -> Classification:
        tensor = image_tensor(image, self.manifest.input, self.engine.inputs[0])
        outputs = self.engine.run(tensor)
        return classify(
            outputs[0], self.engine.outputs[0], self.manifest.labels, self.manifest.output_activation, self.top_k
        )


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
    ) -> None:
        self.classifier = classifier
        self.thresholds = thresholds
        self.max_pixels = max_pixels
        self.min_side = min_side

    def process(self, sample: Sample) -> Outcome:
        started = time.perf_counter()
        if sample.data is None:
            return Outcome(Verdict.reject("unreadable", sample.read_error or "the input could not be read"))
        try:
            image = decode_image(sample.data, self.max_pixels, self.min_side)
        except DecodeRejected as rejected:
            return Outcome(rejected.verdict)
        result = self.classifier.classify(image)
        decision = decide(result, self.thresholds)
        return Outcome(Verdict(ok=True), result, decision, (time.perf_counter() - started) * 1000.0)
