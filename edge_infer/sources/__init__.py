"""Input sources, registered by their config `type`. Each yields `Sample`s; the daemon never asks how."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Sample:
    """One input. `input_id` is what subscribers see; `key` (id + fingerprint) is what checkpoints record.

    `data` is None when the input could not be read; `read_error` then says why.
    """

    source: str
    input_id: str
    fingerprint: str
    ts: float
    data: bytes | None
    read_error: str | None = None
    path: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.input_id}@{self.fingerprint}"


class Source(Protocol):
    name: str

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        """Yield samples until `stop` is set (or, with `once`, until what the source holds is exhausted).

        `done(sample)` tells the source an input was already processed (checkpointed) so it can skip it.
        """
        ...


SOURCES: dict[str, Callable[[dict[str, Any]], Source]] = {}


def register(kind: str) -> Callable[[Callable[[dict[str, Any]], Source]], Callable[[dict[str, Any]], Source]]:
    def decorate(factory: Callable[[dict[str, Any]], Source]) -> Callable[[dict[str, Any]], Source]:
        SOURCES[kind] = factory
        return factory

    return decorate


def make_source(options: dict[str, Any]) -> Source:
    """Build the source a validated `[source]` table describes."""
    from edge_infer.sources import directory  # noqa: F401  (registers itself)

    return SOURCES[options["type"]](options)
