"""Learning-rate schedules as pure functions of the step, so a resumed run sets exactly the lr it would have."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0) -> float:
    """Linear warm-up then cosine annealing to ``final_lr``."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    # a Python float: numpy scalars in optimizer state would make checkpoints fail torch.load(weights_only=True)
    return float(final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(np.pi * min(1.0, progress))))


def step_decay_lr(base_lr: float, step: int, total_steps: int, milestones: Sequence[float], decay: float) -> float:
    """``base_lr`` times ``decay`` for every milestone (a fraction of training) already passed."""
    return float(base_lr * decay ** sum(step >= m * total_steps for m in milestones))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr, honouring a group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
