"""pinas in OpenMMLab: the ``PiNASResNeSt`` backbone, registered in MMDetection's and MMSegmentation's registries.

Importing this package is what ``custom_imports=dict(imports=['pinas.openmmlab'])`` in a config does: it registers
the backbone, and lets torch's weights-only loads read MMEngine's own checkpoints (:mod:`.checkpoints`), so the stock
``train.py --resume`` and ``test.py`` work without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
:mod:`pinas.openmmlab.runner` runs a config with MMEngine's Runner for the transfer stage.
"""
from pinas.openmmlab.backbone import PiNASResNeSt
from pinas.openmmlab.checkpoints import allow_mmengine_checkpoints

allow_mmengine_checkpoints()

__all__ = ["PiNASResNeSt"]
