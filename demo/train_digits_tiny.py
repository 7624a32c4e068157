"""Train a deliberately small digits model for the cascade demo: one dense layer on an 8×8 view.
It is fast, right 94 % of the time and unsure of about one input in five; `[decide] fallback = "escalate"`
hands its uncertain inputs to the demo's CNN.

    python demo/train_digits_tiny.py   # writes demo/digits-tiny.tflite and demo/digits-tiny-report.json

Same data split as demo/train_digits.py (so demo/digits/test is held out for both). Needs the converter extra.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL_SIZE = 8
SEED = 7


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from train_digits import write_digit_folders

    from converter.cli import main as convert
    from converter.datasets import calibration_tensors, list_examples
    from edge_infer.manifest import ImageInputSpec

    keras.utils.set_random_seed(SEED)
    with tempfile.TemporaryDirectory(prefix="digits-tiny-") as tmp:
        train_dir, test_dir = write_digit_folders(Path(tmp))
        examples = list_examples(train_dir, "training")
        spec = ImageInputSpec(width=MODEL_SIZE, height=MODEL_SIZE, color="L")
        x = np.stack(list(calibration_tensors(examples, spec)))
        y = np.array([int(ex.label) for ex in examples])
        model = keras.Sequential([keras.Input((MODEL_SIZE, MODEL_SIZE, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=20, batch_size=64, verbose=0, shuffle=True)
        saved = Path(tmp) / "tiny.keras"
        model.save(saved)
        labels = Path(tmp) / "labels.txt"
        labels.write_text("\n".join(str(d) for d in range(10)) + "\n")
        return convert([str(saved), "--mode", "int8-only", "--calibration", str(train_dir), "--eval", str(test_dir),
                        "--labels", str(labels), "--name", "digits-tiny", "--threshold", "0.6",
                        "--out", str(HERE / "digits-tiny.tflite"), "--report", str(HERE / "digits-tiny-report.json")])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    sys.exit(main())
