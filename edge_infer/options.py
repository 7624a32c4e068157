"""How a config key is declared: its type, default, choices, check and whether it is a path. The config
(`edge_infer.config`) declares the core sections with `Field`; every plug-in declares its own keys the same way,
next to its code (`OPTIONS` in a source module, a sink module), and the config validates them all alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], str | None]  # None when the value is fine, else what was expected


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = ()
    check: Check | None = None
    is_path: bool = False


def between(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"expected a value from {lo} to {hi}, got {v}"


def http_url(v: str) -> str | None:
    return None if v.startswith(("http://", "https://")) and len(v.split("/", 3)) > 2 and v.split("/", 3)[2] \
        else f"expected an http:// or https:// URL, got {v!r}"
