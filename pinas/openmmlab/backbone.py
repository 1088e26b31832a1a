"""A fixed Pi-NAS architecture as an MMDetection / MMSegmentation backbone (``type='PiNASResNeSt'``).

Transfer settings stay ordinary OpenMMLab configs, so the backbone takes the arguments users of ``ResNet`` know
(``out_indices``, ``frozen_stages``, ``norm_cfg`` incl. SyncBN, ``norm_eval``, ``strides``/``dilations`` for output
stride 8) and is registered in both registries under one name; a stock config uses it through
``custom_imports=dict(imports=['pinas.openmmlab'], allow_failed_imports=False)``.

Its modules are named ``stem`` / ``stages`` exactly like :class:`pinas.models.backbone.PiNASBackbone`, so the
``backbone.*`` keys of a detector or segmentor are the ``backbone.*`` keys of the retrained
:class:`pinas.models.backbone.Classifier`.
``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads such a tensor-only state dict with
``weights_only=True``, strictly: a checkpoint of another architecture or space is an error that says which, never a
silent partial load.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from mmcv.cnn import build_norm_layer
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS as MMSEG_MODELS
from torch import nn

from pinas.models.backbone import PiNASBackbone
from pinas.space import Arch, ArchError, SearchSpace, get_space

_CANDIDATE_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.candidates\.(\d+)\.")


def parse_arch(arch: str | Sequence[int] | int, space: SearchSpace) -> Arch:
    """The architecture, or an :class:`ArchError` that says how to write it.

    A number is refused rather than guessed at: MMEngine's ``--cfg-options model.backbone.arch=01231032`` reads the
    digits as the int 1231032 (the leading zero is gone), so the message suggests the stage-grouped spelling, which
    stays a string on every command line.
    """
    if isinstance(arch, int) and not isinstance(arch, bool):
        digits = str(arch).zfill(space.num_layers)
        try:
            hint = f"; did you mean model.backbone.arch='{space.format(space.parse(digits))}'?"
        except ArchError:
            hint = f", e.g. model.backbone.arch='{space.format(space.default_arch())}'"
        raise ArchError(f"PiNASResNeSt: arch arrived as the number {arch} (a command line such as --cfg-options "
                        "turns a digit string into an int and drops its leading zeros); write the architecture "
                        f"grouped by stage with dashes{hint}")
    try:
        return space.parse(arch)
    except ArchError as err:
        raise ArchError(f"PiNASResNeSt: bad arch for space {space.name!r}: {err}") from None


def _check_pretrained(pretrained: str, init_cfg: dict | list | None) -> None:
    """Explain the stock configs' ``model.pretrained`` (a ResNet-50 checkpoint URL) when it reaches this backbone."""
    if "://" in str(pretrained):
        raise ValueError(f"PiNASResNeSt: pretrained={pretrained!r} comes from the stock base config's "
                         "model.pretrained (a ResNet checkpoint, which does not fit a Pi-NAS backbone); set "
                         "model.pretrained=None in your config and give the retrained weights as "
                         "model.backbone.init_cfg=dict(type='Pretrained', checkpoint='<retrain stage>/model.pt')")
    if init_cfg is not None:
        raise ValueError("PiNASResNeSt: give init_cfg or pretrained, not both (set model.pretrained=None when the "
                         "backbone has an init_cfg)")


