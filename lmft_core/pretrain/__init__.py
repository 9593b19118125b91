"""Masked video pretraining on the unlabelled clips of a preprocessing output, before adaptation.

VideoMAE's recipe at lmft's geometry (:mod:`~lmft_core.pretrain.mae`), with the visible tokens chosen by a
registered masking strategy (:mod:`~lmft_core.pretrain.masking`: ``tube``, ``random``, ``motion``,
``learned``), one Ray-free step (:mod:`~lmft_core.pretrain.learner`), the worker loop and its Ray Train
wrapper (:mod:`~lmft_core.pretrain.worker`) and the run on the driver (:mod:`~lmft_core.pretrain.run`).
Its output, ``encoder.pth``, is a VideoMAE pre-training checkpoint: ``--set model.pretrained=...``.

Typical use::

    from lmft_core.config import load_profile
    from lmft_core.pretrain.run import run_pretrain

    result = run_pretrain(load_profile("demo", ["pretrain.masking='motion'"]), "outputs/shards", "outputs")
    # then: python pipelines/train.py --shards outputs/shards --set model.pretrained=<result.encoder>
"""
