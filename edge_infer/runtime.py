"""The TFLite runtime chain: ai_edge_litert → tflite_runtime → tensorflow.lite, with a delegate.

A runtime is chosen by *building an interpreter on the model*, not by importing a module: tflite-runtime
imports fine under numpy 2 and only fails when an Interpreter is created. `EDGE_INFER_RUNTIME` (or the
config's `model.runtime`) restricts the choice to one runtime. How the interpreter runs the model (kernels,
accelerator) is the delegate's business (`edge_infer.delegates`), given in one `EngineSettings`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_infer.delegates import CPU, DEFAULT, DelegateError, EngineSettings, delegate_for

log = logging.getLogger(__name__)

RUNTIME_ENV = "EDGE_INFER_RUNTIME"
# name → (module holding Interpreter, attribute path to it, module holding __version__)
RUNTIMES: dict[str, tuple[str, str, str]] = {
    "ai_edge_litert": ("ai_edge_litert.interpreter", "Interpreter", "ai_edge_litert"),
    "tflite_runtime": ("tflite_runtime.interpreter", "Interpreter", "tflite_runtime"),
    "tensorflow": ("tensorflow", "lite.Interpreter", "tensorflow"),
}


class RuntimeUnavailable(Exception):
    """No runtime in the chain could build an interpreter for the model; the message lists why each failed."""


class DelegateUnavailable(RuntimeUnavailable):
    """The configured delegate (an accelerator) cannot load, or cannot take the model; the CPU could."""


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    version: str
    delegate: str = "xnnpack"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "delegate": self.delegate}


@dataclass(frozen=True)
class TensorInfo:
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int
    name: str = ""

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0


def _tensor_info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        index=int(detail["index"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
        name=str(detail.get("name", "")),
    )


def _build(name: str, model_content: bytes, settings: EngineSettings) -> tuple[Any, RuntimeInfo]:
    module_name, attr_path, version_module = RUNTIMES[name]
    module: Any = importlib.import_module(module_name)
    factory = module
    for attr in attr_path.split("."):
        factory = getattr(factory, attr)
    delegate_module = module.lite.experimental if name == "tensorflow" else module  # load_delegate, OpResolverType
    extra = delegate_for(settings.delegate).interpreter_kwargs(delegate_module, settings.delegate_options)
    try:
        interpreter = factory(model_content=model_content, num_threads=settings.threads, **extra)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        if not extra.get("experimental_delegates"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DelegateError(f"the {settings.delegate} delegate loaded but failed on this model: {first}") from None
    version = getattr(importlib.import_module(version_module), "__version__", "unknown")
    return interpreter, RuntimeInfo(name=name, version=str(version), delegate=settings.delegate)


def runtime_candidates(preferred: str | None = None) -> list[str]:
    """The runtimes to try, in order: the env override, else the configured one, else the whole chain."""
    choice = os.environ.get(RUNTIME_ENV) or preferred
    if choice in (None, "", "auto"):
        return list(RUNTIMES)
    if choice not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime '{choice}' (choose from: auto, {', '.join(RUNTIMES)})")
    return [choice]


class Engine:
    """One interpreter (use one per thread): set a prepared input tensor, invoke, read the outputs."""

    def __init__(self, model_content: bytes, settings: EngineSettings | None = None) -> None:
        settings = settings or EngineSettings()
        failures: list[str] = []
        for name in runtime_candidates(settings.runtime):
            try:
                self._interpreter, self.runtime = _build(name, model_content, settings)
                break
            except ImportError as exc:
                failures.append(f"{name}: not installed ({exc.name or exc})")
            except DelegateError as exc:  # the same on every runtime: say it once
                raise DelegateUnavailable(str(exc)) from None
            except Exception as exc:  # a runtime that cannot build this model: try the next one
                failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        else:
            raise RuntimeUnavailable("no TFLite runtime could load the model — " + "; ".join(failures))
        self._model_content = model_content  # the interpreter may reference this buffer; keep it alive
        self.settings = settings
        self.fallback_from: tuple[EngineSettings, str] | None = None  # (the wanted settings, why the CPU runs)
        self.threads = settings.threads
        self.inputs = [_tensor_info(d) for d in self._interpreter.get_input_details()]
        self.outputs = [_tensor_info(d) for d in self._interpreter.get_output_details()]
        log.info(
            "event=interpreter runtime=%s version=%s threads=%d delegate=%s inputs=%s outputs=%s",
            self.runtime.name,
            self.runtime.version,
            settings.threads,
            settings.describe(),
            [(t.shape, t.dtype.name) for t in self.inputs],
            [(t.shape, t.dtype.name) for t in self.outputs],
        )

    def twin(self) -> Engine:
        """Another interpreter of the same model, built the same way (for another thread)."""
        return Engine(self._model_content, self.settings)

    @property
    def interpreter(self) -> Any:
        """The underlying TFLite Interpreter (for benchmarks that compare against raw use)."""
        return self._interpreter

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Invoke on one input tensor (already shaped and typed for input 0); return every output."""
        self._interpreter.set_tensor(self.inputs[0].index, tensor)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(t.index) for t in self.outputs]


def build_engine(model_content: bytes, settings: EngineSettings, fallback: bool = True) -> Engine:
    """An interpreter with `settings`; when its accelerator delegate cannot load or take the model and
    `fallback` is on, one on the CPU (`xnnpack`) instead, which says what it stands in for (`fallback_from`)."""
    try:
        return Engine(model_content, settings)
    except DelegateUnavailable as exc:
        if not fallback or settings.delegate in CPU:
            raise
        engine = Engine(model_content, dataclasses.replace(settings, delegate=DEFAULT, delegate_options={}))
        engine.fallback_from = (settings, str(exc))
        log.info("event=delegate_unavailable delegate=%s fallback=%s error=%r", settings.delegate, DEFAULT, str(exc))
        return engine
