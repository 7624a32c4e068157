"""`type = "serial"`: a microcontroller printing one reading per line (CSV or JSON) on a serial port.

Needs pyserial (`pip install pyserial`, or Debian's python3-serial). A live source: the port is read
continuously; when the pipeline falls behind, only the newest window is kept and the others are counted as
dropped. `port` may also be a pyserial URL (`socket://host:port`, `rfc2217://...`). A port that is missing
or unplugged is reopened for as long as the daemon runs, with back-off up to `reconnect_max` seconds
(`source_lost` / `source_restored`); name it by `/dev/serial/by-id/…` so it is found again after replugging.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edge_infer.options import between, opt
from edge_infer.sources import SourceError, register
from edge_infer.sources.health import Backoff, SourceHealth
from edge_infer.sources.readings import MAX_LINE, LineOptions, Reading, SensorStream


@dataclass(frozen=True, kw_only=True)
class Options(LineOptions):
    """The `[source]` keys of type "serial"."""

    port: str = opt(required=True)
    baudrate: int = opt(115200, check=between(50, 10**8))
    reconnect_max: float = opt(30.0, check=between(0.5, 3600), unit="s")  # the longest wait between attempts to reopen

log = logging.getLogger(__name__)


def _pyserial() -> Any:
    try:
        import serial
    except ImportError:
        raise SourceError(
            "[source] type = \"serial\" needs pyserial: pip install pyserial (or apt install python3-serial)"
        ) from None
    return serial


class SerialSource(SensorStream):
    live = True

    def __init__(self, options: Options, spec: Any) -> None:
        super().__init__(options, spec)
        self.serial = _pyserial()
        self.port = options.port
        self.baudrate = options.baudrate
        self.reconnect_max = options.reconnect_max
        self.health = SourceHealth()

    def readings(self, stop: threading.Event, once: bool) -> Iterator[Reading]:
        """Lines from the port, reopened after every failure until `stop` (with `once`: a failure ends it)."""
        backoff = Backoff(self.reconnect_max)
        errors = (self.serial.SerialException, OSError, ValueError)
        while not stop.is_set():
            try:
                port = self.serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0.2)
            except errors as exc:
                if once:
                    raise SourceError(f"[source] port {self.port!r}: cannot open: {exc}") from None
                self.health.lost(f"cannot open {self.port}: {exc}")
            else:
                log.info("event=source_open port=%s baudrate=%d", self.port, self.baudrate)  # flushed and reading
                try:
                    with port:
                        yield from self._lines(port, stop, once, backoff)
                    return  # stopped, or `once` read everything
                except errors as exc:
                    if once:
                        raise SourceError(f"[source] port {self.port!r}: read failed: {exc}") from None
                    self.health.lost(f"{self.port} read failed (unplugged?): {exc}")
            if backoff.wait(stop):
                return

    def _lines(self, port: Any, stop: threading.Event, once: bool, backoff: Backoff) -> Iterator[Reading]:
        pending = b""
        while not stop.is_set():
            chunk = port.read(max(1, port.in_waiting))
            if not chunk:
                if once:
                    return
                continue
            self.health.restored()
            backoff.reset()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE:  # a device that never ends its line: drop it, bounded (a garbled reading)
                log.warning("event=serial_line_dropped port=%s bytes=%d (no newline)", self.port, len(pending))
                pending = b""
            for raw in lines:
                reading = self.parser.parse(raw.decode("utf-8", "replace"))
                if reading is not None:
                    yield reading


@register("serial")
def make_serial_source(options: Options, spec: Any) -> SerialSource:
    return SerialSource(options, spec)
