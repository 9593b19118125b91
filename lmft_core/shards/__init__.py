"""Shards: the preprocessing output's format and its readers, one module each.

- :mod:`lmft_core.shards.format`: what an output folder holds, the Parquet schema, packing arrays (no torch, no Ray);
- :mod:`lmft_core.shards.reader`: :class:`~lmft_core.shards.reader.ShardSet` and batches read from it;
- :mod:`lmft_core.shards.batch`: :class:`~lmft_core.shards.batch.ClipBatch` and the model input of its frames;
- :mod:`lmft_core.shards.synthetic`: random valid outputs for benchmarks.

This package imports none of them, so a reader imports only what it names.
"""
