"""The camera baseline (`[gate] baseline`) on fixed scenes made from real photographs (scikit-image's and
scikit-learn's sample photos: run it in the converter environment, which has both).

Per scene: 1,500 clean frames (jitter of ±3 px, sensor noise σ 3, brightness drifting ±25 % over the run), then
10 frames of each fault — defocus (σ 4 px), half and whole lens covered, fog, another scene, the camera moved —
each followed by clean frames. Prints the clean frames rejected, the alarms raised on them, and for each fault
the first reason given and how many of its 10 frames were rejected.

    .venvs/convert/bin/python tests/benchmarks/scene_baseline.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_infer.gates.baseline import SceneBaseline
from edge_infer.gates.quality import native_focus
from tests.converter.test_focus_photos import photos

RNG = np.random.default_rng(0)
N = 1500


def view(photo: Image.Image, dx: int = 0, dy: int = 0) -> Image.Image:
    w, h = photo.size
    k = min(w / 680, h / 510)
    x0, y0 = int((w - 640 * k) / 2) + int(dx * k), int((h - 480 * k) / 2) + int(dy * k)
    return photo.crop((x0, y0, x0 + int(640 * k), y0 + int(480 * k))).resize((640, 480), Image.Resampling.BILINEAR)


def frame(photo: Image.Image, t: int) -> Image.Image:
    pixels = np.asarray(view(photo, *RNG.integers(-3, 4, 2)), np.float32) * (1 + 0.25 * np.sin(2 * np.pi * t / N))
    return Image.fromarray(np.clip(pixels + RNG.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8))


def cover(image: Image.Image, share: float) -> Image.Image:
    pixels = np.asarray(image).copy()
    pixels[:, : int(640 * share)] = 20
    return Image.fromarray(pixels)


FAULTS = {
    "defocus": lambda im: im.filter(ImageFilter.GaussianBlur(4)),
    "half covered": lambda im: cover(im, 0.5),
    "covered": lambda im: cover(im, 1.0),
    "fog": lambda im: Image.blend(im, Image.new("RGB", im.size, (200, 200, 200)), 0.75),
}


def check(baseline: SceneBaseline, image: Image.Image) -> str | None:
    return baseline.check(image, native_focus(image)).reason


def main() -> None:
    library = photos()
    for name in ("astronaut", "coffee", "chelsea", "motorcycle", "china", "grass", "camera", "rocket"):
        photo, baseline = library[name], SceneBaseline(None, warmup=100)
        alarms: list[tuple[str, bool]] = []
        baseline.listeners.append(lambda condition, started, details, seen=alarms: seen.append((condition, started)))
        clean = sum(check(baseline, frame(photo, t)) is not None for t in range(N))
        line = f"{name:10s} clean rejected {clean}/{N}, alarms {alarms} |"
        other = library["coins"]
        faults = {**FAULTS, "another scene": lambda im, o=other: frame(o, 0),
                  "moved": lambda im, p=photo: view(p, 120, 60)}
        for fault, make in faults.items():
            reasons = [check(baseline, make(frame(photo, t))) for t in range(10)]
            for t in range(5):
                check(baseline, frame(photo, t))
            line += f" {fault}: {reasons[0]} {sum(r is not None for r in reasons)}/10;"
        print(line, flush=True)


if __name__ == "__main__":
    main()
