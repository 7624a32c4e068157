"""Where a stage's time went on a shared machine: the CPU time this process used, and steal — CPU time a
virtual machine's cores wanted but the hypervisor gave to other guests (the `steal` column of Linux's
/proc/stat). On a shared cloud machine steal comes and goes by the minute and slows whatever runs then; a
benchmark that records it can say how much of a slow figure was the host's. Steal is always 0 on a Raspberry
Pi, and None where the kernel does not report it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

STAT = "/proc/stat"


def cpu_times(path: str = STAT) -> dict[str, tuple[int, int, int]] | None:
    """Per CPU since boot, in clock ticks: (busy, idle, steal); None when this system does not count steal."""
    out: dict[str, tuple[int, int, int]] = {}
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                name, *ticks = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit()):
                    continue
                user, nice, system, idle, iowait, irq, softirq, steal = (int(t) for t in ticks[:8])
                out[name] = (user + nice + system + irq + softirq, idle + iowait, steal)
    except (OSError, ValueError):
        return None
    return out or None


def busy_steal(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> float:
    """Ticks of steal between two `cpu_times` readings that hit work: each CPU's steal in proportion to how busy
    it was (an idle core also reports steal — the host was slow to wake it — which delayed nothing here)."""
    total = 0.0
    for name, (busy, idle, steal) in after.items():
        b0, i0, s0 = before.get(name, (busy, idle, steal))
        ran, rested = busy - b0, idle - i0
        if ran + rested > 0:
            total += (steal - s0) * ran / (ran + rested)
    return total


@dataclass(frozen=True)
class Span:
    """One timed stage: wall seconds, this process's CPU seconds, and the steal that hit work meanwhile in seconds
    (None: not counted)."""

    wall: float
    cpu: float
    steal: float | None

    def given(self, busy: int) -> float:
        """The wall time with the steal taken out, for a stage that kept `busy` cores busy (each lost an equal
        share of it)."""
        if not self.steal:
            return self.wall
        left = self.wall - self.steal / max(1, busy)
        return left if left > 0 else self.wall

    def steal_share(self, busy: int) -> float | None:
        """Steal as a share of the time the stage's `busy` cores were there for."""
        return None if self.steal is None or self.wall <= 0 else self.steal / (self.wall * max(1, busy))


class Stopwatch:
    """`with Stopwatch() as sw: work()` then `sw.span`: wall time, CPU time and steal over the block."""

    span: Span

    def __enter__(self) -> Stopwatch:
        self._times = cpu_times()
        self._cpu = time.process_time()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.perf_counter() - self._started
        cpu = time.process_time() - self._cpu
        end = cpu_times()
        stolen = None if self._times is None or end is None else busy_steal(self._times, end)
        self.span = Span(wall, cpu, None if stolen is None else stolen / os.sysconf("SC_CLK_TCK"))
