"""`type = "iio"`: a Linux Industrial I/O sensor (an I²C accelerometer, IMU, ADC…) read through sysfs.

Each model channel maps to a sysfs channel prefix (`channels = { ax = "in_accel_x", ... }`, default: the
channel's own name). A reading is `(<prefix>_raw + offset) × scale`, with scale and offset from
`<prefix>_scale`/`_offset` or the shared `<type>_scale`/`_offset` (e.g. `in_accel_scale`), as the kernel's
IIO ABI defines them. Polled at the model's sample rate; a live source.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_infer.options import opt
from edge_infer.sources import SourceConfig, SourceError, register
from edge_infer.sources.readings import Reading, SensorStream


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "iio"."""

    device: str = opt(required=True, is_path=True)
    channels: Mapping[str, str] = opt({})  # model channel → sysfs name, where they differ


class IioSource(SensorStream):
    live = True

    def __init__(self, options: Options, spec: Any) -> None:
        super().__init__(options, spec)
        self.device = Path(options.device)
        mapping = options.channels
        self.raw_files: list[Path] = []
        self.scales: list[float] = []
        self.offsets: list[float] = []
        for name in spec.channels:
            prefix = mapping.get(name, name)
            raw = self.device / f"{prefix}_raw"
            if not raw.exists():
                raise SourceError(f"[source] iio channel {name!r}: {raw} not found")
            shared = prefix.rsplit("_", 1)[0]
            self.raw_files.append(raw)
            self.scales.append(self._attribute(prefix, shared, "scale", 1.0))
            self.offsets.append(self._attribute(prefix, shared, "offset", 0.0))

    def _attribute(self, prefix: str, shared: str, what: str, default: float) -> float:
        for name in (f"{prefix}_{what}", f"{shared}_{what}"):
            path = self.device / name
            if path.exists():
                try:
                    return float(path.read_text().strip())
                except (OSError, ValueError) as exc:
                    raise SourceError(f"[source] iio: cannot read {path}: {exc}") from None
        return default

    def read_once(self) -> np.ndarray:
        values = np.full(len(self.raw_files), np.nan)
        for i, path in enumerate(self.raw_files):
            # a failed read stays NaN: the gate rejects the window and names the channel
            with contextlib.suppress(OSError, ValueError):
                values[i] = (float(path.read_text().strip()) + self.offsets[i]) * self.scales[i]
        return values

    def readings(self, stop: threading.Event, once: bool) -> Iterator[Reading]:
        period = 1.0 / self.spec.sample_rate
        limit = self.spec.window if once else None
        next_at = time.monotonic()
        count = 0
        while not stop.is_set() and (limit is None or count < limit):
            t = time.time()
            yield t, self.read_once()
            count += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay < -period:  # fell behind (a slow bus): resynchronise rather than burst
                next_at = time.monotonic()
            elif delay > 0 and stop.wait(delay):
                return


@register("iio")
def make_iio_source(options: Options, spec: Any) -> IioSource:
    return IioSource(options, spec)
