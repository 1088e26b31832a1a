"""The supernet-Pi objective (method doc section 2): cross-path InfoNCE with a path-restricted momentum teacher.

Student and teacher are the same supernet + MLP projector. Per step two paths alpha/beta that differ at every
layer are drawn; the student embeds view 1 on alpha and view 3 on beta, the teacher embeds view 2 on alpha and
view 4 on beta, and each query is pulled towards the *other* path's key against a queue of negatives. Before the
teacher embeds on a path, only the modules of that path move towards the student (EMA), so shared modules (stem,
shortcuts, projector) take two EMA steps per iteration and candidates off both paths do not move at all. The queue
stores the mean of the two keys, not re-normalised, as the released code does.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pinas.engine.distributed import SINGLE_PROCESS, DistInfo, all_gather_cat
from pinas.models.backbone import PiNASBackbone
from pinas.space import Arch

#: what a supernet is trained with: ``pi`` (cross-path contrast, the method), ``same_path`` (MoCo contrast within one
#: path: pinas's baseline without the cross-path term), ``spos`` (SPOS's sampling of one uniform path with
#: supervised cross-entropy, trained with the Pi recipe rather than SPOS's own)
Objective = Literal["pi", "same_path", "spos"]


class Projector(nn.Sequential):
    """The MoCo v2 MLP neck: Linear -> ReLU -> Linear (no predictor: this is MoCo-style, not BYOL-style)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        for m in self:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """Backbone on one path -> projector -> L2-normalised embedding."""

    def __init__(self, backbone: PiNASBackbone, projector: Projector):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x, arch)), dim=1)


