"""A Ctrl-C is never lost: swallowed on its way, it still stops the script at the next check (lmft_core.interrupt)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from lmft_core import interrupt
from lmft_core.cli import run_main
from lmft_core.config import INTERRUPTED, INTERRUPTED_EXIT
from lmft_core.console import StageClock
from lmft_core.train.run import fit_interruptible


@pytest.fixture
def sigint_handler():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (not a background job's SIG_IGN)
    interrupt.clear()
    yield
    signal.signal(signal.SIGINT, before)
    interrupt.clear()


def swallowing(fn):
    """Run ``fn`` as a library callback does whose exceptions are only printed: a KeyboardInterrupt is lost."""
    try:
        fn()
    except BaseException:  # noqa: BLE001 - what the library does, on purpose here
        pass


def test_a_real_sigint_is_recorded_even_when_the_code_it_lands_in_swallows_it(sigint_handler):
    assert interrupt.install() and signal.getsignal(signal.SIGINT) is interrupt.handler
    swallowing(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(1)))  # the handler runs inside the callback
    assert interrupt.pending()
    with pytest.raises(KeyboardInterrupt):
        interrupt.check()
    interrupt.clear()
    interrupt.check()  # handled: no second stop


def test_run_main_stops_with_the_interrupted_exit_after_a_swallowed_ctrl_c(sigint_handler, capsys):
    def work() -> str:
        swallowing(lambda: os.kill(os.getpid(), signal.SIGINT) or time.sleep(1))
        return "finished"  # the work went on to its end, as it did in the faults test under load

    assert run_main(work) == INTERRUPTED_EXIT
    captured = capsys.readouterr()
    assert INTERRUPTED in captured.err and "finished" not in captured.out and not interrupt.pending()
    assert run_main(lambda: "again") == 0  # the next run in this process is not stopped by the old one


def test_the_next_stage_and_a_running_fit_stop_on_a_recorded_ctrl_c(sigint_handler):
    swallowing(interrupt.handler)
    clock = StageClock(2)
    with pytest.raises(KeyboardInterrupt):
        with clock.stage("adapt"):
            pass
    assert clock.index == 0  # no banner for a stage that does not run

    class SlowFit:
        done = threading.Event()

        def fit(self):
            self.done.wait(5)
            return "result"

    trainer = SlowFit()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fit_interruptible(trainer)
    assert time.monotonic() - t0 < 1.5  # at the wait's next half second, not the fit's end
    trainer.done.set()
    interrupt.clear()
    assert fit_interruptible(SlowFit()) == "result"


def test_a_handler_someone_set_on_purpose_is_left_alone(sigint_handler):
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGINT, mine)
    assert not interrupt.install() and signal.getsignal(signal.SIGINT) is mine
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, or a non-interactive shell's background job
    assert not interrupt.install() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    result = []
    worker = threading.Thread(target=lambda: result.append(interrupt.install()))
    worker.start()
    worker.join()
    assert result == [False]


def test_ray_tune_leaves_the_handler_alone_within_keep_handler_and_it_is_put_back_after(sigint_handler):
    from ray.tune.tune import _setup_signal_catching

    interrupt.install()
    with interrupt.keep_handler():
        _setup_signal_catching()  # what Tuner.fit does first in the main thread
        assert signal.getsignal(signal.SIGINT) is interrupt.handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # whatever a library leaves behind
    assert signal.getsignal(signal.SIGINT) is interrupt.handler and "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    _setup_signal_catching()  # outside it, Tune takes SIGINT over (and keeps it until one arrives)
    assert signal.getsignal(signal.SIGINT) is not interrupt.handler


def test_run_main_puts_the_callers_handler_back_and_an_error_after_a_ctrl_c_counts_as_the_stop(sigint_handler, capsys):
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGINT, mine)
    assert run_main(lambda: "done") == 0 and signal.getsignal(signal.SIGINT) is mine

    def torn_down() -> str:
        swallowing(interrupt.handler)
        raise RuntimeError("the fit's workers went away")  # what stopping caused, not a failure to report

    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert run_main(torn_down) == INTERRUPTED_EXIT and not interrupt.pending()
    assert INTERRUPTED in capsys.readouterr().err
