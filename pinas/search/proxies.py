"""The proxies that score one architecture on the trained supernet (higher is better; raw loss / accuracy kept).

* :class:`ContrastiveProxy` (label-free, the default): the supernet-Pi cross-path InfoNCE of the candidate path
  against random paths that differ from it at every layer, on held-out images, with the trained queue as negatives
  and the training temperature; score = -loss.
* :class:`ProbeProxy`: top-1 (%) of the shared linear probe (the ``linear_probe`` stage) on a labelled split.
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
from pinas.space import Arch

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


class ContrastiveProxy(_PathProxy):
    """Cross-path InfoNCE of the candidate against random fully-differing reference paths, on held-out views.

    As in training, with views v1..v4 of an image: queries come from the student (v1 on the candidate, v3 on the
    reference), keys from the teacher (v2 on the candidate, v4 on the reference), positives are cross-path
    (q_cand with k_ref, q_ref with k_cand), negatives the trained queue. Each path is recalibrated (student and
    teacher BNs) before it embeds; the candidate's embeddings are reused for every reference path.

    Reference path r of a candidate is the candidate with every layer's choice moved by a random, nonzero offset
    drawn once per search from ``seed`` (``(choice + offset_r[layer]) mod choices``): a random path that differs
    from the candidate at every layer, as in training, and fixed for a given (seed, arch). One offset for all
    candidates makes the references of candidates that share a prefix share it too, so prefix sharing saves as
    much on the references as on the candidates.
    """

    name = "contrastive"

    def __init__(self, model: SupernetPi, recal: FixedBatches, heldout: FixedBatches, reference_paths: int = 2,
                 seed: int = 0, prefix_sharing: bool = True):
        super().__init__(recal, heldout, prefix_sharing)
        self.model, self.reference_paths, self.seed = model, reference_paths, seed
        space = model.space
        self.offsets = np.random.default_rng([seed, 4242]).integers(1, space.num_choices,
                                                                   size=(reference_paths, space.num_layers))

    def references(self, arch: Arch) -> list[Arch]:
        """The reference paths of ``arch``: fixed for a given (seed, arch), differing from it at every layer."""
        n = self.model.space.num_choices
        return [tuple(int((c + o) % n) for c, o in zip(arch, offset)) for offset in self.offsets]

    def score_many(self, archs: Sequence[Arch]) -> list[Score]:
        student, teacher = self.model.student, self.model.teacher
        refs = {tuple(a): self.references(a) for a in archs}
        # the candidate plays training's alpha (views 1, 2), each reference its beta (views 3, 4)
        q = self._features(student.backbone, [(a, 0) for a in refs] + [(r, 2) for rs in refs.values() for r in rs])
        k = self._features(teacher.backbone, [(a, 1) for a in refs] + [(r, 3) for rs in refs.values() for r in rs])
        with torch.no_grad():
            q = {key: F.normalize(student.projector(f), dim=1) for key, f in q.items()}
            k = {key: F.normalize(teacher.projector(f), dim=1) for key, f in k.items()}
        queue, tau = self.model.queue.detach(), self.model.temperature
        out = []
        for arch, rs in refs.items():
            losses = [chunked_info_nce(q[arch, 0], k[r, 3], queue, tau) + chunked_info_nce(q[r, 2], k[arch, 1],
                                                                                         queue, tau) for r in rs]
            loss = float(np.mean(losses))
            out.append((-loss, loss, None))
        self.timings.evaluations += len(out)
        return out


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