class TwoPathStudent(nn.Module):
    """Both student queries in one forward call, so DDP sees exactly one forward per backward."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x_alpha: torch.Tensor, x_beta: torch.Tensor, alpha: Arch, beta: Arch):
        return self.encoder(x_alpha, alpha), self.encoder(x_beta, beta)


def info_nce(q: torch.Tensor, k_pos: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of -log softmax of the positive among [positive, queue negatives]; ``queue`` is (D, K)."""
    pos = (q * k_pos).sum(dim=1, keepdim=True)
    neg = q @ queue.to(q.dtype)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class PathClassifier(nn.Module):
    """Backbone on one path -> linear classifier: the supervised SPOS supernet (one forward per backward for DDP)."""

    def __init__(self, backbone: PiNASBackbone, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        return self.head(self.backbone(x, arch))


class SupernetPi(nn.Module):
    """Student encoder, path-restricted EMA teacher and the negative queue.

    ``num_classes`` adds ``classifier``, the linear head of the supervised SPOS baseline (``objective: spos``),
    which trains the student backbone and this head only: its teacher, projector and queue stay as initialised.
    ``shuffle_bn_splits``: in one process, the sub-batches the teacher's BN normalises the shuffled keys over
    (:meth:`keys`).
    """

    def __init__(self, backbone: PiNASBackbone, projector_hidden: int, feature_dim: int, queue_size: int,
                 temperature: float, momentum: float, num_classes: int | None = None, shuffle_bn_splits: int = 1):
        super().__init__()
        self.classifier = nn.Linear(backbone.feature_dim, num_classes) if num_classes else None
        self.student = Encoder(backbone, Projector(backbone.feature_dim, projector_hidden, feature_dim))
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.momentum, self.shuffle_bn_splits = temperature, momentum, shuffle_bn_splits
        self.register_buffer("queue", F.normalize(torch.randn(feature_dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pairs_cache: dict[Arch, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    @property
    def space(self):
        return self.student.backbone.space

    def _path_pairs(self, arch: Arch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher params, student params) of the modules on ``arch``: stem, chosen blocks, shortcuts, projector."""
        if arch not in self._pairs_cache:
            names = self.student.backbone.path_parameter_names(arch)
            t_params = dict(self.teacher.backbone.named_parameters())
            s_params = dict(self.student.backbone.named_parameters())
            teacher = [t_params[n] for n in sorted(names)] + list(self.teacher.projector.parameters())
            student = [s_params[n] for n in sorted(names)] + list(self.student.projector.parameters())
            if len(self._pairs_cache) > 4096:
                self._pairs_cache.clear()
            self._pairs_cache[arch] = (teacher, student)
        return self._pairs_cache[arch]

    @torch.no_grad()
    def momentum_update(self, arch: Arch) -> None:
        """teacher <- m * teacher + (1 - m) * student, on the parameters of ``arch``'s path only."""
        teacher, student = self._path_pairs(tuple(arch))
        torch._foreach_lerp_(teacher, student, 1.0 - self.momentum)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, arch: Arch, info: DistInfo = SINGLE_PROCESS) -> torch.Tensor:
        """Teacher embeddings of ``x`` on ``arch``, with MoCo's shuffle-BN.

        Why: if a key were normalised with the batch statistics of the same images its query saw, the pair could
        be matched through those statistics rather than the image (MoCo's BN "cheating"). So the keys are computed
        on a random permutation of the images, cut into sub-batches that BN normalises separately, then put back in
        order. Under torchrun the sub-batches are the ranks' shares of the gathered batch; in one process they are
        ``shuffle_bn_splits`` chunks (MoCo's single-GPU SplitBatchNorm).
        """
        if not info.enabled:
            if self.shuffle_bn_splits <= 1:
                return self.teacher(x, arch)
            perm = torch.randperm(x.shape[0], device=x.device)
            k = torch.cat([self.teacher(part, arch) for part in x[perm].chunk(self.shuffle_bn_splits)])
            return k[torch.argsort(perm)]
        gathered = all_gather_cat(x, info)
        perm = torch.randperm(gathered.shape[0], device=x.device)
        torch.distributed.broadcast(perm, src=0)
        mine = perm.view(info.world_size, -1)[info.rank]
        k = all_gather_cat(self.teacher(gathered[mine], arch), info)
        return k[torch.argsort(perm)].view(info.world_size, -1, k.shape[1])[info.rank]

    def loss(self, q_alpha: torch.Tensor, q_beta: torch.Tensor, k_alpha: torch.Tensor,
             k_beta: torch.Tensor) -> torch.Tensor:
        """L = NCE(q_alpha, k_beta) + NCE(q_beta, k_alpha): positives are cross-path and cross-view."""
        queue = self.queue.clone().detach()
        return (info_nce(q_alpha, k_beta, queue, self.temperature)
                + info_nce(q_beta, k_alpha, queue, self.temperature))

    @torch.no_grad()
    def enqueue(self, k_alpha: torch.Tensor, k_beta: torch.Tensor, info: DistInfo = SINGLE_PROCESS) -> None:
        """Push the (un-normalised) mean key of every rank's batch, FIFO."""
        keys = all_gather_cat(((k_alpha + k_beta) / 2).float(), info)
        size = self.queue.shape[1]
        if size % keys.shape[0]:
            raise ValueError(f"queue size {size} must be a multiple of the global batch {keys.shape[0]}")
        ptr = int(self.queue_ptr)
        self.queue[:, ptr:ptr + keys.shape[0]] = keys.T
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)

    def artifact_state(self) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
        """Tensor-only export: student and teacher state dicts and the queue (loads with weights_only=True)."""
        state = {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                 "queue": self.queue.detach().clone(), "queue_ptr": self.queue_ptr.detach().clone()}
        if self.classifier is not None:
            state["classifier"] = self.classifier.state_dict()
        return state

    def load_artifact_state(self, state: dict) -> None:
        if "classifier" in state:
            weight = state["classifier"]["weight"]
            self.classifier = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device)
            self.classifier.load_state_dict(state["classifier"])
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.queue.copy_(state["queue"])
        self.queue_ptr.copy_(state["queue_ptr"])


def zero_off_path_grads(module: nn.Module, on_path: set[str]) -> None:
    """Set to None every gradient outside the sampled paths, so SGD's momentum and weight decay skip them."""
    for name, p in module.named_parameters():
        if name not in on_path:
            p.grad = None
