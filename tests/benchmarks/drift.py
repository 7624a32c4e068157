"""Drift detection delay and false alarms on real held-out digits (the demo model and its manifest reference).

    python -m tests.benchmarks.drift [--clean 3000] [--shifted 1000]

Each stream is `clean` in-distribution inputs (held-out digits, drawn at random with replacement) followed by
`shifted` inputs with one change: darker, blurred, or only ones. Reported: false alarms during the clean part,
the inputs from the change to the first alarm, and which statistics alarmed.
"""

from __future__ import annotations

import argparse
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter

from edge_infer.bundle import load_bundle
from edge_infer.gates.quality import gate_from_config
from edge_infer.model import Model
from edge_infer.monitor import monitor_from_config
from edge_infer.pipeline import Pipeline
from edge_infer.sections import DriftConfig, GateConfig
from edge_infer.sources import Sample
from tests.benchmarks.verdict import figure

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "demo" / "digits-int8-only.tflite"
HELD_OUT = REPO / "demo" / "digits" / "test"
SHIFTS: dict[str, tuple[Callable[[Image.Image], Image.Image] | None, str | None]] = {
    "darker (brightness ×0.75)": (lambda im: ImageEnhance.Brightness(im).enhance(0.75), None),
    "blurred (Gaussian σ 0.8 px)": (lambda im: im.filter(ImageFilter.GaussianBlur(0.8)), None),
    "skewed (only the digit 1)": (None, "1"),
}


@dataclass
class StreamReport:
    name: str
    false_alarms: int
    delay: int | None  # inputs after the change until the first alarm (None: never)
    alarmed: list[str]
    rejected: int


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def run_stream(name: str, transform: Callable[[Image.Image], Image.Image] | None, only: str | None,
               clean: int, shifted: int, seed: int = 5) -> StreamReport:
    """Feed `clean` then `shifted` inputs through the device pipeline and the drift monitor (daemon defaults)."""
    bundle = load_bundle(BUNDLE)
    model = Model(bundle)
    pipeline = Pipeline(model, None, gate=gate_from_config(GateConfig(), bundle.manifest.image_quality_reference))
    monitor = monitor_from_config(DriftConfig(), bundle.manifest.drift_reference, model.thresholds.default)
    files = sorted(HELD_OUT.glob("*/*.png"))
    rng = random.Random(seed)
    false_alarms, delay, alarmed, rejected = 0, None, [], 0
    for i in range(clean + shifted):
        after = i >= clean
        pool = [f for f in files if f.parent.name == only] if after and only else files
        path = rng.choice(pool)
        data = _png(transform(Image.open(path))) if after and transform else path.read_bytes()
        outcome = pipeline.process(Sample(source="drift", input_id=path.name, fingerprint=str(i), ts=0.0, data=data))
        if outcome.result is None or outcome.decision is None:
            rejected += 1
            continue
        for change in monitor.observe(outcome.stats, outcome.result.label, outcome.result.confidence,
                                      outcome.decision.status == "uncertain"):
            if change.event != "drift_detected":
                continue
            if not after:
                false_alarms += 1
            else:
                delay = i - clean if delay is None else delay
                alarmed.append(change.statistic)
    return StreamReport(name, false_alarms, delay, sorted(set(alarmed)), rejected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=3000)
    parser.add_argument("--shifted", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"{'stream':<30} {'false alarms':>12} {'delay':>7}  alarmed statistics")
    reports = [run_stream("in-distribution only", None, None, args.clean + args.shifted, 0)]
    reports += [run_stream(name, t, only, args.clean, args.shifted) for name, (t, only) in SHIFTS.items()]
    for r in reports:
        delay = "—" if r.delay is None else str(r.delay)
        print(f"{r.name:<30} {r.false_alarms:>12} {delay:>7}  {', '.join(r.alarmed) or '-'}")
    print(f"(clean part {args.clean} inputs, then {args.shifted} shifted; window 500, checked every 50, "
          "alarm at PSI 0.25)")
    figure("drift: false alarms over every clean stretch", sum(r.false_alarms for r in reports), 0, at_least=False,
           baseline=f"{len(reports)} streams")
    for r in reports[1:]:
        figure(f"drift: inputs until {r.name!r} is detected", r.delay if r.delay is not None else float("inf"), 250,
               at_least=False, baseline="the shift's first input")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
