"""Several lanes on consecutive inputs at once. Each lane thread takes the next input from the source (one lane at a
time), decodes and measures it (`Pipeline.measure`, stateless) and runs it on its own interpreter of the running
model; then the lane that completes the oldest unfinished input commits it — judges it (`Pipeline.judge`: the
stuck-camera check, the limits, the camera baseline, i.e. the gate's state), decides and hands it to the writer —
and every consecutive finished input after it, one committer at a time. So the verdicts, the results, their
order, the debounce state and every counter are exactly what one thread would give, no lane waits for another's
input, and no thread sits between the source, the lanes and the writer (each hand-off costs a wake-up and a GIL
transfer per frame). TFLite's `invoke()` and most of decoding release the GIL, so lanes really run in parallel.
A frame the ordered verdict rejects was run for nothing: rejections are the rare case.

The first lane uses the pipeline's own interpreter; each other one builds a twin (`Engine.twin`) the first time
it meets a model, and again only when the model changes (a reload or an update; new rules on the same model reuse
it). The number of lanes is `[pipeline] interpreters` (see `interpreter_count`). One interpreter runs as two
threads instead (`run_in_order`): the decode thread prepares while the caller infers."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from edge_infer.model import Model, Ran
from edge_infer.pipeline import Measured, Pipeline
from edge_infer.runtime import Engine
from edge_infer.sources import Sample

T = TypeVar("T")


def run_in_order(produced: Iterator[T], handoff: queue.Queue[T | None], stop: threading.Event,
                 consume: Callable[[T], object]) -> None:
    """Iterate `produced` in a thread of its own and `consume` each item here, in order, through the bounded
    `handoff` queue (the producer waits while it is full, and gives up when `stop` is set). An exception in the
    producer is raised here once the items before it are consumed."""
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for item in produced:
                while not stop.is_set():
                    try:
                        handoff.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surfaced in the consuming thread below
            failure.append(exc)
        finally:
            handoff.put(None)

    thread = threading.Thread(target=produce, name="decode", daemon=True)
    thread.start()
    while (item := handoff.get()) is not None:
        consume(item)
    thread.join()
    if failure:
        raise failure[0]


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. systemd's CPUAffinity=), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def interpreter_count(setting: int | str, threads: int = 1, cores: int | None = None) -> int:
    """`"auto"`: as many interpreters as the usable cores hold at `threads` each ([model] threads), at most 4
    (beyond that decoding sets the pace, and each interpreter costs its tensor arena in memory); a number is
    taken as it is."""
    if setting == "auto":
        return max(1, min((cores or usable_cores()) // max(threads, 1), 4))
    return int(setting)


Lane = Callable[[], tuple[Measured, "Ran | None"]]  # an input's measurement and result (raises what its lane met)
Commit = Callable[[Pipeline, Sample, Lane], object]


class Lanes:
    """`size` lane threads over one stream of inputs (see the module docstring). At most `depth` inputs are taken
    and not yet committed (a stalled commit — a full disk — stops the lanes rather than piling frames up). `run`
    returns once the inputs are exhausted (or `stop` is set) and every input taken is committed; the first
    failure — of the source, of a commit — stops the lanes taking inputs and is raised there once the inputs
    taken before it are committed."""

    def __init__(self, size: int, depth: int, timed: Callable[[str, Callable[[Any], Any], Any], Any],
                 commit: Commit) -> None:
        self.size = size
        self.depth = max(depth, size)
        self._timed = timed  # the daemon's stage timer: the watchdog sees a hung decode or invoke, metrics latency
        self._commit = commit
        self._take = threading.Lock()  # one lane reads the source at a time: input numbers follow source order
        self._lock = threading.Condition()  # guards what follows; notified when an input is committed
        self._taken = 0
        self._next = 0  # the oldest input not yet committed
        self._ready: dict[int, tuple[Pipeline, Sample, Lane]] = {}
        self._committing = False
        self._failure: BaseException | None = None  # raised by `run`
        self._broken = False  # a commit failed: nothing after it is committed
        self._halt = threading.Event()  # no lane takes another input

    @property
    def waiting(self) -> int:
        """Inputs taken from the source and not yet committed (at most `depth`)."""
        return self._taken - self._next

    def run(self, inputs: Iterator[tuple[Pipeline, Sample]], stop: threading.Event) -> None:
        threads = [threading.Thread(target=self._lane, args=(number, inputs, stop), name=f"lane-{number}",
                                    daemon=True) for number in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._failure is not None:
            raise self._failure

    def _lane(self, number: int, inputs: Iterator[tuple[Pipeline, Sample]], stop: threading.Event) -> None:
        twins = _Twins(number)
        while True:
            with self._take:  # the room is checked by the lane about to take: the bound holds exactly
                if not self._room(stop):
                    return
                try:
                    pipeline, sample = next(inputs)
                except StopIteration:
                    return
                except BaseException as exc:  # the source failed: what was taken before it is still committed
                    self._fail(exc)
                    return
                position = self._taken
                self._taken += 1
            self._finished(position, (pipeline, sample, self._work(pipeline, sample, twins)))

    def _room(self, stop: threading.Event) -> bool:
        """Wait until fewer than `depth` inputs are taken and not committed; False once the lanes must stop."""
        with self._lock:
            while not (self._halt.is_set() or stop.is_set()):
                if self._taken - self._next < self.depth:
                    return True
                self._lock.wait(0.2)
        return False

    def _work(self, pipeline: Pipeline, sample: Sample, twins: _Twins) -> Lane:
        """Measure `sample` and run it on this lane's interpreter: the outcome as a `Lane` (which raises what
        this met where the input is committed: a just-promoted model's failure is rolled back there)."""
        try:
            measured = self._timed("decode", pipeline.measure, sample)
            ran = None
            if measured.tensor is not None:
                model = twins.model(pipeline.model)
                ran = self._timed("inference", lambda m: model.ran(m.tensor, m.geometry), measured)
        except BaseException as exc:
            return _raising(exc)
        return _done(measured, ran)

    def _finished(self, position: int, item: tuple[Pipeline, Sample, Lane]) -> None:
        """Hand in a finished input; commit it and the consecutive ones after it unless another lane is
        committing (that lane then takes them)."""
        with self._lock:
            self._ready[position] = item
            if self._committing or self._broken:
                return
            self._committing = True
        while True:
            with self._lock:
                ready = self._ready.pop(self._next, None)
                if ready is None:
                    self._committing = False
                    return
            try:
                self._commit(*ready)
            except BaseException as exc:
                with self._lock:
                    self._broken = True
                    self._committing = False
                self._fail(exc)
                return
            with self._lock:
                self._next += 1
                self._lock.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
        self._halt.set()


class _Twins:
    """A lane's interpreter: the model's own for lane 0, else a twin built the first time the lane meets a model
    (and again only when the model changes)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self._engines: tuple[Engine | None, Engine | None] = (None, None)  # (the model's engine, its twin)

    def model(self, model: Model) -> Model:
        if self.number == 0:
            return model
        source, twin = self._engines
        if source is not model.engine or twin is None:
            twin = model.engine.twin()
            self._engines = (model.engine, twin)
        return model.on_engine(twin)


def _done(measured: Measured, ran: Ran | None) -> Lane:
    return lambda: (measured, ran)


def _raising(exc: BaseException) -> Lane:
    def lane() -> tuple[Measured, Ran | None]:
        raise exc
    return lane
