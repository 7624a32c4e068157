"""Delegates: how an interpreter runs the model — which kernels, which accelerator. One module per delegate,
registered by its `[model].delegate` name; each declares its own options and turns them into the keyword
arguments of the runtime's `Interpreter`. The engine (`edge_infer.runtime`) asks the registry and never names
a delegate itself.

- `xnnpack` (default): the runtime's own choice — XNNPACK for the operators it supports, built-in kernels for
  the rest.
- `builtin`: the built-in optimized kernels only, no default delegate (when XNNPACK misbehaves on a model, or
  to save its memory).
- `reference`: the reference kernels (slow; for checking a suspected kernel bug).
- `external`: any TFLite delegate library (`load_delegate(library, options)`): Arm NN, a vendor NPU, …
- `edgetpu`: a Coral Edge TPU (`libedgetpu.so.1`); the model must be compiled for it (`edgetpu_compiler`).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_infer.registry import Registry

DEFAULT = "xnnpack"
NAMES = ("xnnpack", "builtin", "reference", "external", "edgetpu")
CPU = ("xnnpack", "builtin", "reference")  # the rest are accelerators: they can go away, the CPU takes over


class DelegateError(ValueError):
    """A delegate that cannot be used as configured; one line naming the option and what was expected."""


@dataclass(frozen=True)
class EngineSettings:
    """How every interpreter of this device is built: threads, runtime, delegate, the delegate's options and how
    long an accelerator may take to answer."""

    threads: int = 1
    runtime: str | None = None  # None or "auto": the chain ai_edge_litert → tflite_runtime → tensorflow
    delegate: str = DEFAULT
    delegate_options: dict[str, Any] = field(default_factory=dict)
    # an accelerator's inference that takes longer has locked up (the CPU takes over); 0: wait forever
    timeout_s: float = 0.0

    @property
    def accelerated(self) -> bool:
        """An accelerator runs the model: it can go away, and the CPU takes over."""
        return self.delegate not in CPU

    def describe(self) -> str:
        return self.delegate if not self.delegate_options else f"{self.delegate} {self.delegate_options}"


class Delegate(Protocol):
    """One way to run a model. `interpreter_kwargs` is called once per interpreter with the runtime's
    `interpreter` module (it holds `load_delegate` and `OpResolverType`)."""

    name: str

    def check(self, options: dict[str, Any]) -> None:
        """Raise `DelegateError` for an option this delegate does not take or a bad value."""

    def interpreter_kwargs(self, module: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments for `Interpreter(...)` (raises to say the delegate cannot be loaded)."""


@dataclass(frozen=True)
class Grants:
    """What a delegate's hardware needs from the service's sandbox: device nodes or classes (`DeviceAllow=`),
    the groups that own them, and socket families beyond the MQTT ones."""

    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    families: tuple[str, ...] = ()


def grants_for(name: str, options: dict[str, Any]) -> Grants:
    """The sandbox grants of delegate `name` with `options` (a delegate without hardware needs none)."""
    delegate = delegate_for(name)
    grants = getattr(delegate, "grants", None)
    return grants(options) if grants is not None else Grants()


_DELEGATES: Registry[Callable[[], Delegate]] = Registry("edge_infer.delegates", NAMES, "delegate")
register = _DELEGATES.register


def delegate_for(name: str) -> Delegate:
    """The delegate registered as `name` (its module is imported on first use)."""
    try:
        return _DELEGATES.factory(name)()
    except ValueError as exc:
        raise DelegateError(str(exc)) from None


def check_options(name: str, options: dict[str, Any]) -> None:
    """Validate `[model].delegate` and `[model.delegate_options]` (the config asks before anything loads)."""
    delegate_for(name).check(options)


def unknown_options(name: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    """The common check: only `known` option names (raises `DelegateError`)."""
    extra = sorted(set(options) - set(known))
    if extra:
        takes = f"it takes {', '.join(known)}" if known else "it takes none"
        raise DelegateError(f"[model.delegate_options]: {', '.join(extra)}: not an option of the {name!r} delegate "
                            f"({takes})")


def load_library(module: Any, library: str, options: dict[str, str]) -> Any:
    """`module.load_delegate(library, options)`; a failure becomes one `DelegateError` line with the loader's
    reason. (A delegate that failed to load is collected half-built and its `__del__` raises — a runtime bug
    whose traceback is not the user's problem: it is silenced while it happens, here.)"""
    problem = ""
    previous, sys.unraisablehook = sys.unraisablehook, lambda _args: None
    try:
        try:
            return module.load_delegate(library, options)
        except (OSError, ValueError, RuntimeError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except AttributeError:  # ctypes: a shared library without the external-delegate entry points
            problem = "it is not a TFLite external delegate (no tflite_plugin_create_delegate in it)"
        gc.collect()
    finally:
        sys.unraisablehook = previous
    raise DelegateError(problem)
