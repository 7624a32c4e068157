"""The TFLite runtime chain: ai_edge_litert → tflite_runtime → tensorflow.lite, with a delegate.

A runtime is chosen by *building an interpreter on the model*, not by importing a module: tflite-runtime
imports fine under numpy 2 and only fails when an Interpreter is created. `EDGE_INFER_RUNTIME` (or the
config's `model.runtime`) restricts the choice to one runtime. How the interpreter runs the model (kernels,
accelerator) is the delegate's business (`edge_infer.delegates`), given in one `EngineSettings`.

An engine on an accelerator keeps the CPU model at hand: when the delegate cannot load or take the model
(`build_engine`), or when `invoke()` fails later (the accelerator unplugged) or does not return within
`EngineSettings.timeout_s` (locked up: `edge_infer.deadline`), the CPU model runs instead — the failed input
again, at once — and `fallback_from` says what was wanted and why it is not running.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_infer.deadline import Caller, Hung
from edge_infer.delegates import DEFAULT, DelegateError, EngineSettings, delegate_for
from edge_infer.trial import try_in_child
from edge_infer.variants import CPU_VARIANT

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
    """Which runtime built an interpreter, its version, and the delegate it runs with."""

    name: str
    version: str
    delegate: str = "xnnpack"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "delegate": self.delegate}


@dataclass(frozen=True)
class Fallback:
    """Why the CPU runs the model: the settings, model bytes and variant name that were wanted, and the error."""

    wanted: EngineSettings
    error: str
    content: bytes = dataclasses.field(repr=False)
    variant: str


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

    def contract(self) -> tuple[tuple[int, ...], str, float, int]:
        """What a caller relies on: shape, type and quantization (not the index or the name)."""
        return self.shape, self.dtype.name, round(self.scale, 9), self.zero_point


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


def _interpreter_class(name: str) -> tuple[Any, Any]:
    """The runtime `name`'s module and its Interpreter class (raises `ImportError`)."""
    module_name, attr_path, _ = RUNTIMES[name]
    module: Any = importlib.import_module(module_name)
    factory = module
    for attr in attr_path.split("."):
        factory = getattr(factory, attr)
    return module, factory


