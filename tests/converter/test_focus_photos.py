"""The blur check on photographs of varied content: scikit-image's and scikit-learn's sample photos, as
640×480 camera-like frames (crops at several scales and positions, mirrored), JPEG-encoded.

The reference is measured by the converter's own code (`quality_reference`) on frames of one half of the
photos; the gate is judged on frames of the *other* half — content the limits never saw — clean, defocused
(Gaussian σ 3, 4 and 6 px), and motion-blurred (a 15 px horizontal or vertical streak). The old measure,
Laplacian variance, ranges over two orders of magnitude across content; `focus` does not.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from converter.datasets import list_examples, quality_reference
from edge_infer.gates.decode import decode_image
from edge_infer.gates.quality import REFERENCE_VERSION, gate_from_config, limits_from_reference
from edge_infer.manifest import ImageInputSpec
from edge_infer.preprocess import model_view
from edge_infer.sections import GateConfig

SPEC = ImageInputSpec(width=96, height=96)  # the case: a small model, a 640×480 camera
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "moon", "rocket", "retina",
          "brick", "grass", "gravel", "immunohistochemistry")


def photos() -> dict[str, Image.Image]:
    """Every sample photo shipped inside the scikit-image and scikit-learn wheels (nothing is downloaded)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = {}
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        out[name] = Image.fromarray(image if image.ndim == 3 else np.stack([image] * 3, axis=2)).convert("RGB")
    out["motorcycle"] = Image.fromarray(skimage.data.stereo_motorcycle()[0])  # one of the pair: not on both sides
    sk = load_sample_images()
    out |= {Path(n).stem: Image.fromarray(a) for n, a in zip(sk.filenames, sk.images, strict=True)}
    return out


def frames(photo: Image.Image, n: int, seed: int) -> list[Image.Image]:
    """`n` 640×480 frames: crops of 60–100 % of the largest 4:3 window, anywhere, half of them mirrored."""
    rng = np.random.default_rng(seed)
    w, h = photo.size
    fit = min(w / 640, h / 480)
    out = []
    for _ in range(n):
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(640 * fit * s), int(480 * fit * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        frame = photo.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.Resampling.LANCZOS)
        out.append(frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else frame)
    return out


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def streak(image: Image.Image, length: int, axis: int) -> Image.Image:
    """Motion blur: the mean of `length` copies shifted one pixel apart along `axis` (1: horizontal)."""
    pixels = np.asarray(image, np.float32)
    out = sum(np.roll(pixels, i - length // 2, axis=axis) for i in range(length)) / length
    return Image.fromarray(out.astype(np.uint8))


BLURS = {
    "defocus σ3": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "defocus σ4": lambda im: im.filter(ImageFilter.GaussianBlur(4)),
    "defocus σ6": lambda im: im.filter(ImageFilter.GaussianBlur(6)),
    "motion 15 px →": lambda im: streak(im, 15, 1),
    "motion 15 px ↓": lambda im: streak(im, 15, 0),
}
REQUIRED = {"defocus σ3": 0.6, "defocus σ4": 0.9, "defocus σ6": 0.9, "motion 15 px →": 0.9, "motion 15 px ↓": 0.9}


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[tuple[str, Image.Image]]]:
    """(the reference measured on the calibration half, the held-out frames of the other half)."""
    root = tmp_path_factory.mktemp("focus") / "calib"
    everything = sorted(photos().items())
    held_out = []
    for i, (name, photo) in enumerate(everything):
        if i % 2 == 0:
            (root / name).mkdir(parents=True)
            for j, frame in enumerate(frames(photo, 8, seed=i)):
                (root / name / f"{j}.jpg").write_bytes(jpeg(frame))
        else:
            held_out += [(name, frame) for frame in frames(photo, 6, seed=100 + i)]
    return quality_reference(list_examples(root, "calibration"), SPEC), held_out


def verdict(gate, frame: Image.Image):
    decoded = decode_image(jpeg(frame), draft_size=(SPEC.width, SPEC.height))  # as the device decodes it
    return gate.check(decoded, model_view(decoded, SPEC))


def test_defocus_and_motion_blur_are_caught_on_content_the_limits_never_saw(halves) -> None:
    reference, held_out = halves
    assert reference["version"] == REFERENCE_VERSION and "focus" in reference
    gate = gate_from_config(GateConfig(), reference)
    clean = [verdict(gate, frame) for _, frame in held_out]
    false = [(name, v.reason, v.detail) for (name, _), v in zip(held_out, clean, strict=True) if not v.ok]
    assert len(false) <= 0.05 * len(held_out), false
    passing = [frame for (_, frame), v in zip(held_out, clean, strict=True) if v.ok]  # judged on frames that
    rates = {}  # would pass in focus (a dark frame is rejected as dark before its focus is looked at)
    for blur, make in BLURS.items():
        verdicts = [verdict(gate, make(frame)) for frame in passing]
        rates[blur] = sum(v.reason == "blurry" for v in verdicts) / len(verdicts)
    print(f"\nfocus limit {gate.limits.min_focus:.3f} on {len(held_out)} held-out frames; clean rejected "
          f"{len(false)}; blurry: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
    assert all(rates[k] >= REQUIRED[k] for k in BLURS), rates


def test_focus_depends_on_the_blur_not_on_the_content(halves) -> None:
    """Across every photo, clean frames' focus stays within a factor of 1.6; the Laplacian variance, the old
    measure, spans more than 20×. The weakest clean frame is sharper than the strongest σ 6 px frame."""
    from edge_infer.gates.quality import assess

    _, held_out = halves
    def q(frame: Image.Image):
        decoded = decode_image(jpeg(frame), draft_size=(SPEC.width, SPEC.height))
        return assess(decoded, model_view(decoded, SPEC))
    clean = [q(frame) for _, frame in held_out]
    blurred = [q(BLURS["defocus σ6"](frame)) for _, frame in held_out]
    focus = np.array([c.focus for c in clean])
    sharpness = np.array([c.sharpness for c in clean])
    assert focus.max() / focus.min() < 1.6 and sharpness.max() / sharpness.min() > 20
    assert focus.min() > max(b.focus for b in blurred)


def test_a_reference_from_before_focus_keeps_its_checks_and_gets_no_focus_check(halves) -> None:
    reference, _ = halves
    old = {k: v for k, v in reference.items() if k not in ("focus", "version")}
    limits = limits_from_reference(old)
    assert limits.source == "reference" and limits.min_focus is None
    assert limits.min_sharpness == limits_from_reference(reference).min_sharpness
