"""Parameters and MACs of any architecture, from a per-layer table measured once with torch's FLOP counter.

The search evaluates thousands of architectures against FLOPs/params limits, so counting each one with a full
forward pass would dominate. Instead :class:`CostModel` runs the supernet (on the ``meta`` device: no memory, no
arithmetic) once per candidate index under :class:`torch.utils.flop_counter.FlopCounterMode`, reads the MACs of
every candidate block from the per-module breakdown, and counts parameters from the modules themselves. The cost
of an architecture is then the shared part (stem, shortcuts, head) plus a sum of table entries. MACs cover
convolutions and linear layers (what the counter counts), matching the method doc's convention.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from pinas.models.backbone import PiNASBackbone, iter_layer_names
from pinas.space import SearchSpace


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def as_dict(self) -> dict[str, float]:
        return {"params_m": round(self.params_m, 4), "gmacs": round(self.gmacs, 4)}


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class CostModel:
    """Params/MACs lookup for a space at one input size, with an optional ``num_classes``-way linear head."""

    def __init__(self, space: SearchSpace, input_size: int | None = None, num_classes: int = 1000):
        self.space = space
        self.input_size = input_size or space.input_size
        self.num_classes = num_classes
        with torch.device("meta"):
            supernet = PiNASBackbone(space).eval()
            image = torch.empty(1, 3, self.input_size, self.input_size)
        layers = supernet.layers()
        n, k = space.num_layers, space.num_choices
        self.layer_params = [[_num_params(layer.candidates[str(c)]) for c in range(k)] for layer in layers]
        self.layer_macs = [[0] * k for _ in range(n)]
        root = type(supernet).__name__
        fixed_macs = None
        for c in range(k):
            with FlopCounterMode(display=False) as counter:
                supernet(image, (c,) * n)
            per_module = counter.get_flop_counts()
            total_on_candidates = 0
            for i, name in enumerate(iter_layer_names(space)):
                flops = sum(per_module.get(f"{root}.{name}.candidates.{c}", {}).values())
                self.layer_macs[i][c] = flops // 2
                total_on_candidates += flops // 2
            shared = counter.get_total_flops() // 2 - total_on_candidates
            if fixed_macs is not None and shared != fixed_macs:
                raise RuntimeError("shared MACs differ between paths; the layer table would be wrong")
            fixed_macs = shared
        head = space.out_channels[-1] * num_classes if num_classes else 0
        head_params = head + num_classes if num_classes else 0
        shared_params = _num_params(supernet.stem) + sum(
            _num_params(layer.downsample) for layer in layers if layer.downsample is not None)
        self.fixed = Cost(params=shared_params + head_params, macs=fixed_macs + head)

    def __call__(self, arch: Sequence[int]) -> Cost:
        arch = self.space.validate(arch)
        return Cost(params=self.fixed.params + sum(self.layer_params[i][c] for i, c in enumerate(arch)),
                    macs=self.fixed.macs + sum(self.layer_macs[i][c] for i, c in enumerate(arch)))

    def extremes(self) -> tuple[Cost, Cost]:
        """Cheapest and dearest architecture by MACs (layers are independent, so a per-layer min/max is exact)."""
        lo = tuple(min(range(self.space.num_choices), key=lambda c, i=i: self.layer_macs[i][c])
                   for i in range(self.space.num_layers))
        hi = tuple(max(range(self.space.num_choices), key=lambda c, i=i: self.layer_macs[i][c])
                   for i in range(self.space.num_layers))
        return self(lo), self(hi)


def count_with_torch(model: torch.nn.Module, input_size: int) -> Cost:
    """Params and MACs of a whole model by one forward under torch's FLOP counter (the reference count)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.train(was_training)
    return Cost(params=_num_params(model), macs=counter.get_total_flops() // 2)

