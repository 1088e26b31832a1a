"""The device half of every training view, and the evaluation view (kornia, batched on the training device).

The loader workers cut each training view from the full image (:class:`pinas.data.images.TrainCrops`, seeded per
image, step and view); what follows runs here, batched, from the torch RNG that checkpoints capture, so a resumed
run draws exactly the views an uninterrupted one would. A :class:`Views` pairs the two halves of one recipe:

* :func:`moco_v2_views`: supernet-Pi's four views per image (method doc 2.2), colour on the device
  (:class:`MocoV2Colour`);
* :func:`crop_flip`: the linear probe's RandomResizedCrop + flip (method doc 3.2);
* :func:`retrain_views` and :func:`mixup`: the ResNeSt-50 retraining recipe (method doc 4; :class:`RecipeColour`);
* :class:`CenterCrop` / :func:`center_crop` + :class:`Normalize`: the deterministic evaluation view.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import torch
from torch import nn

from pinas.data.images import CropSpec
from pinas.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

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


class MocoV2Colour(nn.Module):
    """The device half of the MoCo v2 / OpenSelfSup views (method doc 2.2), per image: ColorJitter(jitter, jitter,
    jitter, hue) p=0.8 -> grayscale p=grayscale_p -> Gaussian blur sigma U(0.1, 2) p=blur_p -> normalise. The blur
    kernel is ~10% of the crop, as in SimCLR/MoCo v2 (23 px at 224). Takes uint8 crops ``(N, 3, H, W)``, or
    ``(N, V, 3, H, W)`` with V views per image, which come out view-major: ``(V*N, 3, H, W)``."""

    def __init__(self, size: int, jitter: float = 0.4, hue: float = 0.4, grayscale_p: float = 0.2,
                 blur_p: float = 0.5):
        super().__init__()
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        steps: list[nn.Module] = []
        if jitter or hue:
            steps.append(K.ColorJitter(jitter, jitter, jitter, hue, p=0.8))
        if grayscale_p:
            steps.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p:
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
        self.augment = nn.Sequential(*steps)
        self.normalize = Normalize()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.augment(to_unit(view_major(images))).clamp_(0, 1))


class RecipeColour(nn.Module):
    """The device half of the ResNeSt-50 recipe's training views: colour jitter -> PCA lighting -> normalise (the
    loader did RandAugment, the crop and the flip). A zero strength turns a step off."""

    def __init__(self, color_jitter: float, lighting: float):
        super().__init__()
        self.jitter = K.ColorJitter(color_jitter, color_jitter, color_jitter, p=1.0) if color_jitter > 0 else None
        self.lighting = lighting
        self.register_buffer("pca", torch.tensor(_PCA_EIGVEC) * torch.tensor(_PCA_EIGVAL), persistent=False)
        self.normalize = Normalize()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit(images)
        if self.jitter is not None:
            x = self.jitter(x)
        if self.lighting > 0:
            alpha = torch.randn(x.shape[0], 3, device=x.device) * self.lighting
            x = x + (alpha @ self.pca.T)[:, :, None, None]
        return self.normalize(x.clamp(0, 1))


def view_major(images: torch.Tensor) -> torch.Tensor:
    """``(N, V, C, H, W)`` (V views of each image) -> ``(V*N, C, H, W)``, all first views first; 4-d passes."""
    return images.transpose(0, 1).reshape(-1, *images.shape[2:]) if images.dim() == 5 else images


@dataclass(frozen=True)
class Views:
    """A training view recipe in its two halves: what the loader workers cut from each full image (``crops``) and
    what runs batched on the device afterwards (``device``: uint8 crops in, normalised floats out)."""

    crops: CropSpec
    device: nn.Module


def moco_v2_views(size: int, crop_min_scale: float = 0.2, jitter: float = 0.4, hue: float = 0.4,
                  grayscale_p: float = 0.2, blur_p: float = 0.5, views: int = 4) -> Views:
    """Supernet-Pi's views (method doc 2.2): RandomResizedCrop(scale crop_min_scale-1) + flip in the loader, the
    MoCo v2 colour ops on the device; four views per image by default. The defaults are the paper's; the strengths
    are settings because tiny images (the demo profile) lose their identity under the full distortion."""
    return Views(CropSpec(size, (crop_min_scale, 1.0), views=views), MocoV2Colour(size, jitter, hue, grayscale_p,
                                                                                  blur_p))


def supernet_views(size: int, settings: dict[str, Any], views: int = 4) -> Views:
    """The views a supernet was trained with, from its stage settings (the contrastive proxy scores with them)."""
    return moco_v2_views(size, settings["crop_min_scale"], settings["color_jitter"], settings["hue"],
                         settings["grayscale_p"], settings["blur_p"], views)


def crop_flip(size: int, min_scale: float = 0.08) -> Views:
    """RandomResizedCrop + horizontal flip (the linear probe's training augmentation, method doc 3.2)."""
    return Views(CropSpec(size, (min_scale, 1.0)), Normalize())


def retrain_views(size: int, crop_scale: tuple[float, float], crop_ratio: tuple[float, float], randaug_n: int,
                  randaug_m: int, color_jitter: float, lighting: float) -> Views:
    """The ResNeSt-50 recipe's training views (method doc 4): RandAugment(n, m) on the full image, random resized
    crop (bicubic), flip in the loader; colour jitter and PCA lighting on the device. ``randaug_m = 0`` turns
    RandAugment off."""
    return Views(CropSpec(size, crop_scale, crop_ratio, "bicubic",
                          randaug=(randaug_n, randaug_m) if randaug_m > 0 else None),
                 RecipeColour(color_jitter, lighting))


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Blend each image with its mirror in the batch (batch order is already random); returns (images, lambda)."""
    if alpha <= 0:
        return x, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return x.mul(lam).add_(x.flip(0), alpha=1 - lam), lam
