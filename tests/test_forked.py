from __future__ import annotations

import os

import pytest

from quicktune import forked
from quicktune.forked import Forked

pytestmark = pytest.mark.skipif(not forked.can_fork(), reason="forking needs Linux and two usable CPUs")


def _pid_and(value):
    return os.getpid(), value


def test_the_function_runs_in_a_child_and_its_result_comes_back():
    job = Forked(_pid_and, {"rows": list(range(1000))})
    assert job.in_child
    pid, value = job.result()
    assert pid != os.getpid() and value == {"rows": list(range(1000))}


def test_without_start_it_runs_in_this_process():
    job = Forked(_pid_and, 3, start=False)
    assert not job.in_child and job.result() == (os.getpid(), 3)


def _fails_in_a_child(parent: int):
    if os.getpid() != parent:
        raise ValueError("only in the child")
    return "computed in the parent"


def test_a_failure_in_the_child_is_computed_again_here():
    # The child's exception is not carried over: the parent runs the function itself (and would raise there).
    assert Forked(_fails_in_a_child, os.getpid()).result() == "computed in the parent"


def _dies_in_a_child(parent: int):
    if os.getpid() != parent:
        os._exit(9)  # killed, say, by the out-of-memory killer: no answer at all
    return "computed in the parent"


def test_a_child_that_dies_without_an_answer_is_replaced_by_this_process():
    assert Forked(_dies_in_a_child, os.getpid()).result() == "computed in the parent"


def test_a_real_exception_reaches_the_caller():
    with pytest.raises(ZeroDivisionError):
        Forked(divmod, 1, 0).result()


def test_close_stops_a_child_that_is_still_working():
    import time

    job = Forked(time.sleep, 60)
    process = job._process
    job.close()
    assert not process.is_alive() and not job.in_child
