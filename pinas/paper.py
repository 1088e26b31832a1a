"""The reported numbers of the paper's architectures (method doc sections 4-5), in the units pinas's stages report.

Pi-NAS reports two architectures: Pi-NAS-cls for ImageNet and Pi-NAS-trans for the transfers; ResNeSt-50 (every
layer candidate 1) is the baseline they beat. A run of one of these named architectures is compared with its own
numbers; a searched architecture is compared with the one it stands for in that stage (Pi-NAS-cls on ImageNet,
Pi-NAS-trans on the transfers), and the table says it is another architecture. MMDetection reports AP as a
fraction (0.4407), MMSegmentation mIoU and aAcc in percent, retraining top-1/top-5 in percent.
"""
from __future__ import annotations

from pinas.space import RESNEST50

#: per named architecture of the resnest50 space and stage: the reported metrics (Pi-NAS README; ResNeSt-50 from the
#: ResNeSt and PyTorch-Encoding model zoos, with the same detector / segmenter recipes)
REPORTED: dict[str, dict[str, dict[str, float]]] = {
    "pinas-cls": {"retrain": {"top1": 81.6, "top5": 95.7}},
    "pinas-trans": {"coco": {"coco/bbox_mAP": 0.4407, "coco/segm_mAP": 0.3950},  # Mask R-CNN FPN 1x
                    "ade20k": {"mIoU": 45.47, "aAcc": 81.27},                    # DeepLabV3 OS8, MS+flip
                    "cityscapes": {"mIoU": 80.70}},                              # DeepLabV3, MS+flip
    "resnest50": {"retrain": {"top1": 81.03},
                  "coco": {"coco/bbox_mAP": 0.4281, "coco/segm_mAP": 0.3814},
                  "ade20k": {"mIoU": 45.12, "aAcc": 81.17}},
}
#: the paper architecture a searched one stands for, per stage
STANDS_FOR = {"retrain": "pinas-cls", "coco": "pinas-trans", "ade20k": "pinas-trans", "cityscapes": "pinas-trans"}


def paper_arch(space: str, arch: str) -> str | None:
    """The name of ``arch`` when it is one of the paper's architectures (in the resnest50 space), else None."""
    if space != RESNEST50.name:
        return None
    parsed = RESNEST50.parse(arch)
    return next((name for name, a in RESNEST50.named_archs.items() if a == parsed), None)


def compare_rows(stage: str, metrics: dict[str, float], space: str, arch: str) -> list[dict[str, object]]:
    """Table rows: metric, this run's value, the paper's value and whose it is (``same_arch``: the very
    architecture this run trained, rather than the one a searched architecture stands for)."""
    named = paper_arch(space, arch)
    same = named is not None and stage in REPORTED.get(named, {})
    reference = named if same else STANDS_FOR.get(stage)
    if reference is None:
        return []
    return [{"stage": stage, "metric": name, "ours": metrics.get(name), "paper": value,
             "paper_arch": f"{reference} ({RESNEST50.format(RESNEST50.named_archs[reference])})", "same_arch": same}
            for name, value in REPORTED[reference][stage].items()]
