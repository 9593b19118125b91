"""Benchmark datasets as lmft manifests: UCF-HMDB_full, Daily-DA and ActorShift from their published layouts.

``python -m lmft_core.datasets <benchmark> --root ... --source <domain> --target <domain> --output manifest.csv``;
see :mod:`lmft_core.datasets.core` for the terms and the error handling, one module per benchmark for
its layout and sources, and ``data/<benchmark>.csv`` for the class mappings.
"""

from lmft_core.datasets import actorshift, daily_da, ucf_hmdb  # noqa: F401 - imported to register the benchmarks
from lmft_core.datasets.core import (
    BENCHMARKS,
    Benchmark,
    BuildResult,
    ClassTable,
    DatasetConfig,
    DatasetError,
    DomainSpec,
    ProblemReport,
    build_manifest,
    skipped_path,
)

__all__ = [
    "BENCHMARKS", "Benchmark", "BuildResult", "ClassTable", "DatasetConfig", "DatasetError", "DomainSpec",
    "ProblemReport", "build_manifest", "skipped_path",
]
