"""How config keys are declared: a frozen dataclass per table, one annotated attribute per key, `opt(...)` for
its default, choices, check and whether it is a path. The core sections (`edge_infer.sections`) and every
plug-in's own keys (`Options` in a source or sink module) are declared alike, and the config validates them all
with `fields_of`: the annotation gives the accepted TOML types, `opt` the rest.

Values are frozen when built (`build`): lists become tuples and tables `FrozenDict`s, so no part of a running
config can be changed in place — a reload builds a new one.

A key with a `unit` ("s", "ms" or "bytes") also takes a string with its unit written out — durations `"250ms"`,
`"30s"`, `"5m"`, `"2h"`, `"7d"`; sizes `"512B"`, `"64KiB"`, `"64MiB"`, `"1GiB"` (K/M/G alone are the same binary
units, as in systemd; kB/MB/GB are decimal) — and `quantity` turns it into the key's unit. A bare number is
still that unit (seconds, milliseconds or bytes, as the key says).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

Check = Callable[[Any], str | None]  # None when the value is fine, else what was expected
T = TypeVar("T")


@dataclass(frozen=True)
class Field:
    """One key as the validator sees it: accepted TOML types, default, choices, check, path or not."""

    kind: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = ()
    check: Check | None = None
    is_path: bool = False
    unit: str | None = None  # "s", "ms" or "bytes": a string with a unit is accepted too (`quantity`)


SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
BYTES = {"b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
         "t": 1024**4, "tib": 1024**4, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*$")
EXAMPLES = {"s": '"30s", "5m", "2h" (or a number of seconds)', "ms": '"250ms", "2s" (or a number of milliseconds)',
            "bytes": '"64MiB", "512KiB", "1GiB" (or a number of bytes)'}


def quantity(text: str, unit: str, whole: bool = False) -> float | int:
    """`"5m"` → 300.0 for a key in seconds, `"64MiB"` → 67108864 for one in bytes; ValueError (what is expected)
    for anything else. `whole`: the key holds an integer (a fraction of its unit is refused)."""
    match = _QUANTITY.match(text)
    scale = None
    if match:
        suffix = match.group(2) if unit != "bytes" else match.group(2).lower()
        scale = (SECONDS.get(suffix) if unit != "bytes" else BYTES.get(suffix))
    if match is None or scale is None:
        raise ValueError(f"expected {EXAMPLES[unit]}, got {text!r}")
    value = float(match.group(1)) * scale / (SECONDS["ms"] if unit == "ms" else 1.0)
    if whole or unit == "bytes":
        if abs(value - round(value)) > 1e-9 * max(1.0, value):
            raise ValueError(f"{text!r} is not a whole number of {'bytes' if unit == 'bytes' else 'seconds'}")
        return round(value)
    return value


class FrozenDict(dict):  # type: ignore[type-arg]
    """A table of a frozen config: reads like a dict (and serializes as one), refuses every change."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a config table is frozen: build a new config instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))


def opt(default: Any = dataclasses.MISSING, *, required: bool = False, choices: tuple[Any, ...] = (),
        check: Check | None = None, is_path: bool = False, unit: str | None = None) -> Any:
    """Declare one key of a config table (see the module docstring); list and dict defaults are frozen."""
    meta = {"opt": (required, choices, check, is_path, unit)}
    if required:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=freeze(default), metadata=meta)


def freeze(value: Any) -> Any:
    """Lists → tuples and dicts → `FrozenDict`s, all the way down."""
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    return value


def _kinds(hint: Any) -> tuple[type, ...]:
    """The TOML value types an annotation accepts: `float` takes integers too, tuples are TOML lists."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        out: list[type] = []
        for arg in typing.get_args(hint):
            out += [k for k in _kinds(arg) if k not in out]
        return tuple(out)
    if hint is type(None):
        return ()
    if hint is float:
        return (int, float)
    if hint is tuple or origin is tuple:
        return (list,)
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        return (dict,)
    return (hint,)


@functools.cache
def fields_of(cls: type) -> dict[str, Field]:
    """Every key a config table declares, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        required, choices, check, is_path, unit = f.metadata.get("opt", (False, (), None, False, None))
        kinds = _kinds(hints[f.name]) + ((str,) if unit else ())
        default = None if required else (f.default_factory() if f.default is dataclasses.MISSING  # type: ignore[misc]
                                         else f.default)
        out[f.name] = Field(kinds[0] if len(kinds) == 1 else kinds, default, required, choices, check, is_path,
                            unit)
    return out


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """A frozen instance of a config table from validated values."""
    return cls(**{k: freeze(v) for k, v in values.items()})


def between(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"expected a value from {lo} to {hi}, got {v}"


def http_url(v: str) -> str | None:
    return None if v.startswith(("http://", "https://")) and len(v.split("/", 3)) > 2 and v.split("/", 3)[2] \
        else f"expected an http:// or https:// URL, got {v!r}"
