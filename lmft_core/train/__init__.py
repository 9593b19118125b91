"""Adaptation training: the step (no Ray), the worker loop, Ray Train glue, the driver.

Modules: ``config`` (the ``[train]`` section), ``dist`` (rank, world size, collectives), ``adapter``
(model + policy + selector), ``step`` (one optimizer step: :class:`~lmft_core.train.step.Learner`),
``pseudo`` (the target loss's label sources: CLIP, self-training, both), ``evaluate`` (every selector
through one evaluation), ``checkpoint``, ``loop`` (a worker's epochs),
``ray_train`` (datasets, per-worker function, ``TorchTrainer``), ``artifacts`` and ``plots`` (what a
run logs), ``run`` (the driver: :func:`~lmft_core.train.run.run_training`).
"""
