"""The source model — the trained TensorFlow/Keras model `edge-convert` was given — loaded once per run: the
layer it starts with (its own preprocessing, when it has some), its predictions (the reference every variant is
checked against) and the SavedModel the converter reads."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.convert import import_tensorflow
from converter.errors import ConvertError

# Layers that leave pixel values alone at inference (augmentation is off, resizing keeps the range): the layer
# after them is the one that says what range the model takes.
INERT_LAYERS = frozenset({
    "InputLayer", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
    "RandomBrightness", "RandomCrop", "RandomHeight", "RandomWidth", "GaussianNoise", "GaussianDropout", "Dropout",
    "Resizing", "CenterCrop",
})


@dataclass
class SourceModel:
    """A loaded source model: `keras` is the Keras model (.keras/.h5 files), None for a SavedModel directory."""

    path: Path
    keras: Any
    tf: Any
    _signature: Any = None

    def predict(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        """The model's first output for a float batch `x` (N, H, W, C), as an (N, ...) array."""
        if self.keras is not None:
            out = self.keras.predict(x, batch_size=batch, verbose=0)
            return np.asarray(out[0] if isinstance(out, (list, tuple)) else out)
        fn = self._signature
        (name,) = list(fn.structured_input_signature[1])[:1]
        parts = []
        for start in range(0, len(x), batch):
            outputs = fn(**{name: self.tf.constant(x[start:start + batch])})
            parts.append(np.asarray(next(iter(outputs.values()))))
        return np.concatenate(parts)

    def first_layer(self) -> Any:
        """The first layer that changes pixel values (nested models looked into, `INERT_LAYERS` skipped), or
        None (a SavedModel directory has no layers to read)."""
        return None if self.keras is None else _first_layer(self.keras)

    @contextmanager
    def saved_model(self) -> Iterator[Path]:
        """A SavedModel directory for the converter (a Keras model is exported to a temporary one)."""
        if self.keras is None:
            yield self.path
            return
        with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
            out = Path(tmp) / "saved_model"
            self.keras.export(str(out), format="tf_saved_model", verbose=False)
            yield out


def _first_layer(model: Any) -> Any:
    for layer in model.layers:
        if getattr(layer, "layers", None):  # a nested model: its own first layer, unless it is all inert
            inner = _first_layer(layer)
            if inner is not None:
                return inner
            continue
        if type(layer).__name__ not in INERT_LAYERS:
            return layer
    return None


def load_source(model_path: Path) -> SourceModel:
    """Load a SavedModel directory, a .keras or a legacy .h5 file (a one-line error when it cannot be)."""
    if not model_path.exists():
        raise ConvertError(f"{model_path}: model not found")
    tf = import_tensorflow()
    if model_path.is_dir():
        if not (model_path / "saved_model.pb").exists():
            raise ConvertError(f"{model_path}: not a SavedModel directory (no saved_model.pb)")
        try:
            loaded = tf.saved_model.load(str(model_path))
            signature = loaded.signatures["serving_default"]
        except Exception as exc:
            raise ConvertError(f"{model_path}: cannot load SavedModel: {str(exc).splitlines()[0]}") from None
        return SourceModel(model_path, None, tf, signature)
    if model_path.suffix not in (".keras", ".h5"):
        raise ConvertError(f"{model_path}: expected a SavedModel directory, a .keras or a .h5 file")
    try:
        model = tf.keras.models.load_model(model_path, compile=False)
    except Exception as exc:
        raise ConvertError(f"{model_path}: cannot load Keras model: {str(exc).splitlines()[0]}") from None
    return SourceModel(model_path, model, tf)
