"""Helpers for benchmark scripts: timing and writing results into ``docs/benchmarks.md``.

Each benchmark owns one section of ``docs/benchmarks.md`` between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` markers, so scripts rewrite their own results and leave the others alone.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine_description() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


# Dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s (no sparsity), by a substring of
# ``torch.cuda.get_device_name``; the first match wins, so the more specific names come first.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0))


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``device_name`` (None: not in :data:`BF16_PEAK_TFLOPS`)."""
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def model_flops_utilisation(flops: float, seconds: float, device_name: str) -> float | None:
    """Achieved FLOP/s (``flops`` done in ``seconds``) over the bf16 peak of ``device_name`` (None: peak unknown).
    For a training step ``flops`` is 3x the forward FLOPs (backward: 2x), the convention of MFU."""
    peak = bf16_peak_tflops(device_name)
    return None if peak is None else flops / seconds / (peak * 1e12)


def best_time_s(fn: Callable[[], object], repeats: int = 3, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Best seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs, by ``clock`` (wall clock by
    default; ``time.process_time``: CPU time of this process, all its threads)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


BENCHMARKS_HEADER = "# Benchmarks\n\nWritten by the scripts in `benchmarks/`; rerun a script to refresh its section.\n"


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD, header: str = BENCHMARKS_HEADER) -> Path:
    """Replace (or append) the section ``name`` of ``path`` (``docs/benchmarks.md``) with ``markdown``;
    a new file starts with ``header``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else header
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
