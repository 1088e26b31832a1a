"""How long and how fast a transfer trains, the way OpenMMLab users set it.

* :func:`set_train_length`: one length for iteration- and epoch-based configs (``train_cfg.max_iters`` or
  ``max_epochs``, in the config's own unit); schedulers in that unit follow (ends at the old length move to the new
  one, ``MultiStepLR`` milestones scale, schedulers that would start after the end are dropped), validation and
  checkpoint intervals longer than the run shrink to it.
* :func:`use_amp_optim_wrapper`: ``AmpOptimWrapper`` with dynamic loss scaling, as ``tools/train.py --amp`` sets it
  (GPU only: MMEngine's AMP wrapper refuses a CPU).
* :func:`scale_lr_with_batch`: MMEngine's own ``auto_scale_lr`` against the config's ``base_batch_size``; the
  Runner multiplies the lr by world size x per-GPU batch / base batch.
"""
from __future__ import annotations

import logging

log = logging.getLogger("pinas")


def train_unit(cfg) -> str:
    """``"max_epochs"`` for an epoch-based training loop, ``"max_iters"`` for an iteration-based one."""
    loop = cfg.train_cfg
    if loop.get("type") == "IterBasedTrainLoop" or ("max_iters" in loop and "max_epochs" not in loop):
        return "max_iters"
    if loop.get("type") == "EpochBasedTrainLoop" or "max_epochs" in loop:
        return "max_epochs"
    raise ValueError(f"train_cfg {dict(loop)} has neither max_iters nor max_epochs")


def set_train_length(cfg, length: int) -> None:
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    key = train_unit(cfg)
    by_epoch, old = key == "max_epochs", cfg.train_cfg[key]
    cfg.train_cfg[key] = length
    if cfg.train_cfg.get("val_interval", 1) > length:
        cfg.train_cfg["val_interval"] = length
    schedulers = cfg.get("param_scheduler") or []
    kept = []
    for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
        if sched.get("by_epoch", True) == by_epoch:
            if sched.get("begin", 0) >= length:
                continue  # would never start
            if "milestones" in sched:
                sched["milestones"] = sorted({max(1, round(m * length / old)) for m in sched["milestones"]
                                              if round(m * length / old) < length})
            end = sched.get("end", float("inf"))
            if end >= old or end > length:
                sched["end"] = length
        kept.append(sched)
    if schedulers:
        cfg.param_scheduler = kept
    checkpoint = (cfg.get("default_hooks") or {}).get("checkpoint")
    if checkpoint and checkpoint.get("by_epoch", True) == by_epoch and checkpoint.get("interval", 1) > length:
        checkpoint["interval"] = length


def use_amp_optim_wrapper(cfg) -> None:
    wrapper = cfg.optim_wrapper
    if wrapper.get("type", "OptimWrapper") == "OptimWrapper":
        wrapper["type"], wrapper["loss_scale"] = "AmpOptimWrapper", "dynamic"


def scale_lr_with_batch(cfg) -> None:
    """Turn on the config's ``auto_scale_lr`` (left as it is, with a log line, when it names no base batch)."""
    scale = cfg.get("auto_scale_lr")
    if not scale or not scale.get("base_batch_size"):
        log.info("the config sets no auto_scale_lr.base_batch_size: its lr is used as it is")
        return
    scale["enable"] = True
