"""A fixed camera's baseline (`[gate] baseline`): a scene from the repo's detector frames, seen by a camera
(384×256, jitter of ±2 px, sensor noise, brightness drifting ±20 % over 400 frames as over a day) — no alarm
over the clean sequence; defocus, a covered lens and a moved camera each raise their own condition within a
few frames and clear when the scene returns; the baseline survives a restart; the daemon publishes them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from edge_infer.gates.baseline import HOLD, SceneBaseline
from edge_infer.gates.quality import native_focus
from edge_infer.sinks.memory import MemorySink
from edge_infer.sources.memory import ListSource, sample_of
from tests.conftest import REPO, write_config
from tests.helpers.broker import free_port
from tests.helpers.schemas import validate

SCENE = Image.open(REPO / "demo" / "detector" / "frames" / "frame-0003.png").convert("RGB").resize(
    (384, 256), Image.Resampling.NEAREST)
DETECTOR = REPO / "demo" / "digit-detector-yolo.tflite"


_PADDED = np.pad(np.asarray(SCENE, np.float32), ((2, 2), (2, 2), (0, 0)), mode="edge")
_NOISE = [3 * np.random.default_rng(i).standard_normal(_PADDED[2:-2, 2:-2].shape, dtype=np.float32)
          for i in range(16)]  # sensor noise: a new field each frame, drawn from a pool (generating it is slow)


def camera(t: int, period: int = 400) -> Image.Image:
    """Frame `t` of the fixed camera: the scene shifted by up to 2 px, its brightness drifting, with noise."""
    rng = np.random.default_rng(t)
    dx, dy = (int(v) for v in rng.integers(0, 5, 2))
    pixels = _PADDED[dy:dy + SCENE.height, dx:dx + SCENE.width] * (1 + 0.2 * np.sin(2 * np.pi * t / period))
    pixels += _NOISE[int(rng.integers(len(_NOISE)))]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


DEGRADED = {
    "defocused": lambda im: im.filter(ImageFilter.GaussianBlur(4)),
    "obstructed": lambda im: Image.fromarray(np.where(np.arange(384)[None, :, None] < 240, 15,
                                                      np.asarray(im)).astype(np.uint8)),  # a hand over 60 %
    "scene_changed": lambda im: im.transpose(Image.Transpose.ROTATE_180),  # the camera turned
}


def feed(baseline: SceneBaseline, frame: Image.Image):
    return baseline.check(frame, native_focus(frame))


def test_a_clean_day_raises_nothing_and_each_fault_its_own_condition(tmp_path: Path) -> None:
    baseline = SceneBaseline(tmp_path / "baseline.json", warmup=100)
    changes: list[tuple[str, bool]] = []
    baseline.listeners.append(lambda condition, started, details: changes.append((condition, started)))
    rejected = [t for t in range(400) if not feed(baseline, camera(t)).ok]  # a whole brightness cycle
    assert rejected == [] and changes == [] and baseline.ready
    t = 400
    for condition, degrade in DEGRADED.items():
        reasons = []
        for _ in range(10):
            reasons.append(feed(baseline, degrade(camera(t))).reason)
            t += 1
        assert reasons == [condition] * 10 and changes[-1] == (condition, True), (condition, reasons, changes)
        assert changes.index((condition, True)) == len(changes) - 1  # raised once, within HOLD frames
        for _ in range(HOLD):
            assert feed(baseline, camera(t)).ok
            t += 1
        assert changes[-1] == (condition, False), changes
    assert [c for c, started in changes if started] == list(DEGRADED)


def test_the_baseline_survives_a_restart_and_never_learns_from_rejected_frames(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    first = SceneBaseline(path, warmup=50)
    for t in range(120):
        feed(first, camera(t))
    learned = first.learned
    for t in range(120, 160):  # a long defocus: every frame rejected, none learned
        assert feed(first, DEGRADED["defocused"](camera(t))).reason == "defocused"
    assert first.learned == learned
    first.save()
    again = SceneBaseline(path, warmup=50)  # a restart
    assert again.ready and again.learned == learned
    assert feed(again, DEGRADED["defocused"](camera(500))).reason == "defocused"
    assert feed(again, camera(501)).ok
    path.write_text("{not json")
    assert not SceneBaseline(path, warmup=50).ready  # a damaged file: learned again, not a crash


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_the_daemon_rejects_with_the_condition_and_publishes_when_it_starts_and_ends(tmp_path: Path) -> None:
    frames = [(f"f{t:04d}", camera(t)) for t in range(60)]
    frames += [(f"blur{t}", DEGRADED["defocused"](camera(t))) for t in range(60, 66)]
    frames += [(f"back{t}", camera(t)) for t in range(66, 72)]
    cfg = write_config(tmp_path / "c.toml", bundle=DETECTOR, source=tmp_path, state=tmp_path / "s",
                       port=free_port())
    cfg.write_text(cfg.read_text() + "\n[gate]\nbaseline = true\nbaseline_warmup = 30\n")
    sinks: list[MemorySink] = []
    daemon = Daemon(load_config(cfg), source=ListSource([sample_of(n, png(f)) for n, f in frames]),
                    sink=lambda opener: sinks.append(MemorySink(opener)) or sinks[0])
    daemon.run(once=True)
    sink = sinks[0]
    rejections = [json.loads(p) for p in sink.of_kind("rejections")]
    assert [r["input"]["id"] for r in rejections] == [f"blur{t}" for t in range(60, 66)], \
        [(r["input"]["id"], r["reason"], r["detail"]) for r in rejections]
    for doc in rejections:
        validate("rejections", doc)
        assert doc["reason"] == "defocused" and doc["metrics"]["metric"] == "focus"
    events = [json.loads(p) for p in sink.of_kind("events")]
    scene = [(e["event"], e["details"]["condition"]) for e in events if e["event"].startswith("scene_")]
    assert scene == [("scene_problem", "defocused"), ("scene_problem_cleared", "defocused")]
    for doc in events:
        validate("events", doc)
    health = json.loads([p for kind, p in sink.snapshots if kind == "health"][-1])  # the final one, at stop
    validate("health", health)
    assert health["baseline"]["state"] == "ready" and health["baseline"]["conditions"] == []
    assert (tmp_path / "s" / "baseline.json").exists()  # saved at stop: the next run resumes it


def test_baseline_keys_need_a_restart(tmp_path: Path) -> None:
    from edge_infer.control.reload import apply_reload

    cfg = write_config(tmp_path / "c.toml", bundle=DETECTOR, source=tmp_path, state=tmp_path / "s",
                       port=free_port())
    daemon = Daemon(load_config(cfg), source=ListSource([]), sink=MemorySink)
    cfg.write_text(cfg.read_text() + "\n[gate]\nbaseline = true\nmin_contrast = 3\n")
    applied, restart = apply_reload(daemon.serving, load_config(cfg))
    assert applied == ["gate.min_contrast"] and restart == ["gate.baseline"]
    assert daemon.cfg.gate.baseline is False and daemon.pipeline.baseline is None
