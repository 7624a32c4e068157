"""Sensor readings → windows. Shared by the line-oriented sensor sources (replay, stdin, serial) and iio.

A reading is a timestamp and one value per model channel (NaN where the line lacked or garbled one — the
sensor gate then rejects the window as `non_finite`, with the channel named). Lines are CSV (with a header
line naming the columns, or `columns` from the config) or JSON objects (`{"t": 1.02, "ax": 0.1, ...}`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from edge_infer.clock import rfc3339
from edge_infer.manifest import SensorInputSpec
from edge_infer.options import opt
from edge_infer.sources import Sample, SourceConfig


@dataclass(frozen=True, kw_only=True)
class LineOptions(SourceConfig):
    """The `[source]` keys of every source that reads lines of readings (replay, stdin, serial)."""

    format: str = opt("auto", choices=("auto", "csv", "jsonl"))
    columns: tuple[str, ...] | None = opt(None, check=lambda v: None if v and all(isinstance(c, str) for c in v)
                                          else "expected a list of column names")
    time_column: str | None = opt(None)

log = logging.getLogger(__name__)
Reading = tuple[float | None, np.ndarray]
TIME_COLUMNS = ("t", "time", "timestamp", "ts")


class ReadingParser:
    """One line → a reading. The CSV column layout is learnt from a header line, taken from `columns`, or
    assumed to be the model's channels (optionally preceded by a time column)."""

    def __init__(self, channels: tuple[str, ...], fmt: str = "auto", columns: list[str] | None = None,
                 time_column: str | None = None) -> None:
        self.channels = channels
        self.fmt = fmt
        self.columns = list(columns) if columns else None
        self.time_column = time_column
        self.malformed = 0

    def parse(self, line: str) -> Reading | None:
        """None for blank, comment and header lines."""
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        if self.fmt == "jsonl" or (self.fmt == "auto" and text.startswith("{")):
            return self._json(text)
        return self._csv(text)

    def _json(self, text: str) -> Reading | None:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):  # a deeply nested line is malformed, not a crash
            doc = None
        if not isinstance(doc, dict):
            self.malformed += 1
            return None, np.full(len(self.channels), np.nan)
        values = np.array([_number(doc.get(c)) for c in self.channels], dtype=np.float64)
        key = self.time_column or next((k for k in TIME_COLUMNS if k in doc), None)
        return (_number(doc.get(key)) if key else None), values

    def _csv(self, text: str) -> Reading | None:
        try:
            row = next(csv.reader([text]), [])  # the csv module: a quoted "a,b" stays one field
        except csv.Error:  # a stray newline or NUL inside the line: malformed, like any unreadable line
            self.malformed += 1
            return None, np.full(len(self.channels), np.nan)
        return self.fields(row)

    def fields(self, row: list[str]) -> Reading | None:
        """One CSV row already split into fields (a header row sets the columns and gives None)."""
        fields = [f.strip() for f in row]
        if self.columns is None:
            if not all(_is_number(f) or f == "" for f in fields):
                self.columns = fields  # a header line
                missing = [c for c in self.channels if c not in fields]
                if missing:
                    log.warning("event=sensor_columns_missing missing=%s header=%s", missing, fields)
                return None
            n = len(self.channels)
            self.columns = list(self.channels) if len(fields) == n else ["t", *self.channels][: len(fields)]
        row = dict(zip(self.columns, fields, strict=False))
        if len(fields) != len(self.columns):
            self.malformed += 1
        values = np.array([_number(row.get(c)) for c in self.channels], dtype=np.float64)
        key = self.time_column or next((k for k in TIME_COLUMNS if k in row), None)
        t = _number(row.get(key)) if key else None
        return (None if t is not None and math.isnan(t) else t), values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.lower() in ("nan", "inf", "-inf")
    return True


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Windower:
    """Readings in, a (window, channels) array out every `hop` readings once the first window is full."""

    def __init__(self, window: int, hop: int, channels: int) -> None:
        self.window, self.hop = window, hop
        self.values = np.empty((0, channels))
        self.times = np.empty(0)
        self.count = 0  # readings seen
        self._until_next = window

    def push(self, t: float, values: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(index of the window's first reading, readings, times) when a window completes."""
        self.values = np.vstack([self.values[-(self.window - 1):] if self.window > 1 else self.values[:0],
                                 values[np.newaxis]])
        self.times = np.append(self.times[-(self.window - 1):], t)
        self.count += 1
        self._until_next -= 1
        if self._until_next > 0 or len(self.values) < self.window:
            return None
        self._until_next = self.hop
        return self.count - self.window, self.values.copy(), self.times.copy()


class SensorStream:
    """Base of the sensor sources: readings → windows → `Sample`s. Subclasses implement `readings`."""

    kind = "sensor"
    live = False

    def __init__(self, options: SourceConfig, spec: SensorInputSpec) -> None:
        self.spec = spec
        self.name = options.name or options.type
        lines = options if isinstance(options, LineOptions) else LineOptions(type=options.type)
        self.parser = ReadingParser(spec.channels, lines.format, lines.columns, lines.time_column)
        self.dropped = 0

    def readings(self, stop: threading.Event, once: bool) -> Iterator[Reading]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What makes these windows' ids unique across runs (a live stream: when it started)."""
        return f"{time.time():.6f}"

    def input_id(self, start: int, t0: float) -> str:
        return f"{self.name}@{rfc3339(t0)}#{start}"

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        windower = Windower(self.spec.window, self.spec.hop, len(self.spec.channels))
        fingerprint = self.fingerprint()
        period = 1.0 / self.spec.sample_rate
        origin: float | None = None
        for t, values in self.readings(stop, once):
            if t is None:  # no timestamps in the data: evenly spaced at the model's sample rate
                origin = time.time() if origin is None else origin
                t = origin + windower.count * period
            window = windower.push(t, values)
            if window is None:
                continue
            start, readings, times = window
            sample = Sample(self.name, self.input_id(start, float(times[0])), fingerprint, float(times[-1]), None,
                            window=readings, times=times)
            if done(sample):
                continue
            yield sample
            if stop.is_set():
                return


MAX_LINE = 64 * 1024  # characters of one reading line: a longer one is dropped (a garbled or hostile input)


def bounded_lines(stream: TextIO, source: str, limit: int = MAX_LINE) -> Iterator[str]:
    """The lines of a file or pipe, each held to `limit` characters: a longer line is skipped to its end
    without ever being held whole, with one log line (memory stays bounded whatever arrives)."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or (line.endswith("\n") and len(line) == limit + 1):
            yield line
            continue
        dropped = len(line)
        while line and not line.endswith("\n"):  # the rest of the long line, a piece at a time
            line = stream.readline(limit)
            dropped += len(line)
        log.warning("event=line_dropped source=%s chars=%d (longer than %d)", source, dropped, limit)


def lines_to_readings(lines: Iterable[str], parser: ReadingParser, stop: threading.Event) -> Iterator[Reading]:
    for line in lines:
        if stop.is_set():
            return
        reading = parser.parse(line)
        if reading is not None:
            yield reading
