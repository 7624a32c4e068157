"""The quality gate's cost per 640×480 frame, alone and with the camera baseline (`[gate] baseline`), on
frames cut from the sample photos scikit-image and scikit-learn ship (run it in the converter environment,
which has both). Each frame is decoded from JPEG as the device decodes it and viewed at 96×96 (RGB); the
gate is timed per frame right after that frame's decode, as in the pipeline (a warm cache, not a hot loop on
one frame). Prints the median and 90th percentile over all frames, best of 5 passes.

    .venvs/convert/bin/python tests/benchmarks/gate_cost.py
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_infer.gates.baseline import SceneBaseline, features
from edge_infer.gates.decode import decode_image
from edge_infer.gates.quality import ImageGate, limits_from_reference
from edge_infer.manifest import ImageInputSpec
from edge_infer.preprocess import model_view
from tests.converter.test_focus_photos import frames, photos

SPEC = ImageInputSpec(width=96, height=96)


def jpegs() -> list[bytes]:
    out = []
    for n, photo in enumerate(photos().values()):
        for frame in frames(photo, 8, seed=n):
            buf = io.BytesIO()
            frame.save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def one_pass(blobs: list[bytes], baseline: bool) -> list[float]:
    gate = ImageGate(limits_from_reference(None))
    scene = SceneBaseline(None, warmup=10) if baseline else None
    spent = []
    for data in blobs:
        image = decode_image(data, draft_size=(96, 96))
        view = model_view(image, SPEC)
        pixels = np.asarray(view)
        started = time.perf_counter()
        gray, quality, plane = gate.measure(image, view, pixels)
        verdict = gate.judge(gray, quality)
        if scene is not None and quality is not None and verdict.ok:
            scene.judge(features(image, quality.focus, plane))
        spent.append(time.perf_counter() - started)
    return spent


def main() -> None:
    blobs = jpegs()
    for baseline in (False, True):
        passes = [np.array(one_pass(blobs, baseline)) * 1000 for _ in range(5)]
        best = min(passes, key=lambda p: float(np.median(p)))
        print(f"gate{' + baseline' if baseline else '':<11} {len(blobs)} frames of 640x480: median "
              f"{np.median(best):.3f} ms, p90 {np.percentile(best, 90):.3f} ms per frame")


if __name__ == "__main__":
    main()
