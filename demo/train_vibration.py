"""A sensor model for machine condition monitoring: a 3-axis accelerometer (m/s², 100 Hz) on a pump tells
`off`, `normal` and `imbalance` apart from 0.64 s windows.

No accelerometer dataset ships with the packages we may use, so the readings are synthesised from the physics
of the situation (gravity on z, a motor's running-speed vibration and its harmonics, an imbalance's strong
once-per-revolution component, sensor noise) with a fixed seed. The point is the plumbing a real sensor model
goes through — CSV readings → windows → training → `edge-convert --spec` → a device replaying readings.

    python demo/train_vibration.py    # writes demo/vibration-int8-only.tflite (+ report, spec) and
                                      # demo/vibration/pump-replay.csv (a replay with one fault of each kind)

Needs the converter extra (TensorFlow). The device side never runs this file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

RATE = 100.0
WINDOW = 64
HOP = 32
CHANNELS = ("ax", "ay", "az")
LABELS = ("off", "normal", "imbalance")
FULL_SCALE = 19.6  # a ±2 g accelerometer: the physical range written into the manifest
GRAVITY = 9.81


def readings(label: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n readings (n × 3) of one machine state."""
    t = np.arange(n) / RATE
    x = np.zeros((n, 3))
    x[:, 2] = GRAVITY
    if label != "off":
        f = rng.uniform(23.0, 26.0)  # running speed, Hz
        for axis, amp in enumerate((0.25, 0.2, 0.15)):
            phase = rng.uniform(0, 2 * np.pi)
            x[:, axis] += amp * np.sin(2 * np.pi * f * t + phase) + 0.1 * amp * np.sin(4 * np.pi * f * t)
        if label == "imbalance":
            wobble = rng.uniform(1.0, 1.6)  # strong 1× radial component
            phase = rng.uniform(0, 2 * np.pi)
            x[:, 0] += wobble * np.sin(2 * np.pi * f * t + phase)
            x[:, 1] += wobble * np.cos(2 * np.pi * f * t + phase)
    return x + rng.normal(0.0, 0.03, x.shape)


