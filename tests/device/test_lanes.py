"""The lanes (`edge_infer.app.interpreters.Lanes`): inputs finished out of order are committed in input order, one
committer at a time; at most `depth` inputs are in flight behind a stalled commit; a source or commit failure
stops the lanes and is raised after what came before it is committed."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edge_infer.app.interpreters import Lane, Lanes
from edge_infer.pipeline import Measured
from edge_infer.sources import Sample
from tests.device.faults import wait_until


class Jittery:
    """A pipeline stand-in whose `measure` takes a different while per input (no tensor: no interpreter)."""

    model = None

    def __init__(self, seed: int = 1) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def measure(self, sample: Sample) -> Measured:
        with self._lock:
            spin = self._rng.randrange(0, 20_000)
        sum(range(spin))  # work of varying length, so lanes finish out of order
        return Measured(sample, 0.0)


def samples(n: int, taken: list[int] | None = None, fail_at: int | None = None) -> Iterator[Sample]:
    for i in range(n):
        if i == fail_at:
            raise OSError("camera unplugged")
        if taken is not None:
            taken.append(i)
        yield Sample("test", str(i), "f", 0.0, None)


def timed(_stage: str, work: Callable[[Any], Any], arg: Any) -> Any:
    return work(arg)


class Recorder:
    """The commit step: records input ids in commit order and how many commits ever ran at once."""

    def __init__(self, fail_at: str | None = None, hold: threading.Event | None = None) -> None:
        self.ids: list[str] = []
        self.busy = 0
        self.most_at_once = 0
        self._lock = threading.Lock()
        self.fail_at, self.hold = fail_at, hold

    def __call__(self, _pipeline: Any, sample: Sample, lane: Lane) -> None:
        with self._lock:
            self.busy += 1
            self.most_at_once = max(self.most_at_once, self.busy)
        try:
            measured, ran = lane()
            assert measured.sample is sample and ran is None
            if self.hold is not None and not self.ids:
                self.hold.wait(30)
            if sample.input_id == self.fail_at:
                raise RuntimeError("disk on fire")
            self.ids.append(sample.input_id)
        finally:
            with self._lock:
                self.busy -= 1


@pytest.mark.parametrize("size", [2, 3, 4])
def test_commits_follow_input_order_one_at_a_time(size: int) -> None:
    pipeline, commit = Jittery(size), Recorder()
    Lanes(size, 4, timed, commit).run(((pipeline, s) for s in samples(300)), threading.Event())  # type: ignore[misc]
    assert commit.ids == [str(i) for i in range(300)]
    assert commit.most_at_once == 1


def test_a_stalled_commit_stops_the_lanes_taking_inputs() -> None:
    hold, taken = threading.Event(), []
    pipeline, commit = Jittery(), Recorder(hold=hold)
    lanes = Lanes(2, 5, timed, commit)
    runner = threading.Thread(target=lanes.run, args=(((pipeline, s) for s in samples(100, taken)),
                                                      threading.Event()))
    runner.start()
    try:
        assert wait_until(lambda: lanes.waiting == 5, 30)
        assert len(taken) == 5  # the bound holds while the first commit is stuck
    finally:
        hold.set()
    runner.join(60)
    assert commit.ids == [str(i) for i in range(100)]


def test_a_source_failure_is_raised_after_what_came_before_it_is_committed() -> None:
    pipeline, commit = Jittery(), Recorder()
    with pytest.raises(OSError, match="camera unplugged"):
        Lanes(2, 4, timed, commit).run(((pipeline, s) for s in samples(50, fail_at=37)), threading.Event())
    assert commit.ids == [str(i) for i in range(37)]


def test_a_failed_commit_stops_everything_after_it() -> None:
    pipeline, commit = Jittery(), Recorder(fail_at="12")
    with pytest.raises(RuntimeError, match="disk on fire"):
        Lanes(3, 6, timed, commit).run(((pipeline, s) for s in samples(200)), threading.Event())
    assert commit.ids == [str(i) for i in range(12)]


def test_a_stop_commits_what_was_taken_and_takes_nothing_more() -> None:
    stop, taken = threading.Event(), []
    pipeline, commit = Jittery(), Recorder()

    def inputs() -> Iterator[tuple[Jittery, Sample]]:
        for s in samples(1000, taken):
            if s.input_id == "20":
                stop.set()
            yield pipeline, s

    Lanes(2, 4, timed, commit).run(inputs(), stop)  # type: ignore[arg-type]
    assert len(taken) == 21 and commit.ids == [str(i) for i in range(21)]
