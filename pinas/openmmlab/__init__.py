"""pinas in OpenMMLab: the ``PiNASResNeSt`` backbone, registered in MMDetection's and MMSegmentation's registries.

Importing this package is what ``custom_imports=dict(imports=['pinas.openmmlab'])`` in a config does: it registers
the backbone. :mod:`pinas.openmmlab.runner` runs a config with MMEngine's Runner for the transfer stage.
"""
from pinas.openmmlab.backbone import PiNASResNeSt

__all__ = ["PiNASResNeSt"]
