"""Preprocessing on Ray Data (see :mod:`lmft_core.preprocess.run`).

Modules: ``config`` (the ``[preprocess]`` section), ``decode`` (the decode + energy task), ``labeler``
(the CLIP actor), ``store`` (the output folder), ``run`` (the pipeline and :func:`run_preprocess`).
This package imports none of them (the run configuration imports ``config`` alone). Readers of shards import
:mod:`lmft_core.shards.format` instead, which pulls in none of this.
"""
