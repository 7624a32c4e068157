"""`edge_infer.steal` and the bench figures built on it: /proc/stat read per CPU, steal counted only where it hit
work, a stage's wall time with its steal taken out, and a stage's CPU per frame and cores busy."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from edge_infer.bench import _rate
from edge_infer.steal import Span, Stopwatch, busy_steal, cpu_times

# /proc/stat as Linux 6.x writes it: user nice system idle iowait irq softirq steal guest guest_nice
STAT = """cpu  1000 10 500 9000 40 0 20 300 0 0
cpu0 600 5 300 4000 20 0 10 200 0 0
cpu1 400 5 200 5000 20 0 10 100 0 0
intr 123 0 0
ctxt 456
"""


def test_cpu_times_reads_each_cpu_and_none_where_steal_is_not_counted(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    # busy = user + nice + system + irq + softirq; idle = idle + iowait; the aggregate line is left out
    assert cpu_times(str(stat)) == {"cpu0": (915, 4020, 200), "cpu1": (615, 5020, 100)}
    stat.write_text("cpu  1 2 3 4\ncpu0 1 2 3 4\n")  # a kernel from before steal was counted
    assert cpu_times(str(stat)) is None
    assert cpu_times(str(tmp_path / "absent")) is None


def test_steal_counts_where_it_hit_work_not_on_an_idle_core() -> None:
    before = {"cpu0": (0, 0, 0), "cpu1": (0, 0, 0), "cpu2": (0, 0, 0)}
    after = {"cpu0": (100, 0, 30),  # busy throughout: all of its steal delayed work
             "cpu1": (0, 100, 50),  # idle throughout: its steal (a slow wake-up) delayed nothing
             "cpu2": (50, 50, 20)}  # busy half the time: half of it
    assert busy_steal(before, after) == pytest.approx(30 + 0 + 10)
    assert busy_steal(after, after) == 0


def test_a_stages_wall_time_with_its_steal_taken_out() -> None:
    assert Span(wall=2.0, cpu=3.6, steal=0.4).given(busy=2) == pytest.approx(1.8)  # each of 2 cores lost 0.2 s
    assert Span(wall=2.0, cpu=1.6, steal=0.4).given(busy=1) == pytest.approx(1.6)
    assert Span(wall=2.0, cpu=2.0, steal=None).given(busy=1) == 2.0  # not counted here: the wall time as it was
    assert Span(wall=2.0, cpu=0.0, steal=5.0).given(busy=1) == 2.0  # more than the stage lasted: no correction
    assert Span(wall=2.0, cpu=3.6, steal=0.4).steal_share(busy=2) == pytest.approx(0.1)


def test_rate_reports_cpu_per_frame_cores_busy_steal_and_the_rate_given_the_cpu() -> None:
    # 100 frames in 2 s on 2 cores that used 3 s of CPU and lost 1 s to steal (0.5 s each)
    rate = _rate(100, 2.0, Span(wall=2.0, cpu=3.0, steal=1.0), busy=2)
    assert rate == {"per_s": 50.0, "ms": 20.0, "cpu_ms": 30.0, "cores_busy": 1.5, "steal_pct": 25.0,
                    "given_per_s": pytest.approx(66.7)}
    # the rate of a part of the span (the daemon's run until its last result) is corrected by the same share
    assert _rate(100, 1.0, Span(wall=2.0, cpu=3.0, steal=1.0), busy=2)["given_per_s"] == pytest.approx(133.3)
    assert _rate(100, 2.0) == {"per_s": 50.0, "ms": 20.0}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_stopwatch_on_this_machine_one_busy_thread_uses_at_most_one_core() -> None:
    done = threading.Event()
    with Stopwatch() as watch:
        threading.Thread(target=lambda: (sum(i * i for i in range(300_000)), done.set())).start()
        assert done.wait(60)
    span = watch.span
    assert span.steal is not None and span.steal >= 0  # this kernel counts steal
    assert 0 < span.cpu <= span.wall * 1.05 + 0.02  # one thread's CPU time: never more than the wall time
