"""Every augmentation and evaluation view of pinas, batched on the training device (kornia).

Loader workers hand over uint8 squares (:mod:`pinas.data.images`); everything random happens here, on the device,
from the torch RNG that checkpoints capture, so a resumed run draws exactly the views an uninterrupted one would.

* :class:`MocoV2Views`: supernet-Pi's view pipeline (method doc 2.2), four views per image (:class:`FourViews`);
* :class:`CropFlip`: the linear probe's RandomResizedCrop + flip (method doc 3.2);
* :class:`RetrainAugment` and :func:`mixup`: the ResNeSt-50 retraining recipe (method doc 4);
* :class:`CenterCrop` / :func:`center_crop` + :class:`Normalize`: the deterministic evaluation view.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import RandAugment
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: kornia's RandAugment draws its operations once per call; applying it to groups this size gives different
#: images of a batch different operations (as per-image RandAugment does) at a few calls per batch.
RANDAUG_GROUP = 8

#: AlexNet "PCA lighting" noise: the eigen-decomposition of ImageNet's RGB covariance (pixel values in 0..1).
_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in 0..1 (floats pass through)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


class Normalize(nn.Module):
    """uint8 (or 0..1 float) images -> ImageNet-normalised float."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (to_unit(x) - self.mean) / self.std


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


class CenterCrop(nn.Module):
    """Deterministic evaluation view: centre crop to the network's input size, then normalise."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.normalize = size, Normalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(center_crop(x, self.size))


class MocoV2Views(nn.Module):
    """The MoCo v2 / OpenSelfSup view pipeline (method doc 2.2).

    RandomResizedCrop(scale crop_min_scale-1) -> ColorJitter(jitter, jitter, jitter, hue) p=0.8 -> grayscale
    p=grayscale_p -> Gaussian blur sigma U(0.1, 2) p=blur_p -> horizontal flip -> normalise. The defaults are the
    paper's; the strengths are settings because tiny images (the demo profile) lose their identity under the full
    distortion. The blur kernel is ~10% of the crop, as in SimCLR/MoCo v2 (23 px at 224).
    """

    def __init__(self, size: int, crop_min_scale: float = 0.2, jitter: float = 0.4, hue: float = 0.4,
                 grayscale_p: float = 0.2, blur_p: float = 0.5):
        super().__init__()
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        steps: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=(crop_min_scale, 1.0))]
        if jitter or hue:
            steps.append(K.ColorJitter(jitter, jitter, jitter, hue, p=0.8))
        if grayscale_p:
            steps.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p:
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
        steps.append(K.RandomHorizontalFlip())
        self.augment = nn.Sequential(*steps)
        self.normalize = Normalize()

    @classmethod
    def from_settings(cls, size: int, settings: dict[str, Any]) -> MocoV2Views:
        """The views a supernet was trained with, from its stage settings (the contrastive proxy scores with them)."""
        return cls(size, settings["crop_min_scale"], settings["color_jitter"], settings["hue"],
                   settings["grayscale_p"], settings["blur_p"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.augment(to_unit(images)).clamp_(0, 1))


class FourViews(nn.Module):
    """Four views of every image, stacked view-major: (4B, C, H, W), as supernet-Pi training draws them."""

    def __init__(self, views: MocoV2Views):
        super().__init__()
        self.views = views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.views(x.repeat(4, 1, 1, 1))


class CropFlip(nn.Module):
    """RandomResizedCrop + horizontal flip (the linear probe's training augmentation, method doc 3.2)."""

    def __init__(self, size: int, min_scale: float = 0.08):
        super().__init__()
        self.augment = nn.Sequential(K.RandomResizedCrop((size, size), scale=(min_scale, 1.0)),
                                     K.RandomHorizontalFlip())
        self.normalize = Normalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.augment(to_unit(x)).clamp_(0, 1))


class RetrainAugment(nn.Module):
    """The ResNeSt-50 recipe's training views: uint8 decoded squares in, normalised crops out.

    RandAugment (on the decoded square, before the crop, as PyTorch-Encoding applies it to the PIL image) ->
    random resized crop (bicubic) -> horizontal flip -> colour jitter -> PCA lighting -> normalise. A zero
    magnitude / strength turns a step off.
    """

    def __init__(self, size: int, crop_scale: tuple[float, float], crop_ratio: tuple[float, float],
                 randaug_n: int, randaug_m: int, color_jitter: float, lighting: float):
        super().__init__()
        self.randaug = RandAugment(n=randaug_n, m=randaug_m) if randaug_m > 0 else None
        self.crop = K.RandomResizedCrop((size, size), scale=crop_scale, ratio=crop_ratio, resample="bicubic")
        self.flip = K.RandomHorizontalFlip()
        self.jitter = K.ColorJitter(color_jitter, color_jitter, color_jitter, p=1.0) if color_jitter > 0 else None
        self.lighting = lighting
        self.register_buffer("pca", torch.tensor(_PCA_EIGVEC) * torch.tensor(_PCA_EIGVAL), persistent=False)
        self.normalize = Normalize()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit(images)
        if self.randaug is not None:
            x = torch.cat([self.randaug(g) for g in x.split(RANDAUG_GROUP)])
        x = self.flip(self.crop(x.clamp(0, 1)))
        if self.jitter is not None:
            x = self.jitter(x)
        if self.lighting > 0:
            alpha = torch.randn(x.shape[0], 3, device=x.device) * self.lighting
            x = x + (alpha @ self.pca.T)[:, :, None, None]
        return self.normalize(x.clamp(0, 1))


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Blend each image with its mirror in the batch (batch order is already random); returns (images, lambda)."""
    if alpha <= 0:
        return x, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return x.mul(lam).add_(x.flip(0), alpha=1 - lam), lam
