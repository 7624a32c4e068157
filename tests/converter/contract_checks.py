"""Shared by the input-contract tests: run `edge-convert`, and the two independent sides of the comparison —
the source model fed the input it was trained on (Keras, the test's own normalisation) and the bundle run by
the device's code (decode → preprocess by the manifest → runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_infer.bundle import load_bundle
from edge_infer.gates.decode import decode_image
from edge_infer.model import Model
from tests.conftest import REPO
from tests.converter.input_models import expected_input, read_folder


def edge_convert(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "converter.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=900)


def convert_without_flags(root: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`edge-convert` as a new user runs it: data, labels, output — no normalisation flag."""
    report = out.with_suffix(".json")
    proc = edge_convert(root / "model.keras", "--calibration", root / "train", "--eval", root / "test", "--labels",
                        root / "labels.txt", "--out", out, "--report", report, "--golden", "0", *extra)
    return proc, json.loads(report.read_text()) if report.exists() else {}


def source_top1(kind: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(the source model's top-1 on test/, the true labels), fed as the model was trained."""
    import keras

    _, raw, truth = read_folder(root / "test")
    model = keras.models.load_model(root / "model.keras", compile=False)
    return model.predict(expected_input(kind, raw), verbose=0).argmax(axis=1), truth


def device_top1(bundle: Path, root: Path) -> np.ndarray:
    """The bundle's top-1 on test/ through the device's own decode, preprocessing and runtime."""
    files, _, _ = read_folder(root / "test")
    model = Model(load_bundle(bundle))
    return np.array([int(model.infer(model.prepare(decode_image(f.read_bytes()))).label) for f in files])


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr.strip().splitlines()[-1]
