"""Loading MMEngine's own resume checkpoints under torch >= 2.6, whose ``torch.load`` defaults to ``weights_only``.

MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``; a checkpoint written by its Runner holds, besides
tensors, the message hub's ``HistoryBuffer`` objects and numpy scalars / arrays / dtypes, which the weights-only
unpickler refuses. Rather than turning the safety off, exactly those globals are allowed.
"""
from __future__ import annotations

import contextlib
import importlib
import pickle
from typing import Any

import numpy as np
import torch


def _resume_safe_globals() -> list:
    """Exactly the non-tensor globals in MMEngine's own resume checkpoints (its message hub and numpy values).

    torch >= 2.6 loads with ``weights_only=True``. Rather than turning that off for every load in the process, the
    Runner's resume runs inside a ``safe_globals`` scope that adds these. ``HistoryBuffer`` pickles its statistics
    functions as ``getattr(HistoryBuffer, 'min')``; plain ``getattr`` would let a pickle reach anything, so the name
    ``builtins.getattr`` is bound to a lookup that only returns those functions.
    """
    from mmengine.logging import HistoryBuffer

    try:
        multiarray, numpy_core = importlib.import_module("numpy._core.multiarray"), "numpy._core"  # numpy >= 2
    except ImportError:
        multiarray, numpy_core = importlib.import_module("numpy.core.multiarray"), "numpy.core"

    def history_buffer_function(owner: Any, name: str) -> Any:
        allowed = {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}
        if owner is HistoryBuffer and name in allowed:
            return getattr(owner, name)
        raise pickle.UnpicklingError(f"checkpoint asks for getattr({owner!r}, {name!r}); only HistoryBuffer "
                                     "statistics are allowed")

    dtype_classes = {type(np.dtype(t)) for t in ("b", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")}
    return [HistoryBuffer, np.ndarray, np.dtype, *dtype_classes, (history_buffer_function, "builtins.getattr"),
            (multiarray.scalar, f"{numpy_core}.multiarray.scalar"),
            (multiarray._reconstruct, f"{numpy_core}.multiarray._reconstruct")]


def allow_resume_globals():
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; older ones load anything
    return safe_globals(_resume_safe_globals()) if safe_globals else contextlib.nullcontext()
