"""What a person sees in the terminal: stage banners, one line per training epoch, the final table; Ray and
MLflow kept quiet unless ``--verbose``.

Only the driver prints (the entry script's process): Ray workers' and actors' output (Ray Train's
``Reporting training result ... TrainingReport(...)`` per rank, Ray Data's progress bars inside the split
coordinators, CLIP's warnings) stays in the Ray session's log files (``ray.init(log_to_driver=False)``), and
the driver's own Ray Data status blocks and progress bars are off (:func:`quiet_ray_data`). ``--verbose``
(:data:`VERBOSE_ENV` set to ``1``) shows all of it; a run without a terminal prints the same lines as one with
(a terminal only redraws the epoch line in place as a bar).

The epoch lines come from the controller side: a Ray Train callback in the controller appends rank 0's
metrics of each report to a file (:class:`lmft_core.train.ray_train.EpochLog`), which the driver reads while
it waits for the fit (:class:`EpochPrinter`). This module imports no torch, Ray or MLflow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import TextIO

VERBOSE_ENV = "LMFT_VERBOSE"
PREFIX = "[lmft]"
# the epoch report's keys an epoch line reads (lmft_core.train.loop); absent ones print as "-"
EPOCH_KEYS = {"loss": "epoch/loss", "tau": "policy/tau_hat", "discard": "epoch/discard_rate",
              "clips_per_s": "epoch/clips_per_s", "data_wait": "epoch/data_wait_fraction"}


def verbose() -> bool:
    """Whether Ray's and MLflow's own output is shown (``--verbose``, or ``LMFT_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "") == "1"