class PiNASResNeSt(BaseModule):
    """One architecture of a Pi-NAS space as a multi-scale backbone returning the stage outputs in ``out_indices``.

    Args:
        arch: architecture string of ``space`` (``"3333-..."``, digits, a list literal, or a named arch such as
            ``"pinas-trans"``); a number is refused (see :func:`parse_arch`).
        space: search-space preset name (``"resnest50"`` or ``"demo"``).
        out_indices: stages whose outputs are returned (0-based).
        frozen_stages: -1 trains everything; 0 freezes the stem; k freezes the stem and stages 1..k
            (parameters get ``requires_grad=False`` and their norm layers stay in eval mode).
        norm_cfg: norm layer config for :func:`mmcv.cnn.build_norm_layer` (``BN``, ``SyncBN``, ``GN``...).
        norm_eval: keep every BN layer in eval mode during training (frozen statistics).
        strides, dilations: per stage; output stride 8 is ``strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)``.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads a retrained classifier's state dict.
        pretrained: deprecated spelling of the same, ``pretrained=PATH``.
    """

    def __init__(self, arch: str | Sequence[int], space: str = "resnest50", out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_cfg: dict | None = None, norm_eval: bool = False,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 init_cfg: dict | list | None = None, pretrained: str | None = None):
        if pretrained is not None:  # the older `pretrained=PATH` convention (set by mmseg's EncoderDecoder)
            _check_pretrained(pretrained, init_cfg)
            init_cfg = {"type": "Pretrained", "checkpoint": pretrained}
        super().__init__(init_cfg=init_cfg)
        self.space = get_space(space)
        self.arch = parse_arch(arch, self.space)
        n_stages = len(self.space.depths)
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(not 0 <= i < n_stages for i in self.out_indices):
            raise ValueError(f"PiNASResNeSt: out_indices {self.out_indices} must lie in 0..{n_stages - 1}")
        if not -1 <= frozen_stages <= n_stages:
            raise ValueError(f"PiNASResNeSt: frozen_stages {frozen_stages} must lie in -1..{n_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        norm_cfg = {"type": "BN", "requires_grad": True} if norm_cfg is None else norm_cfg
        net = PiNASBackbone(self.space, self.arch, strides=strides, dilations=dilations,
                            norm_layer=lambda channels: build_norm_layer(norm_cfg, channels)[1])
        # adopt the modules (not the wrapper) so the state-dict keys are `stem.*` / `stages.*`, as in a Classifier
        self.stem, self.stages = net.stem, net.stages
        self.out_channels = tuple(self.space.out_channels[i] for i in self.out_indices)
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outs, layer_idx = [], 0
        for stage, blocks in enumerate(self.stages):
            for layer in blocks:
                x = layer(x, self.arch[layer_idx])
                layer_idx += 1
            if stage in self.out_indices:
                outs.append(x)
        return tuple(outs)

    # ------------------------------------------------------------------------------------------- freezing
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *self.stages[:self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> PiNASResNeSt:
        """Keep frozen stages (and every BN with ``norm_eval``) in eval mode whatever the detector asks for."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ----------------------------------------------------------------------------------------- pretrained
    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', ...)`` ourselves (strict, weights_only); defer anything else."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get("type") == "Pretrained"]
        if not pretrained:
            super().init_weights()
            return
        if len(pretrained) > 1:
            raise ValueError(f"PiNASResNeSt: more than one Pretrained init_cfg: {pretrained}")
        # a strict load overwrites every parameter and buffer, so other init_cfg entries would be dead code
        self.load_classifier_checkpoint(pretrained[0]["checkpoint"], prefix=pretrained[0].get("prefix", "backbone."))
        self._is_init = True

    def load_classifier_checkpoint(self, path: str | Path, prefix: str = "backbone.") -> None:
        """Load the ``prefix``-ed keys of a tensor-only state dict (a :class:`Classifier` or a bare backbone)."""
        if "://" in str(path):
            raise FileNotFoundError(f"PiNASResNeSt: pretrained checkpoint {str(path)!r} is a URL; give the path of "
                                    "a retrain stage's model.pt (or another local tensor-only state dict)")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"PiNASResNeSt: pretrained checkpoint {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise KeyError(f"PiNASResNeSt: checkpoint {path} does not fit space {self.space.name!r} arch "
                           f"{self.space.format(self.arch)}: {self._explain_mismatch(state, missing, unexpected)}")
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if state[k].shape != v.shape]
        if wrong:
            raise ValueError(f"PiNASResNeSt: checkpoint {path} has other tensor shapes than space "
                             f"{self.space.name!r} (checkpoint vs model): {wrong[:3]}")
        self.load_state_dict(state, strict=True)
        print_log(f"PiNASResNeSt: loaded {len(state)} tensors of {self.space.name} {self.space.format(self.arch)} "
                  f"from {path}", logger="current")

    def _explain_mismatch(self, state: dict, missing: list[str], unexpected: list[str]) -> str:
        """Name the layers whose candidate differs when the keys tell, else list a few missing/unexpected keys."""
        blocks: dict[tuple[int, int], set[int]] = {}
        for key in state:
            if m := _CANDIDATE_KEY.match(key):
                blocks.setdefault((int(m[1]), int(m[2])), set()).add(int(m[3]))
        depths = tuple(1 + max((b for s, b in blocks if s == stage), default=-1)
                       for stage in range(1 + max((s for s, _ in blocks), default=-1)))
        if blocks and depths != tuple(self.space.depths):
            return f"its stage depths are {depths}, space {self.space.name!r} has {tuple(self.space.depths)}"
        offsets = [sum(self.space.depths[:s]) for s in range(len(self.space.depths))]
        found = {offsets[s] + b: cands for (s, b), cands in blocks.items()}
        diffs = [f"{self.space.describe_layer(i)}: checkpoint has candidate(s) {sorted(found[i])}, arch wants {c}"
                 for i, c in enumerate(self.arch) if i in found and found[i] != {c}]
        if diffs:
            return "trained for another architecture; " + "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")
        parts = Counter(k.split(".")[0] for k in missing)
        return (f"{len(missing)} missing keys (e.g. {missing[:3]}, by module {dict(parts)}), "
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")


MMDET_MODELS.register_module(module=PiNASResNeSt)
MMSEG_MODELS.register_module(module=PiNASResNeSt)
