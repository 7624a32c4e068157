"""Several lanes on consecutive inputs at once: the reading thread hands each input to a pool of threads, each of
which decodes and measures it (`Pipeline.measure`, stateless) and runs it on its own interpreter of the running
model; the committing thread takes them back in input order and judges each (`Pipeline.judge`: the stuck-camera
check, the limits, the camera baseline — the gate's state) before deciding and committing — so the verdicts, the
results, their order, the debounce state and every counter are exactly what one thread would give, while the
machine's cores all work. TFLite's `invoke()` and most of decoding release the GIL, so lanes really run in
parallel. A frame the ordered verdict rejects was run for nothing: rejections are the rare case.

The first pool thread uses the pipeline's own interpreter; each other one builds a twin (`Engine.twin`) the first
time it meets a model, and again only when the model changes (a reload or an update; new rules on the same
model reuse it). `size` is `[pipeline] interpreters` (see `interpreter_count`)."""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from edge_infer.model import Model, Ran
from edge_infer.pipeline import Measured, Pipeline
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


class InterpreterPool:
    """`size` threads, each measuring inputs and running them on its own interpreter (use as a context
    manager)."""

    def __init__(self, size: int, timed: Callable[[str, Callable[[Sample], Measured], Sample], Measured]) -> None:
        self.size = size
        self._timed = timed  # the daemon's stage timer: the watchdog sees a hung decode, the metrics its latency
        self._numbers = itertools.count()
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="interpreter",
                                            initializer=self._start)

    def __enter__(self) -> InterpreterPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish what is running, drop what has not started."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _start(self) -> None:
        self._local.number = next(self._numbers)
        self._local.engines = (None, None)  # (the model's engine, this thread's twin of it)

    def _model(self, model: Model) -> Model:
        if self._local.number == 0:
            return model
        source, twin = self._local.engines
        if source is not model.engine:
            twin = model.engine.twin()
            self._local.engines = (model.engine, twin)
        return model.on_engine(twin)

    def submit(self, pipeline: Pipeline, sample: Sample) -> Future[tuple[Measured, Ran | None]]:
        """A lane: `pipeline.measure(sample)` and, when it decoded to a tensor, the model's result on this thread's
        interpreter — before the gate's ordered verdict (`Pipeline.judge`), which may still reject it."""
        return self._executor.submit(self._lane, pipeline, sample)

    def _lane(self, pipeline: Pipeline, sample: Sample) -> tuple[Measured, Ran | None]:
        measured = self._timed("decode", pipeline.measure, sample)
        if measured.tensor is None:
            return measured, None
        return measured, self._model(pipeline.model).ran(measured.tensor, measured.geometry)
