"""Ctrl-C that is never lost.

Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to be. Under load that
can be inside library code that swallows it: a callback from C whose exception is only printed ("Exception
ignored in ..."), or Ray's ``DeferSigint`` (it holds back SIGINT around argument deserialisation and drops it when
an exception leaves that block). Seen here: on a loaded machine, 2 of 4 Ctrl-Cs in one test session left the
driver running to the end with exit status 0.

So the entry scripts install :func:`handler` (:func:`install`, from :func:`lmft_core.cli.run_main`): it records
the interrupt, then raises ``KeyboardInterrupt`` as Python's does. The places the driver passes often call
:func:`check`, which raises it again while one is recorded and unhandled: the wait of every Ray Train fit (twice a
second), each workflow stage's start, and the end of each Ray Data job. :func:`clear` marks it handled.
"""

from __future__ import annotations

import signal
import threading

_pending = False


def handler(signum=signal.SIGINT, frame=None) -> None:
    """The SIGINT handler: record the interrupt, then raise ``KeyboardInterrupt``."""
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> bool:
    """Make :func:`handler` this process's SIGINT handler (only the main thread can; returns whether it did). A
    handler someone else set on purpose (not Python's default) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, handler):
        return False
    signal.signal(signal.SIGINT, handler)
    return True


def check() -> None:
    """Raise ``KeyboardInterrupt`` when a Ctrl-C was recorded and not yet handled (:func:`clear`)."""
    if _pending:
        raise KeyboardInterrupt


def pending() -> bool:
    return _pending


def clear() -> None:
    """The recorded Ctrl-C was handled (the script stops, or a test goes on)."""
    global _pending
    _pending = False
