"""Ctrl-C that is never lost.

Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to be. That can be inside
library code that swallows it, e.g. a callback from C whose exception is only printed ("Exception ignored in ...").
And a library may put its own handler in place: Ray Tune's ``fit`` in the main thread installs one that ends the
sweep quietly and stays installed after it (:func:`keep_handler` prevents that).

So the entry scripts install :func:`handler` (:func:`install`, from :func:`lmft_core.cli.run_main`): it records
the interrupt, then raises ``KeyboardInterrupt`` as Python's does. The places the driver passes often call
:func:`check`, which raises it again while one is recorded and unhandled: the wait of every Ray Train fit (twice a
second), each workflow stage's start, and the end of each Ray Data job. :func:`clear` marks it handled.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

_pending = False


def handler(signum=signal.SIGINT, frame=None) -> None:
    """The SIGINT handler: record the interrupt, then raise ``KeyboardInterrupt``."""
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> bool:
    """Make :func:`handler` this process's SIGINT handler (only the main thread can; returns whether it did). A
    handler someone else set on purpose (not Python's default) is left alone, and so is an ignored SIGINT: a
    script started with ``nohup`` or as a background job of a non-interactive shell is meant not to stop on it."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, handler):
        return False
    signal.signal(signal.SIGINT, handler)
    return True


def restore(previous) -> None:
    """Put ``previous`` (a handler :func:`signal.getsignal` returned) back as the SIGINT handler (main thread only)."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, previous)


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


@contextmanager
def keep_handler():
    """Within it, Ray Tune leaves the SIGINT handler alone (``TUNE_DISABLE_SIGINT_HANDLER``: its own would end a
    sweep as if it had finished and stay installed after it); after it, the handler in place before is put back."""
    before_handler = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    before_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before_env
        restore(before_handler)