def stream(segments: list[tuple[str, int]], seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    parts = [readings(label, n, rng) for label, n in segments]
    labels = [label for label, n in segments for _ in range(n)]
    return np.vstack(parts), labels


def write_csv(path: Path, values: np.ndarray, labels: list[str] | None = None, t0: float | None = None) -> None:
    """Readings as CSV: optional `t` column, the channels, optional `label` column."""
    header = (["t"] if t0 is not None else []) + list(CHANNELS) + (["label"] if labels else [])
    lines = [",".join(header)]
    for i, row in enumerate(values):
        fields = ([f"{t0 + i / RATE:.4f}"] if t0 is not None else []) + [f"{v:.5f}" for v in row]
        lines.append(",".join(fields + ([labels[i]] if labels else [])))
    path.write_text("\n".join(lines) + "\n")


def write_dataset(out: Path, seed: int = 11) -> dict[str, Path]:
    """train.csv / test.csv (labelled readings, many short runs per state) and spec.toml."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, runs, offset in (("train", 24, 0), ("test", 8, 1000)):
        segments = [(LABELS[i % 3], 640) for i in range(runs * 3)]
        values, labels = stream(segments, seed + offset)
        paths[split] = out / f"{split}.csv"
        write_csv(paths[split], values, labels)
    train, _ = stream([(LABELS[i % 3], 640) for i in range(72)], seed)
    mean, std = train.mean(axis=0), train.std(axis=0)
    paths["spec"] = out / "spec.toml"
    paths["spec"].write_text(
        "# Preprocessing of the vibration model: what edge-convert writes into the manifest.\n"
        "[input]\n"
        'kind = "sensor"\n'
        f"channels = {list(CHANNELS)!r}\n".replace("'", '"')
        + f"window = {WINDOW}\nhop = {HOP}\nsample_rate = {RATE}\n"
        f"mean = [{', '.join(f'{v:.6f}' for v in mean)}]\n"
        f"std = [{', '.join(f'{v:.6f}' for v in std)}]\n"
        f"range_low = [{-FULL_SCALE}, {-FULL_SCALE}, {-FULL_SCALE}]\n"
        f"range_high = [{FULL_SCALE}, {FULL_SCALE}, {FULL_SCALE}]\n"
    )
    return paths


def train_model(train_csv: Path, spec_toml: Path, out: Path, epochs: int = 15, seed: int = 11) -> Path:
    """A small 1-D CNN trained on windows cut and normalised by the device's own code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from converter.datasets import list_windows, window_tensors
    from converter.specs import sensor_spec

    keras.utils.set_random_seed(seed)
    spec = sensor_spec(spec_toml)
    examples = list_windows(train_csv, spec, list(LABELS), "training")
    x = np.stack(list(window_tensors(examples, spec)))
    y = np.array([LABELS.index(ex.label) for ex in examples])
    model = keras.Sequential([
        keras.Input((WINDOW, len(CHANNELS))),
        keras.layers.Conv1D(16, 5, activation="relu"),
        keras.layers.MaxPooling1D(2),
        keras.layers.Conv1D(16, 5, activation="relu"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(len(LABELS), activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    model.save(out)
    return out


FAULTS = {  # reading index → what goes wrong there (see `faulty_replay`)
    "non_finite": 300,
    "flatline": (900, 1100),
    "spike": 1500,
    "out_of_range": 2200,
    "sample_gap": (2400, 2410),
}


def faulty_replay(seed: int = 99, t0: float = 1_800_000_000.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A replay stream (normal, off, imbalance, normal; 640 readings each) with one fault of each kind:
    a NaN, a stuck channel, a spike within range, an impossible reading, and ten readings missing.
    Returns (times, readings, true labels)."""
    values, labels = stream([("normal", 640), ("off", 640), ("imbalance", 640), ("normal", 640)], seed)
    times = t0 + np.arange(len(values)) / RATE
    values[FAULTS["non_finite"], 1] = np.nan
    lo, hi = FAULTS["flatline"]
    values[lo:hi, 2] = values[lo, 2]  # az stuck at one value
    values[FAULTS["spike"], 0] += 15.0
    values[FAULTS["out_of_range"], 2] = 60.0
    keep = np.ones(len(values), bool)
    keep[slice(*FAULTS["sample_gap"])] = False
    return times[keep], values[keep], [lab for lab, k in zip(labels, keep, strict=True) if k]


def main(argv: list[str] | None = None) -> int:
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    from converter.cli import main as convert

    with tempfile.TemporaryDirectory(prefix="vibration-") as tmp:
        work = Path(tmp)
        paths = write_dataset(work)
        model = train_model(paths["train"], paths["spec"], work / "model.keras")
        (work / "labels.txt").write_text("\n".join(LABELS) + "\n")
        rc = convert([str(model), "--spec", str(paths["spec"]), "--calibration", str(paths["train"]),
                      "--eval", str(paths["test"]), "--labels", str(work / "labels.txt"), "--name", "vibration",
                      "--threshold", "0.6", "--out", str(args.out_dir / "vibration-int8-only.tflite"),
                      "--report", str(args.out_dir / "vibration-int8-only-report.json")])
        if rc:
            return rc
        shutil.copy(paths["spec"], args.out_dir / "vibration-spec.toml")
    times, values, _ = faulty_replay()
    (args.out_dir / "vibration").mkdir(exist_ok=True)
    _write_timed(args.out_dir / "vibration" / "pump-replay.csv", times, values)
    return 0


def _write_timed(path: Path, times: np.ndarray, values: np.ndarray) -> None:
    lines = ["t," + ",".join(CHANNELS)]
    lines += [f"{t:.4f}," + ",".join(f"{v:.5f}" for v in row) for t, row in zip(times, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
