"""The features of many paths of one supernet backbone, each after precise-BN recalibration of its own path.

Two ways to compute the same numbers:

* :func:`features_per_path`: for every architecture, recalibrate its path (:func:`precise_bn`), then run the
  held-out batches through it; the reference.
* :func:`features_by_prefix`: the paths as a prefix tree. In train-mode recalibration a block's batch statistics
  depend only on the blocks before it, and in eval-mode scoring a block's output depends only on its prefix's
  recalibrated statistics, so paths that share their first k layers share those layers' work. The tree is walked
  depth first for each batch, keeping one activation per depth; each tree node keeps the recalibrated statistics of
  its block (the same module under another prefix has other statistics), loaded into the module when the node
  runs. The result equals the per-path one (same operations, same order); ``tests/test_path_features.py`` checks
  it, ``benchmarks/bench_prefix_sharing.py`` measures the saving.

A request is ``(arch, view)``: ``view`` picks the input from a held-out batch (``select(x, view)``), e.g. one of
the four MoCo views; the result maps each request to its pooled features, one tensor per held-out batch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pinas.models.backbone import PiNASBackbone
from pinas.search.recalibration import FixedBatches, precise_bn, restored
from pinas.space import Arch

Request = tuple[Arch, int | None]
Select = Callable[[torch.Tensor, int | None], torch.Tensor]
BN = nn.modules.batchnorm._BatchNorm


@dataclass
class BlockCounter:
    """The unit of evaluation cost: one searchable block on one batch (``blocks``); the stem (three 3x3 convs at
    the highest resolution) counted apart (``stems``)."""

    blocks: int = 0
    stems: int = 0


def _pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def whole_view(x: torch.Tensor, view: int | None) -> torch.Tensor:
    return x if view is None else x.chunk(4)[view]


def features_per_path(backbone: PiNASBackbone, requests: Sequence[Request], recal: FixedBatches,
                      heldout: FixedBatches, select: Select = whole_view,
                      counter: BlockCounter | None = None) -> dict[Request, list[torch.Tensor]]:
    """The reference computation: each architecture recalibrated and run on its own."""
    views: dict[Arch, list[int | None]] = {}
    for arch, view in requests:
        views.setdefault(tuple(arch), []).append(view)
    out: dict[Request, list[torch.Tensor]] = {}
    layers = backbone.space.num_layers
    for arch, wanted in views.items():
        with precise_bn([(backbone, arch)], recal), torch.no_grad():
            for x, _ in heldout:
                for view in dict.fromkeys(wanted):
                    out.setdefault((arch, view), []).append(backbone(select(x, view), arch))
        if counter is not None:
            passes = len(recal) + len(heldout) * len(set(wanted))
            counter.blocks += layers * passes
            counter.stems += passes
    return out


def _load(bns: Sequence[BN], stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    for bn, (mean, var, count) in zip(bns, stats):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.copy_(count)


def _save(bns: Sequence[BN]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]


def features_by_prefix(backbone: PiNASBackbone, requests: Sequence[Request], recal: FixedBatches,
                       heldout: FixedBatches, select: Select = whole_view,
                       counter: BlockCounter | None = None) -> dict[Request, list[torch.Tensor]]:
    """:func:`features_per_path`'s result, each shared prefix computed once (see the module docstring)."""
    requests = [(tuple(a), v) for a, v in requests]
    archs = sorted({a for a, _ in requests})
    if not archs:
        return {}
    layers = backbone.layers()
    depth_of = len(archs[0])
    # every prefix, in pre-order: sorting tuples lists a node right after its parent's subtree starts
    prefixes = sorted({a[:d] for a in archs for d in range(1, depth_of + 1)})
    node_bns = {p: [bn for m in layers[len(p) - 1].modules_for(p[-1]) for bn in m.modules() if isinstance(bn, BN)]
                for p in prefixes}
    stem_bns = [m for m in backbone.stem.modules() if isinstance(m, BN)]
    all_bns = list({id(bn): bn for bns in [stem_bns, *node_bns.values()] for bn in bns}.values())
    with restored([backbone], all_bns), torch.no_grad():
        for bn in all_bns:  # precise BN: from reset statistics, the arithmetic mean of the batch statistics
            bn.reset_running_stats()
            bn.momentum = None
        fresh = {p: _save(bns) for p, bns in node_bns.items()}
        backbone.train()
        acts: list[torch.Tensor | None] = [None] * (depth_of + 1)
        for x, _ in recal:
            acts[0] = backbone.stem(x)
            for p in prefixes:
                _load(node_bns[p], fresh[p])
                acts[len(p)] = layers[len(p) - 1](acts[len(p) - 1], p[-1])
                fresh[p] = _save(node_bns[p])
        backbone.eval()
        out: dict[Request, list[torch.Tensor]] = {}
        by_view: dict[int | None, set[Arch]] = {}
        for arch, view in requests:
            by_view.setdefault(view, set()).add(arch)
        view_prefixes = {v: sorted({a[:d] for a in vs for d in range(1, depth_of + 1)}) for v, vs in by_view.items()}
        for x, _ in heldout:
            for view, ps in view_prefixes.items():
                acts[0] = backbone.stem(select(x, view))
                for p in ps:
                    _load(node_bns[p], fresh[p])
                    acts[len(p)] = layers[len(p) - 1](acts[len(p) - 1], p[-1])
                    if len(p) == depth_of:
                        out.setdefault((p, view), []).append(_pool(acts[len(p)]))
        if counter is not None:
            counter.blocks += len(prefixes) * len(recal) + sum(len(ps) for ps in view_prefixes.values()) * len(heldout)
            counter.stems += len(recal) + len(view_prefixes) * len(heldout)
    return out


def path_features(prefix_sharing: bool):
    """The implementation the evaluator uses."""
    return features_by_prefix if prefix_sharing else features_per_path

