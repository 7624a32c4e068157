"""`type = "serial"`: a microcontroller printing one reading per line (CSV or JSON) on a serial port.

Needs pyserial (`pip install pyserial`, or Debian's python3-serial). A live source: the port is read
continuously; when the pipeline falls behind, only the newest window is kept and the others are counted as
dropped. `port` may also be a pyserial URL (`socket://host:port`, `rfc2217://...`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edge_infer.options import between, opt
from edge_infer.sources import SourceError, register
from edge_infer.sources.readings import LineOptions, Reading, SensorStream


@dataclass(frozen=True, kw_only=True)
class Options(LineOptions):
    """The `[source]` keys of type "serial"."""

    port: str = opt(required=True)
    baudrate: int = opt(115200, check=between(50, 10**8))

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

    def readings(self, stop: threading.Event, once: bool) -> Iterator[Reading]:
        try:
            port = self.serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0.2)
        except (self.serial.SerialException, OSError, ValueError) as exc:
            raise SourceError(f"[source] port {self.port!r}: cannot open: {exc}") from None
        log.info("event=source_open port=%s baudrate=%d", self.port, self.baudrate)  # flushed and reading
        pending = b""
        with port:
            while not stop.is_set():
                try:
                    chunk = port.read(max(1, port.in_waiting))
                except (self.serial.SerialException, OSError) as exc:
                    raise SourceError(f"[source] port {self.port!r}: read failed: {exc}") from None
                if not chunk:
                    if once:
                        return
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    reading = self.parser.parse(raw.decode("utf-8", "replace"))
                    if reading is not None:
                        yield reading


@register("serial")
def make_serial_source(options: Options, spec: Any) -> SerialSource:
    return SerialSource(options, spec)
