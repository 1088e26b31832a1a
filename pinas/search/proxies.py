"""The proxies that score one architecture on the trained supernet (higher is better; raw loss / accuracy kept).

* :class:`ContrastiveProxy` (label-free, the default): the supernet-Pi cross-path InfoNCE of the candidate path
  against random paths that differ from it at every layer, on held-out images, with the trained queue as negatives
  and the training temperature; score = -loss.
* :class:`ProbeProxy`: top-1 (%) of the shared linear probe (the ``linear_probe`` stage) on a labelled split.
* :class:`BNGammaProxy`: BN-NAS's data-free indicator, the sum over layers of the mean |gamma| of the chosen
  block's last BN. Costs nothing; used as a pre-filter by the search.

The data-driven proxies recalibrate the path's BNs first (:func:`pinas.search.recalibration.precise_bn`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi, info_nce
from pinas.search.recalibration import FixedBatches, precise_bn
from pinas.space import Arch


class Proxy(Protocol):
    name: str

    def __call__(self, arch: Arch) -> tuple[float, float | None, float | None]:
        """(score, loss, acc) of one architecture."""


@dataclass
class Timings:
    """Where evaluation time goes: BN recalibration vs the proxy forward, and images pushed through a backbone."""

    recal_s: float = 0.0
    proxy_s: float = 0.0
    recal_images: int = 0
    proxy_images: int = 0
    evaluations: int = 0

    @property
    def images_per_s(self) -> float:
        return (self.recal_images + self.proxy_images) / max(self.recal_s + self.proxy_s, 1e-9)


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


def chunked_info_nce(q: torch.Tensor, k_pos: torch.Tensor, queue: torch.Tensor, temperature: float,
                     chunk: int = 1024) -> float:
    """:func:`pinas.pi_model.info_nce` over many queries, in chunks (the logits of 50k x 49k would not fit)."""
    total = sum(info_nce(q[i:i + chunk], k_pos[i:i + chunk], queue, temperature).item() * len(q[i:i + chunk])
                for i in range(0, len(q), chunk))
    return total / len(q)


class ContrastiveProxy:
    """Cross-path InfoNCE of the candidate against random fully-differing reference paths, on held-out views.

    As in training, with views v1..v4 of an image: queries come from the student (v1 on the candidate, v3 on the
    reference), keys from the teacher (v2 on the candidate, v4 on the reference), positives are cross-path
    (q_cand with k_ref, q_ref with k_cand), negatives the trained queue. Each path is recalibrated (student and
    teacher BNs) before it embeds; the candidate's embeddings are reused for every reference path. The reference
    paths are drawn from a generator seeded with (seed, arch), so they are fixed for a given architecture.
    """

    name = "contrastive"

    def __init__(self, model: SupernetPi, recal: FixedBatches, heldout: FixedBatches, reference_paths: int = 2,
                 seed: int = 0):
        self.model, self.recal, self.heldout = model, recal, heldout
        self.reference_paths, self.seed = reference_paths, seed
        self.timings = Timings()

    def _embed(self, arch: Arch, q_view: int, k_view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Student queries of view ``q_view`` and teacher keys of view ``k_view`` on ``arch``, BN recalibrated."""
        student, teacher = self.model.student, self.model.teacher
        t0 = time.perf_counter()
        with precise_bn([(student.backbone, arch), (teacher.backbone, arch)], self.recal):
            t1 = time.perf_counter()
            qs, ks = [], []
            with torch.no_grad():
                for x, _ in self.heldout:
                    views = x.chunk(4)
                    qs.append(student(views[q_view], arch))
                    ks.append(teacher(views[k_view], arch))
        t = self.timings
        t.recal_s, t.proxy_s = t.recal_s + t1 - t0, t.proxy_s + time.perf_counter() - t1
        t.recal_images += 2 * self.recal.num_images
        t.proxy_images += 2 * self.heldout.num_images
        return torch.cat(qs), torch.cat(ks)

    def references(self, arch: Arch) -> list[Arch]:
        """The reference paths of ``arch``: fixed for a given (seed, arch), differing from it at every layer."""
        rng = np.random.default_rng([self.seed, *arch])
        return [self.model.space.sample_differing(arch, rng) for _ in range(self.reference_paths)]

    def __call__(self, arch: Arch) -> tuple[float, float, None]:
        queue, tau = self.model.queue.detach(), self.model.temperature
        q_c, k_c = self._embed(arch, 0, 1)  # the candidate plays training's alpha (views 1, 2) ...
        losses = []
        for ref in self.references(arch):
            q_r, k_r = self._embed(ref, 2, 3)  # ... and each reference its beta (views 3, 4)
            losses.append(chunked_info_nce(q_c, k_r, queue, tau) + chunked_info_nce(q_r, k_c, queue, tau))
        self.timings.evaluations += 1
        loss = float(np.mean(losses))
        return -loss, loss, None


class ProbeProxy:
    """Top-1 (%) of the shared linear probe on a labelled held-out split, after recalibrating the path's BNs."""

    name = "linear_probe"

    def __init__(self, backbone: PiNASBackbone, head: nn.Linear, recal: FixedBatches, heldout: FixedBatches):
        self.backbone, self.head, self.recal, self.heldout = backbone, head, recal, heldout
        self.timings = Timings()

    def __call__(self, arch: Arch) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        with precise_bn([(self.backbone, arch)], self.recal):
            t1 = time.perf_counter()
            correct, loss_sum, count = 0, 0.0, 0
            with torch.no_grad():
                for x, y in self.heldout:
                    logits = self.head(self.backbone(x, arch))
                    loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                    correct += int((logits.argmax(1) == y).sum())
                    count += y.numel()
        t2 = time.perf_counter()
        t = self.timings
        t.recal_s, t.proxy_s = t.recal_s + t1 - t0, t.proxy_s + t2 - t1
        t.recal_images, t.proxy_images = t.recal_images + self.recal.num_images, t.proxy_images + count
        t.evaluations += 1
        acc = 100.0 * correct / count
        return acc, loss_sum / count, acc
