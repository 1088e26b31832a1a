"""The evaluation preprocessing of a network: one record from retraining to deployment.

The retrain stage evaluates with it and writes it into its ``model_config.json``; the export reads it from there,
checks parity with it and writes it into the ONNX file's metadata; the torch-free predictor
(:mod:`pinas.deploy.predict`) reads it back. Like timm's ``pretrained_cfg``, the preprocessing travels with the
model, so a network retrained at another size is deployed with the preprocessing it was evaluated with. This module
imports neither torch nor anything that does (the predictor imports it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the centre crop's share of the resized short side (224 of 256), as ImageNet evaluation (and the recipe) does
CROP_RATIO = 7 / 8


@dataclass(frozen=True)
class EvalPreprocessing:
    """RGB; the short side resized to ``resize`` (bilinear); the centre ``crop`` x ``crop``; scaled to [0, 1];
    normalised with ``mean`` / ``std``; NCHW float32."""

    crop: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"preprocessing: crop {self.crop} must be positive and at most resize {self.resize}")

    @classmethod
    def for_input(cls, crop: int, resize: int | None = None) -> EvalPreprocessing:
        """The evaluation of a network with ``crop`` px inputs: by default resize to ``crop / CROP_RATIO``."""
        return cls(crop, resize or round(crop / CROP_RATIO))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "preprocessing") -> EvalPreprocessing:
        missing = [k for k in ("crop", "resize") if k not in data]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(int(data["crop"]), int(data["resize"]), tuple(data.get("mean", IMAGENET_MEAN)),
                   tuple(data.get("std", IMAGENET_STD)), data.get("interpolation", "bilinear"))

    def describe(self) -> str:
        return (f"RGB; resize the short side to {self.resize} px ({self.interpolation}) and centre-crop "
                f"{self.crop}x{self.crop}; scale to [0, 1]; subtract the mean {list(self.mean)} and divide by the "
                f"std {list(self.std)}; NCHW float32")