def set_verbose(on: bool) -> None:
    """Show (``on``) or keep in log files Ray's and MLflow's own output; child processes inherit it."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    setup_logging()


class _LmftFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{PREFIX} {level}{record.getMessage()}"


def setup_logging() -> None:
    """lmft's own log records on stderr as ``[lmft] warning: ...`` (INFO ones only with ``--verbose``); MLflow's INFO and WARNING records (``Creating
    initial MLflow database tables``, the pickle-format caution for a format lmft chooses on purpose) and its
    artifact download bars only with ``--verbose``."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # in a pipe too, lines keep their order with stderr's
    lmft = logging.getLogger("lmft_core")
    handler = next((h for h in lmft.handlers if isinstance(h.formatter, _LmftFormatter)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LmftFormatter())
        lmft.addHandler(handler)
        lmft.propagate = False
    lmft.setLevel(logging.INFO)
    handler.setLevel(logging.INFO if verbose() else logging.WARNING)
    level = "INFO" if verbose() else "ERROR"
    os.environ["MLFLOW_LOGGING_LEVEL"] = level  # read when mlflow is imported (here and in Ray workers)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = str(verbose()).lower()  # read at each download
    logging.getLogger("mlflow").setLevel(level)  # in case it is already


def ray_init_options() -> dict:
    """``ray.init`` options: worker and actor output forwarded to the driver, and Ray's INFO lines
    (``Started a local Ray instance``), only with ``--verbose``."""
    return {"log_to_driver": verbose(), "logging_level": logging.INFO if verbose() else logging.WARNING}


TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"  # Ray's notice on every local start


def quiet_ray_notices() -> None:
    """Before ``ray.init``: Ray's notice that a new local cluster uses token authentication (its secure default,
    printed on every start) goes unsaid unless ``--verbose``; its warning that authentication is *disabled* stays."""
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    for old in [f for f in auth.filters if getattr(f, "lmft", False)]:
        auth.removeFilter(old)
    if not verbose():
        drop = logging.Filter()
        drop.filter = lambda record: not record.getMessage().startswith(TOKEN_AUTH_NOTICE)
        drop.lmft = True
        auth.addFilter(drop)


@contextmanager
def quiet_tune():
    """Within it, Ray Tune prints nothing of its own unless ``--verbose``: its new output engine prints the experiment's
    header box and result paths at every verbosity (``ray/tune/experimental/output.py``), so the legacy reporter,
    which honours ``verbose=0``, is chosen (``RAY_AIR_NEW_OUTPUT=0``, read as a Tuner starts)."""
    if verbose():
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def quiet_ray_data() -> None:
    """The driver's Ray Data output: progress bars (on a terminal) or 10-second status blocks (without one) and
    the ``Starting execution`` lines go to Ray Data's log file (``<session>/logs/ray-data``) only, unless
    ``--verbose``. Ray Data's warnings and errors still reach the console."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose()
    log_once("ray_data_progress_manager_disabled")  # taken: no "Progress bars disabled" warning for what we chose
    if not verbose():  # taken: Ray Data's "no available CPUs, the job will hang". Each job first waits up to 10 s for
        log_once("cpu_warning")  # the view (ray_cluster.wait_for_resource_view), but the tests' shared Ray instance
        # still showed none after it (CI: once in the tiny workflow, which then ran); --verbose keeps the warning
    ctx.print_on_execution_start = verbose()
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if verbose() else logging.WARNING)


@contextmanager
def library_prints():
    """Within it, what a library prints on stderr itself, not through logging (MLflow's ``Successfully registered
    model ...`` and ``Created version ...``), is dropped unless ``--verbose``; lmft says the same in its own line."""
    if verbose():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def duration(seconds: float) -> str:
    """``42 s``, ``3:07`` (minutes:seconds) or ``1:02:07`` (hours)."""
    if not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``10 epochs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def epoch_line(title: str, epoch: int, epochs: int, metrics: dict[str, float], eta_s: float | None,
               show_tau: bool = True) -> str:
    """One epoch of training ``title`` as one line::

        [lmft] adapted (lmft)   epoch  3/10  loss 0.693  τ̂ 0.412  discard 38.2%  24.1 clips/s  data-wait 4%  ETA 1:05

    ``metrics``: rank 0's epoch report (:data:`EPOCH_KEYS`); ``show_tau``: whether the selector uses the learned
    threshold (a full-token baseline has none to show); ``eta_s``: None or NaN prints ``-``, 0 ``done``. A figure
    the report lacks is left out (pretraining has no discard rate); one reported as NaN prints ``-``."""
    get = lambda key: metrics.get(EPOCH_KEYS[key])  # noqa: E731
    width = len(str(epochs))
    discard, wait = get("discard"), get("data_wait")
    parts = [f"{PREFIX} {title:<16}", f"epoch {epoch:>{width}}/{epochs}", f"loss {_num(get('loss'), '.3f')}"]
    if show_tau:
        parts.append(f"τ̂ {_num(get('tau'), '.3f')}")
    if discard is not None:
        parts.append(f"discard {_num(100 * discard, '.1f')}%")
    parts.append(f"{_num(get('clips_per_s'), '.1f')} clips/s")
    if wait is not None:
        parts.append(f"data-wait {_num(100 * wait, '.0f')}%")
    parts.append("done" if eta_s == 0 else f"ETA {duration(eta_s if eta_s is not None else float('nan'))}")
    return "  ".join(parts)


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """``[########------------]`` for ``done`` of ``total``."""
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


PLAIN_EPOCH_LINES = 10  # at most about this many epoch lines per fit when the output is no terminal


def plain_epochs(epochs: int) -> list[int]:
    """The epochs (1-based) of a fit of ``epochs`` that print a line when the output is no terminal: every
    ``ceil(epochs / PLAIN_EPOCH_LINES)``-th and the last, so a long fit prints about :data:`PLAIN_EPOCH_LINES`."""
    every = math.ceil(epochs / PLAIN_EPOCH_LINES)
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


class EpochPrinter:
    """Prints each epoch report of one fit as :func:`epoch_line`, with an ETA from the wall-clock time between
    reports (the first epoch's includes the workers' start). On a terminal the line is redrawn in place with a
    :func:`progress_bar` and ends when the last epoch is in; otherwise one plain line for each epoch of
    :func:`plain_epochs`."""

    def __init__(self, title: str, epochs: int, show_tau: bool = True, stream: TextIO | None = None,
                 clock=time.monotonic):
        self.title, self.epochs, self.show_tau, self.clock = title, epochs, show_tau, clock
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = clock()
        self.times: list[float] = []
        self.open_line = False

    def eta(self, epoch: int) -> float:
        """Seconds left after ``epoch``: the mean time per epoch of this fit so far times the epochs left."""
        if epoch >= self.epochs:
            return 0.0
        now = self.clock()
        spans = [b - a for a, b in zip(self.times, self.times[1:])] or [now - self.started]
        return sum(spans) / len(spans) * (self.epochs - epoch)

    def report(self, metrics: dict[str, float]) -> None:
        epoch = int(metrics.get("epoch", len(self.times) + 1))
        self.times.append(self.clock())
        line = epoch_line(self.title, epoch, self.epochs, metrics, self.eta(epoch), self.show_tau)
        if self.tty:
            self.stream.write(f"\r\x1b[K{progress_bar(epoch, self.epochs)} {line}")
            self.open_line = epoch < self.epochs
            if not self.open_line:
                self.stream.write("\n")
        elif epoch in plain_epochs(self.epochs):
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a redrawn line that the last epoch did not end (a fit that stopped early)."""
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


class StageClock:
    """Banners of a workflow's stages: ``[lmft] ── 3/6 adapt ────── (1:02 elapsed)``, one line as each starts."""

    def __init__(self, total: int, clock=time.monotonic):
        self.total, self.clock, self.started, self.index = total, clock, clock(), 0

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    @contextmanager
    def stage(self, name: str, note: str = ""):
        from lmft_core import interrupt

        interrupt.check()  # a Ctrl-C swallowed during the last stage stops the workflow before this one
        self.index += 1
        head = f"{PREFIX} ── {self.index}/{self.total} {name}{f': {note}' if note else ''} "
        print(f"{head:─<64} ({duration(self.elapsed_s)} elapsed)", flush=True)
        yield


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table, columns padded to their widest cell (first column left-aligned, the others right)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(header), "  ".join("─" * w for w in widths), *(fmt(r) for r in rows)])
