"""The training engine every training stage runs on: one resumable loop, checkpoints, distributed set-up, launch.

A stage supplies a step function, a batch stream and the objects whose state makes up a checkpoint; the engine
(:class:`~pinas.engine.loop.TrainLoop`) gives every stage the same guarantees: exact resume after a kill, checkpoints
that are never torn and refuse other settings, step logs without duplicates, progress reports, torchrun launch.
"""
