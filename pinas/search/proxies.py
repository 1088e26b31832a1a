"""The proxies that score one architecture on the trained supernet (higher is better; raw loss / accuracy kept).

* :class:`ProbeProxy` (the released search's proxy, the default): top-1 (%) of the shared linear probe (the
  ``linear_probe`` stage) on the labelled search holdout.
* :class:`ContrastiveProxy` (label-free; pinas's extension, no released search uses it): the supernet-Pi
  cross-path InfoNCE of the candidate path against reference paths that differ from it at every layer, on held-out
  images, with the trained queue as negatives and the training temperature; score = -loss.
* :class:`BNGammaProxy`: BN-NAS's data-free indicator, the sum over layers of the mean |gamma| of the chosen
  block's last BN. Costs nothing; used as a pre-filter by the search.

The data-driven proxies score many architectures at once (:meth:`score_many`), each on its own path recalibrated
(precise BN), through :mod:`pinas.search.path_features`: with ``prefix_sharing`` the paths' common prefixes are
computed once, with the same scores.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi, info_nce
from pinas.search.path_features import BlockCounter, path_features
from pinas.search.recalibration import FixedBatches
from pinas.space import Arch, SearchSpace

Score = tuple[float, float | None, float | None]  # (score, loss, acc)


class Proxy(Protocol):
    name: str

    def score_many(self, archs: Sequence[Arch]) -> list[Score]:
        """(score, loss, acc) of each architecture, in order."""


@dataclass
class Timings:
    """Where evaluation time goes: seconds, images through a backbone and block evaluations (layer forwards)."""

    seconds: float = 0.0
    images: int = 0
    blocks: int = 0
    evaluations: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


class BNGammaProxy:
    """BN-NAS score: sum over layers of mean |gamma| of the chosen candidate's last BN (no data, no forward)."""

    name = "bn_gamma"

    def __init__(self, backbone: PiNASBackbone):
        space = backbone.space
        self.table = np.zeros((space.num_layers, space.num_choices))
        for (layer, choice), gamma in backbone.last_bn_gammas().items():
            self.table[layer, choice] = gamma.detach().abs().mean().item()

    def __call__(self, arch: Arch) -> tuple[float, None, None]:
        return float(self.table[np.arange(len(arch)), list(arch)].sum()), None, None

    def score_many(self, archs: Sequence[Arch]) -> list[Score]:
        return [self(a) for a in archs]


def chunked_info_nce(q: torch.Tensor, k_pos: torch.Tensor, queue: torch.Tensor, temperature: float,
                     chunk: int = 1024) -> float:
    """:func:`pinas.models.supernet_pi.info_nce` over many queries, in chunks (50k x 49k logits would not fit)."""
    total = sum(info_nce(q[i:i + chunk], k_pos[i:i + chunk], queue, temperature).item() * len(q[i:i + chunk])
                for i in range(0, len(q), chunk))
    return total / len(q)


class _PathProxy:
    """What the data-driven proxies share: recalibrated path features, timed and counted."""

    def __init__(self, recal: FixedBatches, heldout: FixedBatches, prefix_sharing: bool):
        self.recal, self.heldout = recal, heldout
        self.features = path_features(prefix_sharing)
        self.timings, self.counter = Timings(), BlockCounter()

    def _features(self, backbone: PiNASBackbone, requests: list[tuple[Arch, int | None]]):
        t0 = time.perf_counter()
        out = self.features(backbone, requests, self.recal, self.heldout, counter=self.counter)
        t = self.timings
        t.seconds += time.perf_counter() - t0
        t.images += len({a for a, _ in requests}) * self.recal.num_images + len(requests) * self.heldout.num_images
        t.blocks = self.counter.blocks
        return {k: torch.cat(v) for k, v in out.items()}

    def __call__(self, arch: Arch) -> Score:
        return self.score_many([arch])[0]


