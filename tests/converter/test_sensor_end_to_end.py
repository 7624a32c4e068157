"""A sensor model end to end: trained in this run on accelerometer readings (demo/train_vibration.py),
converted by `edge-convert --spec` with CSV calibration and evaluation, then served by `edge-infer` from a
replayed stream with one injected fault of each kind — results for the good windows, a rejection with the right
reason for every bad one, all over a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converter.datasets import list_windows
from converter.specs import sensor_spec
from edge_infer.bundle import load_bundle
from tests.conftest import REPO, run_cli
from tests.converter.conftest import demo_script
from tests.converter.test_convert_to_device import edge_convert
from tests.converter.test_every_mode_on_every_model import check_target_runs
from tests.converter.test_target import ARMV7L, target_python
from tests.helpers import independent
from tests.helpers.broker import Mosquitto
from tests.helpers.schemas import validate
from tests.helpers.subscriber import Subscriber

MODES = {"float32", "float16", "dynamic", "int8", "int8-only", "int16x8"}


@pytest.fixture(scope="module")
def sensor_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    vib = demo_script("train_vibration")
    root = tmp_path_factory.mktemp("vibration")
    paths = vib.write_dataset(root)
    model = vib.train_model(paths["train"], paths["spec"], root / "model.keras", epochs=10)
    (root / "labels.txt").write_text("\n".join(vib.LABELS) + "\n")
    out = root / "vibration.tflite"
    proc = subprocess.run(
        [sys.executable, "-m", "converter.cli", str(model), "--spec", str(paths["spec"]), "--calibration",
         str(paths["train"]), "--eval", str(paths["test"]), "--labels", str(root / "labels.txt"), "--out", str(out),
         "--report", str(root / "report.json"), "--threshold", "0.6"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**paths, "bundle": out, "report": root / "report.json", "root": root}


def test_the_sensor_bundle_is_accurate_and_its_report_true(sensor_bundle: dict[str, Path]) -> None:
    report = json.loads(sensor_bundle["report"].read_text())
    variants = report["evaluation"]["variants"]
    assert variants["float32"]["accuracy"] >= 0.95 and variants["int8-only"]["accuracy_drop_points"] <= 1.0
    bundle = load_bundle(sensor_bundle["bundle"])
    manifest = bundle.manifest
    assert manifest.raw["input"]["kind"] == "sensor" and manifest.input.window == 64
    ref = manifest.sensor_reference
    assert ref is not None and set(ref["channels"]) == {"ax", "ay", "az"}
    # independent evaluation on the same CSV windows: TensorFlow's interpreter, the manifest's mean/std applied
    # in numpy here, the windows' true labels (tests/helpers/independent.py)
    spec = sensor_spec(sensor_bundle["spec"])
    examples = list_windows(sensor_bundle["test"], spec, None, "eval")
    predicted = independent.predict(sensor_bundle["bundle"], [ex.window for ex in examples])
    correct = sum(p == ex.label for p, ex in zip(predicted, examples, strict=True))
    assert correct / len(examples) == pytest.approx(variants["int8-only"]["accuracy"], abs=0.01)


def expected_outcomes(times: np.ndarray, values: np.ndarray, labels: list[str], faults: dict) -> dict[int, str]:
    """Window start → the reason it must be rejected for, or 'label:<true label>' for a clean, one-state window."""
    out: dict[int, str] = {}
    for start in range(0, len(values) - 63, 32):
        w, t = values[start:start + 64], times[start:start + 64]
        if not np.isfinite(w).all():
            out[start] = "non_finite"
        elif np.abs(w).max() > 19.6:
            out[start] = "out_of_range"
        elif np.diff(t).max() > 0.02 + 1e-6:
            out[start] = "sample_gap"
        elif w[:, 2].std() < 1e-9:
            out[start] = "flatline"
        elif np.abs(np.diff(w[:, 0])).max() > 12:
            out[start] = "spike"
        elif len(set(labels[start:start + 64])) == 1:
            lo, hi = faults["flatline"]
            if not lo - 64 < start < hi:  # partly stuck windows: neither clean nor certainly flat
                out[start] = f"label:{labels[start]}"
    return out


def test_replayed_windows_with_faults_become_results_and_reasoned_rejections(
    sensor_bundle: dict[str, Path], tmp_path: Path, broker: Mosquitto
) -> None:
    vib = demo_script("train_vibration")
    times, values, labels = vib.faulty_replay()
    replay = tmp_path / "pump.csv"
    vib._write_timed(replay, times, values)
    expected = expected_outcomes(times, np.round(values, 5), labels, vib.FAULTS)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[device]
id = "pump-1"
state_dir = "{tmp_path / 's'}"
[model]
bundle = "{sensor_bundle['bundle']}"
[source]
type = "replay"
path = "{replay}"
[mqtt]
port = {broker.port}
reconnect_max = 1.0
""")
    sub = Subscriber(broker.port, "edge/pump-1/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    windows = (len(values) - 64) // 32 + 1
    assert sub.wait_for(lambda s: len(s.of_kind("results")) + len(s.of_kind("rejections")) >= windows)
    got: dict[int, str] = {}
    for m in sub.of_kind("results"):
        doc = m.json()
        validate("results", doc)
        got[int(doc["input"]["id"].rsplit("#", 1)[1])] = f"label:{doc['result']['label']}"
    for m in sub.of_kind("rejections"):
        doc = m.json()
        validate("rejections", doc)
        got[int(doc["input"]["id"].rsplit("#", 1)[1])] = doc["reason"]
    assert len(got) == windows
    faults = {k: v for k, v in expected.items() if not v.startswith("label:")}
    assert {k: got[k] for k in faults} == faults
    assert set(faults.values()) == {"non_finite", "out_of_range", "sample_gap", "flatline", "spike"}
    clean = [k for k, v in expected.items() if v.startswith("label:")]
    right = sum(got[k] == expected[k] for k in clean)
    assert right / len(clean) >= 0.95, f"{right}/{len(clean)} clean windows labelled right"
    print(f"\nsensor replay: {len(got)} windows, {len(faults)} rejected as expected "
          f"({sorted(set(faults.values()))}), {right}/{len(clean)} clean windows labelled right")
    sub.close()


def test_npz_windows_calibrate_and_evaluate_like_the_csv(sensor_bundle: dict[str, Path], tmp_path: Path) -> None:
    """The same windows as .npz (x: N × window × channels; y as label indices, then as label names)."""
    spec = sensor_spec(sensor_bundle["spec"])
    labels = sensor_bundle["root"].joinpath("labels.txt").read_text().split()
    windows = list_windows(sensor_bundle["test"], spec, None, "eval")
    x = np.stack([w.window for w in windows])
    for name, y in (("indices", np.array([labels.index(w.label) for w in windows])),
                    ("names", np.array([w.label for w in windows]))):
        npz = tmp_path / f"{name}.npz"
        np.savez(npz, x=x, y=y)
        mode = "int8-only" if name == "indices" else "float32"  # calibrated once; names only label the eval
        proc = subprocess.run(
            [sys.executable, "-m", "converter.cli", str(sensor_bundle["root"] / "model.keras"), "--spec",
             str(sensor_bundle["spec"]), "--mode", mode, "--calibration", str(npz), "--eval", str(npz),
             "--labels", str(sensor_bundle["root"] / "labels.txt"), "--out", str(tmp_path / f"{name}.tflite"),
             "--report", str(tmp_path / f"{name}.json")],
            capture_output=True, text=True, cwd=REPO, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["evaluation"]["examples"] == len(windows)
        assert report["evaluation"]["variants"][mode]["accuracy"] >= 0.95
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x[:, :10, :])
    proc = subprocess.run([sys.executable, "-m", "converter.cli", str(sensor_bundle["root"] / "model.keras"),
                           "--spec", str(sensor_bundle["spec"]), "--calibration", str(bad), "--labels",
                           str(sensor_bundle["root"] / "labels.txt"), "--out", str(tmp_path / "bad.tflite")],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 2 and "the model takes (N, 64, 3) windows" in proc.stderr


def test_sensor_model_in_every_mode(sensor_bundle: dict[str, Path], tmp_path: Path) -> None:
    """Every mode on the sensor model, with the armv7l target check run under tflite-runtime 2.14."""
    root = sensor_bundle["root"]
    args = [str(root / "model.keras"), "--mode", "all", "--spec", str(sensor_bundle["spec"]), "--calibration",
            str(sensor_bundle["train"]), "--calibration-samples", "100", "--eval", str(sensor_bundle["test"]),
            "--labels", str(root / "labels.txt"), "--out", str(tmp_path / "s.tflite"), "--report",
            str(tmp_path / "r.json"), "--target", str(ARMV7L)]
    args += ["--target-python", target_python()]
    proc = edge_convert(*args)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    variants = doc["evaluation"]["variants"]
    assert set(variants) == MODES
    assert all(v["accuracy"] >= 0.95 for v in variants.values())
    check_target_runs(doc, proc.returncode)
