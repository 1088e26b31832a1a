"""The paper's reported numbers (method doc sections 4-5), in the units pinas's stages report them.

Shown next to a run's own metrics in the Prefect UI and the model card. MMDetection reports AP as a fraction
(0.4407), MMSegmentation reports mIoU and aAcc in percent, the retrain stage reports top-1/top-5 in percent.
"""
from __future__ import annotations

PAPER_RESULTS: dict[str, dict[str, float]] = {
    "retrain": {"top1": 81.6, "top5": 95.7},                     # Pi-NAS-cls, ImageNet
    "coco": {"coco/bbox_mAP": 0.4407, "coco/segm_mAP": 0.3950},  # Pi-NAS-trans, Mask R-CNN FPN 1x
    "ade20k": {"mIoU": 45.47, "aAcc": 81.27},                    # Pi-NAS-trans, DeepLabV3 OS8, MS+flip
    "cityscapes": {"mIoU": 80.70},                               # Pi-NAS-trans, DeepLabV3, MS+flip
}


def compare_rows(stage: str, metrics: dict[str, float]) -> list[dict[str, object]]:
    """Table rows: metric, this run's value, the paper's value (for the metrics the paper reports)."""
    return [{"stage": stage, "metric": name, "ours": metrics.get(name), "paper": paper}
            for name, paper in PAPER_RESULTS.get(stage, {}).items()]