class ReferencePaths:
    """The reference paths the contrastive proxy pairs a candidate with: ``squares`` Latin squares of offsets.

    Why not random references: the score is symmetric in candidate and reference (each appears once as query, once
    as key), so to first order a candidate is credited with its references' quality too. References drawn once per
    candidate as fixed rotations favour architectures whose rotations happen to be good (with two references whose
    offsets are both 2 at a layer, choices 0 and 2 score alike there). The official code avoids the bias in
    expectation by drawing a fresh random reference every batch, at the price of noise.

    Here each square is ``choices - 1`` references; at every layer their offsets from the candidate are a seeded
    permutation of {1, ..., choices - 1}, so each other choice of that layer appears in exactly one reference. Under
    an additive model of per-layer quality w, a candidate's mean reference quality is (sum of all w - w(arch)) /
    (choices - 1): the score moves with w(arch) alone, so the order of the choices at every layer is kept, with no
    noise. The offsets are shared by all candidates, so candidates that share a prefix have references that share
    it too and prefix sharing saves as much on the references as on the candidates.
    """

    def __init__(self, space: SearchSpace, squares: int = 1, seed: int = 0):
        rng = np.random.default_rng([seed, 4242])
        n, layers = space.num_choices, space.num_layers
        # offsets[square * (n - 1) + r, layer]: each column of one square is a permutation of 1..n-1
        self.offsets = np.concatenate([np.stack([rng.permutation(np.arange(1, n)) for _ in range(layers)], axis=1)
                                       for _ in range(squares)])
        self.num_choices = n

    def __call__(self, arch: Arch) -> list[Arch]:
        n = self.num_choices
        return [tuple(int((c + o) % n) for c, o in zip(arch, offset)) for offset in self.offsets]


def cross_path_losses(references: dict[Arch, list[Arch]], q: dict[tuple[Arch, int], torch.Tensor],
                      k: dict[tuple[Arch, int], torch.Tensor], queue: torch.Tensor, temperature: float) -> list[float]:
    """The contrastive proxy's loss of each candidate, as supernet-Pi training pairs views 1..4: the candidate plays
    alpha (query from view 1, key from view 2), each reference beta (query from view 3, key from view 4), positives
    are cross-path (q_cand with k_ref, q_ref with k_cand); the mean over the references.

    ``q`` / ``k`` map (path, view index 0..3) to the L2-normalised student / teacher embeddings of the held-out
    images."""
    return [float(np.mean([chunked_info_nce(q[arch, 0], k[ref, 3], queue, temperature)
                           + chunked_info_nce(q[ref, 2], k[arch, 1], queue, temperature) for ref in refs]))
            for arch, refs in references.items()]


class ContrastiveProxy(_PathProxy):
    """Cross-path InfoNCE of the candidate against its :class:`ReferencePaths`, on held-out views
    (:func:`cross_path_losses`); each path is recalibrated (student and teacher BNs) before it embeds, and the
    candidate's embeddings are reused for every reference."""

    name = "contrastive"

    def __init__(self, model: SupernetPi, recal: FixedBatches, heldout: FixedBatches, reference_squares: int = 1,
                 seed: int = 0, prefix_sharing: bool = True):
        super().__init__(recal, heldout, prefix_sharing)
        self.model = model
        self.references = ReferencePaths(model.space, reference_squares, seed)

    def score_many(self, archs: Sequence[Arch]) -> list[Score]:
        student, teacher = self.model.student, self.model.teacher
        refs = {tuple(a): self.references(tuple(a)) for a in archs}
        q = self._features(student.backbone, [(a, 0) for a in refs] + [(r, 2) for rs in refs.values() for r in rs])
        k = self._features(teacher.backbone, [(a, 1) for a in refs] + [(r, 3) for rs in refs.values() for r in rs])
        with torch.no_grad():
            q = {key: F.normalize(student.projector(f), dim=1) for key, f in q.items()}
            k = {key: F.normalize(teacher.projector(f), dim=1) for key, f in k.items()}
        losses = cross_path_losses(refs, q, k, self.model.queue.detach(), self.model.temperature)
        self.timings.evaluations += len(losses)
        return [(-loss, loss, None) for loss in losses]


class ProbeProxy(_PathProxy):
    """Top-1 (%) of the shared linear probe on a labelled held-out split, after recalibrating the path's BNs."""

    name = "linear_probe"

    def __init__(self, backbone: PiNASBackbone, head: nn.Linear, recal: FixedBatches, heldout: FixedBatches,
                 prefix_sharing: bool = True):
        super().__init__(recal, heldout, prefix_sharing)
        self.backbone, self.head = backbone, head

    def score_many(self, archs: Sequence[Arch]) -> list[Score]:
        features = self._features(self.backbone, [(tuple(a), None) for a in archs])
        labels = torch.cat([y for _, y in self.heldout])
        out = []
        with torch.no_grad():
            for arch in archs:
                logits = self.head(features[tuple(arch), None])
                acc = 100.0 * (logits.argmax(1) == labels).sum().item() / labels.numel()
                out.append((acc, F.cross_entropy(logits, labels).item(), acc))
        self.timings.evaluations += len(out)
        return out
