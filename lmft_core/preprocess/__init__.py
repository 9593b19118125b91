"""Preprocessing on Ray Data (see :mod:`lmft_core.preprocess.run`).

Modules: ``config`` (the ``[preprocess]`` section), ``decode`` (the decode + energy task), ``labeler``
(the CLIP actor), ``store`` (the output folder), ``run`` (the pipeline and :func:`run_preprocess`).
Readers of shards import :mod:`lmft_core.shard_format` instead, which pulls in none of this.
"""

from lmft_core.preprocess.config import PreprocessConfig
from lmft_core.preprocess.decode import PreprocessError
from lmft_core.preprocess.run import PreprocessSummary, decoded_dataset, manifest_table, run_preprocess

__all__ = ["PreprocessConfig", "PreprocessError", "PreprocessSummary", "decoded_dataset", "manifest_table", "run_preprocess"]
