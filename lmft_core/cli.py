"""The command line every entry script in ``pipelines/`` shares: ``--profile``, ``--set``, ``--print-config``,
``--verbose``, and how a script's work is run (:func:`run_main`: errors, Ctrl-C, the last message).

This module imports no torch, Ray or MLflow (nor any module that does) until a script's work starts, so
``--help`` answers at once; ``tests/test_console.py`` checks it in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from lmft_core.config import DEFAULT_PROFILE, INTERRUPTED, INTERRUPTED_EXIT, available_profiles

SET_HELP = ("override one profile setting, e.g. --set train.epochs=3 --set \"selector.name='full'\" (repeatable; "
            "the value is TOML, else a string; every section and key: docs/configuration.md)")


def parser(description: str) -> argparse.ArgumentParser:
    """An entry script's parser with the shared options: ``--profile``, ``--set`` (as ``overrides``),
    ``--print-config`` and ``--verbose``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"one of {available_profiles()} or a .toml path (default: {DEFAULT_PROFILE})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved profile (every section and key, --set applied) as TOML and exit")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's and MLflow's own output (workers, Ray Data progress, Ray Train reports); "
                        "without it that output stays in Ray's session log files")
    return p


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The parser of a run on a preprocessing output (``pipelines/train.py``, ``pipelines/pretrain.py``,
    ``pipelines/sweep.py``): the shared options, ``--shards`` and ``--workdir``."""
    p = parser(description)
    p.add_argument("--shards", required=True, type=Path, help="preprocessing output (root with LATEST, or a <hash> folder)")
    p.add_argument("--workdir", type=Path, default=Path("outputs"),
                   help="where checkpoints, run files and the embedded MLflow store go")
    return p


def load(args: argparse.Namespace):
    """The profile ``args`` name with their ``--set`` overrides (a :class:`~lmft_core.run_config.RunConfig`);
    with ``--print-config`` it is printed as TOML and the script exits. Sets up the console (``--verbose``)."""
    from lmft_core.console import set_verbose
    from lmft_core.run_config import load_profile

    set_verbose(args.verbose)
    profile = load_profile(args.profile, args.overrides)
    if args.print_config:
        print(profile.to_toml(), end="")
        raise SystemExit(0)
    return profile


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors an entry script reports as one ``error: ...`` line (exit status 2) instead of a traceback:
    bad configuration, manifest, weights, data, or a training that failed after its retries."""
    from lmft_core.config import ConfigError
    from lmft_core.manifest import ManifestError
    from lmft_core.preprocess.decode import PreprocessError
    from lmft_core.pseudo_labels import WeightsError
    from lmft_core.sweep import SweepError
    from lmft_core.train.run import TrainError

    return (ConfigError, ManifestError, FileExistsError, PreprocessError, WeightsError, TrainError, SweepError)


def run_main(work: Callable[[], str]) -> int:
    """Run an entry script's ``work`` (it returns the final message) and return the exit status: 0, 2 for a
    :func:`user_errors` error (printed as one line), :data:`~lmft_core.config.INTERRUPTED_EXIT` on Ctrl-C. Ray is
    shut down before the final message (when the work connected to it), so that nothing of Ray's prints after it."""
    import signal

    from lmft_core import interrupt

    connected_before = _ray_connected()
    handler_before = signal.getsignal(signal.SIGINT)  # put back at the end (a test calls run_main in-process)
    interrupt.clear()
    interrupt.install()
    try:
        message = work()
        interrupt.check()  # a Ctrl-C that library code swallowed still stops the script (lmft_core.interrupt)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as e:
        if interrupt.pending():  # the error came from stopping (e.g. a fit torn down by the Ctrl-C)
            print(INTERRUPTED, file=sys.stderr)
            return INTERRUPTED_EXIT
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        interrupt.clear()
        interrupt.restore(handler_before)
    if _ray_connected() and not connected_before:
        import ray

        ray.shutdown()
    print(message, flush=True)
    return 0


def _ray_connected() -> bool:
    """Whether this process is connected to Ray (without importing Ray when nothing has)."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()
