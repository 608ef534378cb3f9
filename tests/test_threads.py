"""imagetool.threads: blocks that a real SIGINT (os.kill of this process)
never cuts in two, and the end of a command's interruptible part."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from imagetool.threads import interrupts_held, interrupts_ignored, shielded


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def sigint_handler():
    """Python's own SIGINT handler for the test, put back after it."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_held_ctrl_c_comes_once_the_block_is_over():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            ctrl_c()
            done.append("after the signal")
    assert done == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_ctrl_c_wins_over_the_block_s_error():
    with pytest.raises(KeyboardInterrupt) as info:
        with interrupts_held():
            ctrl_c()
            raise ValueError("the block failed")
    assert isinstance(info.value.__context__, ValueError)


def test_an_inner_block_hands_its_ctrl_c_to_the_outer_one():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            with interrupts_held():
                ctrl_c()
            done.append("between the blocks")
    assert done == ["between the blocks"]


def test_shielded_runs_to_its_end_then_raises():
    with pytest.raises(KeyboardInterrupt):
        shielded(lambda: (ctrl_c(), "made")[1])
    assert shielded(lambda: "made") == "made"


def test_ignored_from_inside_a_block_drops_the_held_ctrl_c_and_later_ones():
    with interrupts_held():
        with interrupts_held():
            ctrl_c()
            interrupts_ignored()
        ctrl_c()
    ctrl_c()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_outside_the_main_thread_nothing_changes():
    seen = []

    def body():
        with interrupts_held():
            seen.append(signal.getsignal(signal.SIGINT))
        interrupts_ignored()
    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert seen == [signal.default_int_handler]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