def _build(name: str, model_content: bytes, settings: EngineSettings) -> tuple[Any, RuntimeInfo]:
    module, factory = _interpreter_class(name)
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
    version = getattr(importlib.import_module(RUNTIMES[name][2]), "__version__", "unknown")
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
    """One interpreter (use one per thread): set a prepared input tensor, invoke, read the outputs. `variant` names
    the model bytes it runs (`edge_infer.variants`); `cpu_content`, the CPU model an accelerator falls back to
    when `fallback` is on (default: the same bytes). On an accelerator with `settings.timeout_s`, an `invoke()`
    that does not return in time counts as failed (`deadline.Hung`): the accelerator has locked up."""

    def __init__(self, model_content: bytes, settings: EngineSettings | None = None, variant: str = CPU_VARIANT,
                 cpu_content: bytes | None = None, fallback: bool = False) -> None:
        settings = settings or EngineSettings()
        self._interpreter, self.runtime = _first_runtime(model_content, settings)
        self._model_content = model_content  # the interpreter may reference this buffer; keep it alive
        self._cpu_content = cpu_content if cpu_content is not None else model_content
        self.settings, self.variant = settings, variant
        self.may_fall_back = fallback and settings.accelerated
        self.fallback_from: Fallback | None = None
        self._caller = _caller(settings, "invoke")
        weakref.finalize(self, self._caller.close)
        self._late: Caller | None = None  # a call to the accelerator that missed its deadline (while it runs on)
        self.threads = settings.threads
        self.inputs = [_tensor_info(d) for d in self._interpreter.get_input_details()]
        self.outputs = [_tensor_info(d) for d in self._interpreter.get_output_details()]
        log.info(
            "event=interpreter runtime=%s version=%s threads=%d delegate=%s variant=%s inputs=%s outputs=%s",
            self.runtime.name,
            self.runtime.version,
            settings.threads,
            settings.describe(),
            variant,
            [(t.shape, t.dtype.name) for t in self.inputs],
            [(t.shape, t.dtype.name) for t in self.outputs],
        )

    def twin(self) -> Engine:
        """Another interpreter of the same model, built the same way (for another thread); on the CPU model when
        the accelerator cannot load it now (as `build_engine`)."""
        return build_engine(self._model_content, self.settings, self.may_fall_back, self.variant, self._cpu_content)

    @property
    def ran_on(self) -> dict[str, str]:
        """What results say made them: the model variant and the delegate it ran with."""
        return {"variant": self.variant, "delegate": self.settings.delegate}

    @property
    def interpreter(self) -> Any:
        """The underlying TFLite Interpreter (for benchmarks that compare against raw use)."""
        return self._interpreter

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Invoke on one input tensor (already shaped and typed for input 0); return every output. On an
        accelerator that fails or hangs here, with `fallback` on, the CPU model takes over and answers this input."""
        try:
            return self._invoke(tensor)
        except RuntimeError as exc:  # `Hung` included
            if isinstance(exc, Hung) and not self.may_fall_back:
                raise Hung(_failure(self.settings, exc, "")) from None  # delegate_fallback = false: say which
            if not self.may_fall_back or self.fallback_from is not None:
                raise
            self._fall_back(_failure(self.settings, exc, "failed during inference"))
        return self._invoke(tensor)

    def _invoke(self, tensor: np.ndarray) -> list[np.ndarray]:
        # a late call that returns after a fallback touches only its own interpreter
        interpreter, inputs, outputs = self._interpreter, self.inputs, self.outputs
        answer = _answerer(self.settings)
        return self._caller.call(lambda: answer(interpreter, inputs, outputs, tensor))

    def _fall_back(self, error: str) -> None:
        """From now on this engine runs the CPU model (same contract), remembering what it stands in for."""
        cpu = Engine(self._cpu_content, cpu_settings(self.settings))
        fallback = Fallback(self.settings, error, self._model_content, self.variant)
        late = self._caller if self._caller.spent else None
        self._caller.close()
        self._interpreter, self.runtime, self.settings = cpu.interpreter, cpu.runtime, cpu.settings
        self.variant, self._model_content = cpu.variant, self._cpu_content
        self._caller = _caller(self.settings, "invoke")
        self.stand_in(fallback, late)
        log.warning("event=delegate_failed delegate=%s fallback=%s error=%r", fallback.wanted.delegate,
                    self.settings.delegate, error)

    def give_up(self, reason: str) -> None:
        """Stop using the accelerator for `reason`: from the next call on the CPU model answers, as after a failure
        (`retry` brings it back). Nothing changes on the CPU, after a fallback, or without `fallback`."""
        if self.settings.accelerated and self.may_fall_back and self.fallback_from is None:
            self._fall_back(reason)

    def stand_in(self, fallback: Fallback, late: Caller | None = None) -> None:
        """This CPU engine runs instead of `fallback.wanted`; `late`: a call to that accelerator which missed its
        deadline (no retry while it is still blocked in it — each would leave another thread behind)."""
        self._late = late
        self.fallback_from = fallback  # last: the housekeeping thread reads it to say what runs now

    def retry(self) -> Engine:
        """While this engine stands in for an accelerator: a new engine on it, proven by one inference on a zero
        input within the deadline, after a child process did the same (`edge_infer.trial`); raises
        `DelegateUnavailable` while the accelerator is still gone, failing, crashing or locked up — and at once while
        an earlier call to it is still blocked: a locked-up accelerator is not loaded again until it answers that
        call."""
        assert self.fallback_from is not None, "nothing to retry: this engine runs what was wanted"
        wanted = self.fallback_from
        if self._late is not None and self._late.busy:
            raise DelegateUnavailable(f"the {wanted.wanted.delegate} delegate has not answered an earlier call yet "
                                      "(locked up?)")
        problem = try_in_child(wanted.content, wanted.wanted)  # a crash or a hang at load takes only the child
        if problem is not None:
            raise DelegateUnavailable(problem)
        caller = _caller(wanted.wanted, "retry")
        try:
            return caller.call(lambda: self._proven(wanted))
        except Hung as exc:
            self._late = caller
            raise DelegateUnavailable(_failure(wanted.wanted, exc, "failed")) from None
        finally:
            caller.close()

    def _proven(self, wanted: Fallback) -> Engine:
        engine = Engine(wanted.content, wanted.wanted, wanted.variant, self._cpu_content, True)
        try:
            engine.prove()
        except RuntimeError as exc:
            raise DelegateUnavailable(_failure(wanted.wanted, exc, "failed during inference")) from None
        return engine

    def prove(self) -> None:
        """One inference on a zero input, on this engine's own interpreter, never falling back and unguarded by
        the deadline (raises the runtime's RuntimeError)."""
        zero = np.zeros(self.inputs[0].shape, self.inputs[0].dtype)
        _answerer(self.settings)(self._interpreter, self.inputs, self.outputs, zero)


def _answer(interpreter: Any, inputs: list[TensorInfo], outputs: list[TensorInfo], tensor: np.ndarray
            ) -> list[np.ndarray]:
    interpreter.set_tensor(inputs[0].index, tensor)
    interpreter.invoke()
    return [interpreter.get_tensor(t.index) for t in outputs]


def accelerator_answer(interpreter: Any, inputs: list[TensorInfo], outputs: list[TensorInfo], tensor: np.ndarray
                       ) -> list[np.ndarray]:
    """`_answer` on an accelerator, in a frame of its own name: a process that dies of a fatal signal with this
    frame on a thread's stack died in the accelerator (`edge_infer.crashes`)."""
    return _answer(interpreter, inputs, outputs, tensor)


def _answerer(settings: EngineSettings) -> Callable[..., list[np.ndarray]]:
    """What runs one inference: on an accelerator in `accelerator_answer`'s frame, on the CPU `_answer`."""
    return accelerator_answer if settings.accelerated else _answer


def _caller(settings: EngineSettings, what: str) -> Caller:
    """Calls on an accelerator wait at most its deadline; on the CPU they run in the calling thread."""
    return Caller(settings.timeout_s if settings.accelerated else 0.0, f"{settings.delegate}-{what}")


def _failure(settings: EngineSettings, exc: BaseException, what: str) -> str:
    """One line on why the accelerator is not used: a deadline missed, or the runtime's error."""
    if isinstance(exc, Hung):
        return f"the {settings.delegate} delegate did not answer within {settings.timeout_s:g} s (locked up?)"
    return f"the {settings.delegate} delegate {what}: {first_line(exc)}"


def first_line(exc: BaseException) -> str:
    """An exception's first line (its type's name when it has no message)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _first_runtime(model_content: bytes, settings: EngineSettings) -> tuple[Any, RuntimeInfo]:
    """An allocated interpreter from the first runtime of the chain that can build one for the model."""
    failures: list[str] = []
    for name in runtime_candidates(settings.runtime):
        try:
            return _build(name, model_content, settings)
        except ImportError as exc:
            failures.append(f"{name}: not installed ({exc.name or exc})")
        except DelegateError as exc:  # the same on every runtime: say it once
            raise DelegateUnavailable(str(exc)) from None
        except Exception as exc:  # a runtime that cannot build this model: try the next one
            failures.append(f"{name}: {type(exc).__name__}: {first_line(exc) if str(exc) else ''}")
    raise RuntimeUnavailable("no TFLite runtime could load the model — " + "; ".join(failures))


def cpu_settings(settings: EngineSettings) -> EngineSettings:
    """The same threads and runtime on the CPU (the default delegate)."""
    return dataclasses.replace(settings, delegate=DEFAULT, delegate_options={})


def build_engine(model_content: bytes, settings: EngineSettings, fallback: bool = True,
                 variant: str = CPU_VARIANT, cpu_content: bytes | None = None) -> Engine:
    """An interpreter with `settings` on `model_content` (the `variant`); when its accelerator delegate cannot
    load or take the model and `fallback` is on, one on the CPU model (`cpu_content`, default the same bytes)
    instead, which says what it stands in for (`fallback_from`) — and later failures during inference fall back
    the same way (`Engine.run`). An accelerator is tried in a child process first (`edge_infer.trial`): loading
    a delegate holds the GIL in both runtimes, so a load that crashes or hangs would take this process with it."""
    try:
        if settings.accelerated and (problem := try_in_child(model_content, settings)) is not None:
            raise DelegateUnavailable(problem)
        return Engine(model_content, settings, variant, cpu_content, fallback)
    except DelegateUnavailable as exc:
        if not fallback or not settings.accelerated:
            raise
        engine = Engine(cpu_content if cpu_content is not None else model_content, cpu_settings(settings))
        engine.stand_in(Fallback(settings, str(exc), model_content, variant))
        log.info("event=delegate_unavailable delegate=%s fallback=%s error=%r", settings.delegate, DEFAULT, str(exc))
        return engine


def tensor_contract(model_content: bytes, runtime: str | None = None) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """A model's input and output tensors, read without allocating it (so a model compiled for an accelerator,
    whose custom operator this machine cannot run, is readable too). Raises `RuntimeUnavailable`."""
    failures: list[str] = []
    for name in runtime_candidates(runtime):
        try:
            interpreter = _interpreter_class(name)[1](model_content=model_content)
            return ([_tensor_info(d) for d in interpreter.get_input_details()],
                    [_tensor_info(d) for d in interpreter.get_output_details()])
        except ImportError as exc:
            failures.append(f"{name}: not installed ({exc.name or exc})")
        except Exception as exc:  # not a model this runtime can read
            failures.append(f"{name}: {first_line(exc)}")
    raise RuntimeUnavailable("cannot read the model's tensors — " + "; ".join(failures))
