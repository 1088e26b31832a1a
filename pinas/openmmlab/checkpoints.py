"""MMEngine's own checkpoints under torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``; a checkpoint its Runner writes (what stock
``train.py`` saves, ``test.py`` and ``train.py --resume`` load) holds, besides tensors, the message hub's
``HistoryBuffer`` objects and numpy arrays / scalars / dtypes, which the weights-only unpickler refuses
(``Unsupported global: GLOBAL mmengine.logging.history_buffer.HistoryBuffer``). Rather than turning the safety
off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), :func:`allow_mmengine_checkpoints` allows exactly those globals,
process-wide, when :mod:`pinas.openmmlab` is imported — which a config's ``custom_imports`` does before the tools
load anything. Nothing else becomes loadable: in particular ``builtins.getattr`` (how ``HistoryBuffer`` pickles its
statistics functions, ``getattr(HistoryBuffer, 'min')``) is bound to a lookup that returns only those functions.
"""
from __future__ import annotations

import importlib
import pickle
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

#: the numpy dtypes a message hub can hold (its buffers are float64 / int64 arrays, its scalars numpy numbers)
_DTYPE_CODES = ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")


def history_buffer_statistic(owner: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` in weights-only loads: only ``HistoryBuffer``'s statistics methods."""
    if owner is HistoryBuffer and name in {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({owner!r}, {name!r}); a weights-only load allows only "
                                 "HistoryBuffer's statistics")


def mmengine_checkpoint_globals() -> list:
    """The allow-list: ``HistoryBuffer``, numpy arrays / dtypes / scalars (under numpy 1 and numpy 2 names), and
    the narrow ``getattr``."""
    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    named = [(history_buffer_statistic, "builtins.getattr")]
    for core in ("numpy.core", "numpy._core"):  # checkpoints written under numpy 1 name the first
        named += [(multiarray.scalar, f"{core}.multiarray.scalar"),
                  (multiarray._reconstruct, f"{core}.multiarray._reconstruct")]
    dtypes = {type(np.dtype(code)) for code in _DTYPE_CODES}
    return [HistoryBuffer, np.ndarray, np.dtype, *sorted(dtypes, key=lambda t: t.__name__), *named]


def allow_mmengine_checkpoints() -> None:
    """Register :func:`mmengine_checkpoint_globals` with torch (a no-op before torch 2.4, which loads anything)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(mmengine_checkpoint_globals())
