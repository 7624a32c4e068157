"""Input sources, registered by their config `type`. Each yields `Sample`s; the daemon never asks how."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_infer.options import between, opt
from edge_infer.registry import Registry

if TYPE_CHECKING:  # annotations only: the config reads TYPES without paying for numpy and Pillow
    import numpy as np
    from PIL import Image

TYPES = ("directory", "camera", "http", "video", "replay", "stdin", "serial", "iio")  # one module each, by name


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """`[source]`: the keys every source has. A source module's `Options` subclasses it with its own keys."""

    type: str = opt(required=True, choices=TYPES)
    name: str | None = opt(None)  # what results name as their source (default: the type)
    max_fps: float = opt(0.0, check=between(0, 10_000))  # live sources: at most this many samples a second (0: all)


@dataclass(frozen=True)
class Sample:
    """One input. `input_id` is what subscribers see; `key` (id + fingerprint) is what checkpoints record.

    `data` holds encoded bytes (an image file); live cameras and video hand over a decoded `image` instead, and
    sensor sources a `window` of readings (window × channels, float64, NaN where a reading was missing) with
    the readings' `times` (seconds). `data` is None when the input could not be read; `read_error` says why.
    """

    source: str
    input_id: str
    fingerprint: str
    ts: float
    data: bytes | None
    read_error: str | None = None
    path: Path | None = None
    image: Image.Image | None = field(default=None, compare=False, repr=False)
    window: np.ndarray | None = field(default=None, compare=False, repr=False)
    times: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def readable(self) -> bool:
        return self.data is not None or self.image is not None or self.window is not None

    @property
    def key(self) -> str:
        return f"{self.input_id}@{self.fingerprint}"


class SourceError(Exception):
    """A source that cannot start or went away for good (missing library, port, device); one line."""


class Source(Protocol):
    name: str
    kind: str  # "image" or "sensor": what the model's input must be
    live: bool  # a camera/stream/port that will not wait: only the newest sample is kept when behind
    dropped: int  # samples a live source discarded because the pipeline was behind

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        """Yield samples until `stop` is set (or, with `once`, until what the source holds is exhausted).

        `done(sample)` tells the source an input was already processed (checkpointed) so it can skip it.
        """
        ...


Factory = Callable[[Any, Any], Source]  # (the type's validated Options, the model's input spec) → source
_SOURCES: Registry[Factory] = Registry("edge_infer.sources", TYPES, "source type")
register = _SOURCES.register


def make_source(options: SourceConfig, spec: Any) -> Source:
    """Build the source a validated `[source]` table describes, for a model whose input is `spec`.
    Live sources come wrapped so that a slow pipeline sees the newest sample, never a growing backlog."""
    source = _SOURCES.factory(options.type)(options, spec)
    if source.live:
        from edge_infer.sources.live import NewestOnly

        return NewestOnly(source, options.max_fps)
    return source
