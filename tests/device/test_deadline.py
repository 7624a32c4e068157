"""`deadline.Caller`: a call answered in time gives its value or its exception; one that is not raises `Hung`,
leaves its thread blocked, spends the caller, and `busy` follows the late call until it returns."""

from __future__ import annotations

import threading

import pytest

from edge_infer.deadline import Caller, Hung
from tests.device.faults import wait_until


def test_a_call_in_time_gives_its_value_or_its_exception_on_the_callers_thread() -> None:
    caller = Caller(30.0, "probe")
    where: list[str] = []
    assert caller.call(lambda: where.append(threading.current_thread().name) or 42) == 42
    assert where == ["probe"]  # not the calling thread
    with pytest.raises(ZeroDivisionError):
        caller.call(lambda: 1 / 0)
    assert caller.call(lambda: "again") == "again" and not caller.spent
    caller.close()
    assert wait_until(lambda: not any(t.name == "probe" for t in threading.enumerate()), 10)


def test_a_call_past_its_deadline_raises_hung_and_spends_the_caller() -> None:
    release, entered = threading.Event(), threading.Event()

    def blocked() -> str:
        entered.set()
        release.wait()
        return "late"

    caller = Caller(0.2, "locked")
    with pytest.raises(Hung, match=r"no answer within 0\.2 s"):
        caller.call(blocked)
    assert entered.is_set() and caller.spent and caller.busy
    with pytest.raises(Hung, match="an earlier call has not returned"):
        caller.call(lambda: "never runs")
    release.set()  # the accelerator answers at last: its thread ends, nothing else runs on it
    assert wait_until(lambda: not caller.busy, 10)
    assert not any(t.name == "locked" for t in threading.enumerate())


def test_no_deadline_runs_in_the_calling_thread() -> None:
    caller = Caller(0.0)
    assert caller.call(lambda: threading.current_thread()) is threading.current_thread()
    assert not caller.busy
