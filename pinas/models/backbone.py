"""The weight-sharing supernet and the standalone subnet, built by one class.

:class:`PiNASBackbone` holds, at every searchable layer, a ``ModuleDict`` of candidate blocks keyed by candidate
index. Built with ``arch=None`` it holds all candidates (the supernet); built with an architecture it holds only the
chosen one (the standalone subnet). Both name their parameters identically, so a subnet's state dict is a subset of
the supernet's and extraction is a plain key filter (:func:`extract_subnet`): no key mapping to get wrong.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pinas.models.blocks import CandidateBlock, DeepStem, NormLayer, block_geometry, init_weights, make_shortcut
from pinas.space import Arch, SearchSpace, iter_stage_layers


class ChoiceLayer(nn.Module):
    """One searchable bottleneck position: candidate residual branches plus the shortcut they share."""

    def __init__(self, in_channels: int, planes: int, space: SearchSpace, choices: Sequence[int], stride: int,
                 dilation: int, norm_layer: NormLayer, avd: bool | None = None):
        super().__init__()
        self.candidates = nn.ModuleDict({
            str(c): CandidateBlock(in_channels, planes, space.candidates[c], stride, dilation,
                                   space.min_attention_width, norm_layer, avd)
            for c in choices})
        self.downsample = make_shortcut(in_channels, planes * 4, stride, norm_layer)

    def forward(self, x: torch.Tensor, choice: int) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.candidates[str(choice)](x) + identity)

    def modules_for(self, choice: int) -> list[nn.Module]:
        """The modules a forward with ``choice`` touches (the chosen candidate and the shared shortcut)."""
        mods: list[nn.Module] = [self.candidates[str(choice)]]
        if self.downsample is not None:
            mods.append(self.downsample)
        return mods


class PiNASBackbone(nn.Module):
    """ResNeSt-D backbone over a search space: a supernet (``arch=None``) or one fixed architecture.

    ``forward(x, arch)`` runs one path and returns the globally pooled feature, or the four stage outputs with
    ``return_stages=True`` (for detection / segmentation). ``strides`` and ``dilations`` per stage allow output
    stride 8 for DeepLabV3 (strides (1, 2, 1, 1), dilations (1, 1, 2, 4)), built by ResNeSt's rules for dilated
    stages (:func:`pinas.models.blocks.block_geometry`).
    """

    def __init__(self, space: SearchSpace, arch: Sequence[int] | str | None = None,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.space = space
        self.fixed_arch: Arch | None = None if arch is None else space.parse(arch)
        n_stages = len(space.depths)
        dilations = tuple(dilations) if dilations is not None else (1,) * n_stages
        if len(strides) != n_stages or len(dilations) != n_stages:
            raise ValueError(f"strides {tuple(strides)} and dilations {dilations} need one entry per stage "
                             f"({n_stages} stages)")
        self.stem = DeepStem(space.stem_width, norm_layer)
        all_choices = range(space.num_choices)
        in_ch = space.stem_channels
        stages = []
        layers: list[ChoiceLayer] = []
        for stage, depth in enumerate(space.depths):
            blocks = nn.ModuleList()
            for block in range(depth):
                layer_idx = len(layers)
                choices = all_choices if self.fixed_arch is None else (self.fixed_arch[layer_idx],)
                stride, dilation, avd = block_geometry(stage, block, strides[stage], dilations[stage])
                layer = ChoiceLayer(in_ch, space.planes[stage], space, choices, stride, dilation, norm_layer, avd)
                blocks.append(layer)
                layers.append(layer)
                in_ch = space.planes[stage] * 4
            stages.append(blocks)
        self.stages = nn.ModuleList(stages)
        self.out_channels = space.out_channels
        self.feature_dim = self.out_channels[-1]
        init_weights(self)

    def _resolve(self, arch: Sequence[int] | None) -> Arch:
        if arch is None:
            if self.fixed_arch is None:
                raise ValueError("the supernet needs an architecture: forward(x, arch)")
            return self.fixed_arch
        arch = tuple(arch)
        if self.fixed_arch is not None and arch != self.fixed_arch:
            raise ValueError(f"this subnet is {self.space.format(self.fixed_arch)}, asked for "
                             f"{self.space.format(arch)}")
        return arch

    def forward(self, x: torch.Tensor, arch: Sequence[int] | None = None,
                return_stages: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        arch = self._resolve(arch)
        x = self.stem(x)
        outs = []
        layer_idx = 0
        for blocks in self.stages:
            for layer in blocks:
                x = layer(x, arch[layer_idx])
                layer_idx += 1
            outs.append(x)
        if return_stages:
            return tuple(outs)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def layers(self) -> list[ChoiceLayer]:
        return [layer for blocks in self.stages for layer in blocks]

    def path_modules(self, arch: Sequence[int]) -> list[nn.Module]:
        """Every module a forward along ``arch`` touches: the stem, the chosen candidates, their shortcuts."""
        arch = self._resolve(arch)
        mods: list[nn.Module] = [self.stem]
        for layer, choice in zip(self.layers(), arch):
            mods.extend(layer.modules_for(choice))
        return mods

    def path_parameter_names(self, arch: Sequence[int]) -> set[str]:
        """Fully qualified names of the parameters on ``arch``'s path."""
        on_path = {id(p) for m in self.path_modules(arch) for p in m.parameters()}
        return {name for name, p in self.named_parameters() if id(p) in on_path}

    def last_bn_gammas(self) -> dict[tuple[int, int], torch.Tensor]:
        """(layer, candidate) -> gamma of the candidate's last BN; its magnitude is the BN-NAS importance score."""
        return {(i, int(c)): block.bn3.weight for i, layer in enumerate(self.layers())
                for c, block in layer.candidates.items()}


class Classifier(nn.Module):
    """Backbone + global average pool + linear head (the standalone network of retraining and ONNX export)."""

    def __init__(self, backbone: PiNASBackbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, x: torch.Tensor, arch: Sequence[int] | None = None) -> torch.Tensor:
        return self.fc(self.backbone(x, arch))


def build_subnet(space: SearchSpace, arch: Sequence[int] | str, **kwargs) -> PiNASBackbone:
    """The standalone backbone of one architecture (freshly initialised)."""
    return PiNASBackbone(space, space.parse(arch), **kwargs)


def subnet_state_dict(supernet: nn.Module, subnet: nn.Module) -> dict[str, torch.Tensor]:
    """The supernet entries a subnet with the same module names needs (works for backbones and classifiers)."""
    source = supernet.state_dict()
    missing = [k for k in subnet.state_dict() if k not in source]
    if missing:
        raise KeyError(f"supernet has no entries for {missing[:3]}{'...' if len(missing) > 3 else ''}: "
                       "was it built over another search space?")
    return {k: source[k].detach().clone() for k in subnet.state_dict()}


def extract_subnet(supernet: PiNASBackbone, arch: Sequence[int] | str, **kwargs) -> PiNASBackbone:
    """A standalone backbone for ``arch`` carrying the supernet's weights (and BN statistics) on that path."""
    subnet = build_subnet(supernet.space, arch, **kwargs)
    subnet.load_state_dict(subnet_state_dict(supernet, subnet))
    return subnet


def iter_layer_names(space: SearchSpace) -> list[str]:
    """Module-name prefix of every searchable layer, e.g. ``stages.1.0`` (used for readable reports)."""
    return [f"stages.{stage}.{block}" for _, stage, block in iter_stage_layers(space)]
