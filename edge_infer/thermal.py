"""Thermal back-off: the board's temperature and throttling, and `ThermalGovernor`, which backs the pipeline
off when the SoC runs hot — each step halves the inference thread's duty cycle (it sleeps after each input for as
long as the input took, then three times as long, …) and recovers a step at a time once the temperature is back
under the resume level.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DUTY_STEPS = (1.0, 0.5, 0.25, 0.1)
PI_THROTTLED = "/sys/devices/platform/soc/soc:firmware/get_throttled"
THROTTLE_BITS = {0: "under_voltage", 1: "arm_freq_capped", 2: "throttled", 3: "soft_temp_limit"}


def read_temperature(zone: str | None) -> float | None:
    """°C from a thermal zone file (millidegrees), or None when there is none."""
    if not zone:
        return None
    try:
        return int(Path(zone).read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def read_throttled(path: str | None) -> dict[str, Any] | None:
    """The Raspberry Pi firmware's throttling flags (hex): what is happening now, and since boot."""
    if not path:
        return None
    try:
        value = int(Path(path).read_text().strip(), 16)
    except (OSError, ValueError):
        return None
    now = [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)]
    since_boot = [name for bit, name in THROTTLE_BITS.items() if value & (1 << (bit + 16))]
    return {"raw": hex(value), "now": now, "since_boot": since_boot}


class ThermalGovernor:
    """Steps the duty cycle down while the SoC is at or above `max_c` (or the firmware says it is throttling),
    and back up once it is at or below `resume_c`; checks at most every `check_s` seconds."""

    def __init__(self, zone: str | None, throttled_path: str | None, max_c: float, resume_c: float,
                 check_s: float = 5.0, on_change: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep) -> None:
        self.zone = zone
        self.throttled_path = throttled_path
        self.max_c = max_c
        self.resume_c = resume_c
        self.check_s = check_s
        self.level = 0
        self.temperature: float | None = None
        self.throttled: dict[str, Any] | None = None
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.slept_s = 0.0

    @property
    def duty(self) -> float:
        return DUTY_STEPS[self.level]

    def check(self) -> None:
        """Read the temperature and flags (at most every `check_s`) and step the level (any thread)."""
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return
            self._next_check = now + self.check_s
            self._check()

    def _check(self) -> None:
        self.temperature = read_temperature(self.zone)
        self.throttled = read_throttled(self.throttled_path)
        hot = (self.temperature is not None and self.temperature >= self.max_c) or bool(
            self.throttled and {"throttled", "soft_temp_limit"} & set(self.throttled["now"]))
        cool = (self.temperature is None or self.temperature <= self.resume_c) and not (
            self.throttled and self.throttled["now"])
        if hot and self.level < len(DUTY_STEPS) - 1:
            self.level += 1
            self._changed("thermal_backoff")
        elif cool and self.level > 0:
            self.level -= 1
            self._changed("thermal_recovered")

    def _changed(self, event: str) -> None:
        details = {"level": self.level, "duty": self.duty, "temperature_c": self.temperature,
                   "max_c": self.max_c, "resume_c": self.resume_c}
        if self.throttled:
            details["throttled"] = self.throttled["now"]
        log.warning("event=%s level=%d duty=%.2f temperature_c=%s", event, self.level, self.duty, self.temperature)
        if self._on_change is not None:
            self._on_change(event, details)

    def pace(self, busy_s: float) -> None:
        """After an input that kept the inference thread busy `busy_s`: rest so that it is busy `duty` of the
        time (a live source drops and counts the frames that arrive meanwhile; a folder simply waits)."""
        self.check()
        if self.level:
            rest = busy_s * (1.0 / self.duty - 1.0)
            self.slept_s += rest
            self._sleep(rest)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"level": self.level, "duty": self.duty, "temperature_c": self.temperature}
        if self.throttled is not None:
            doc["throttled"] = self.throttled
        return doc
