"""The OpenMMLab backbone: registry, arguments users of ResNet expect, strict pretrained loading, stock configs."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config, DictAction
from mmengine.logging import HistoryBuffer
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS as SEG_MODELS
from torch import nn

from pinas.models.backbone import Classifier, PiNASBackbone
from pinas.openmmlab import PiNASResNeSt
from pinas.space import ArchError, get_space

CONFIGS = Path(__file__).resolve().parents[1] / "transfer_configs"
DEMO_ARCH = "13-31-20-12"


def test_one_class_in_both_registries_with_stage_outputs():
    assert DET_MODELS.get("PiNASResNeSt") is PiNASResNeSt
    assert SEG_MODELS.get("PiNASResNeSt") is PiNASResNeSt
    model = DET_MODELS.build(dict(type="PiNASResNeSt", arch=DEMO_ARCH, space="demo")).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    # output stride 8 for DeepLabV3, only the stages asked for
    os8 = SEG_MODELS.build(dict(type="PiNASResNeSt", arch=DEMO_ARCH, space="demo", out_indices=(2, 3),
                                strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))).eval()
    assert [tuple(o.shape[1:]) for o in os8(torch.randn(1, 3, 64, 64))] == [(256, 8, 8), (512, 8, 8)]
    assert os8.out_channels == (256, 512)


def test_bad_arch_and_arguments_are_clear_errors():
    with pytest.raises(ArchError, match="stage 2 has 3 digits"):
        PiNASResNeSt(arch="13-312-20-12", space="demo")
    with pytest.raises(ArchError, match="valid choices are 0..3"):
        PiNASResNeSt(arch="93-31-20-12", space="demo")
    with pytest.raises(ValueError, match="unknown search space"):
        PiNASResNeSt(arch=DEMO_ARCH, space="resnest51")
    with pytest.raises(ValueError, match="out_indices"):
        PiNASResNeSt(arch=DEMO_ARCH, space="demo", out_indices=(4,))


def test_frozen_stages_and_norm_eval():
    model = PiNASResNeSt(arch=DEMO_ARCH, space="demo", frozen_stages=1, norm_eval=False).train()
    frozen = [model.stem, model.stages[0]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in model.stages[1:] for p in m.parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert model.stages[1].training
    model = PiNASResNeSt(arch=DEMO_ARCH, space="demo", norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns) and model.stages[3][0].training


def test_norm_cfg_builds_syncbn_and_gn():
    sync = PiNASResNeSt(arch=DEMO_ARCH, space="demo", norm_cfg=dict(type="SyncBN", requires_grad=True))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in sync.modules())
    frozen_bn = PiNASResNeSt(arch=DEMO_ARCH, space="demo", norm_cfg=dict(type="BN", requires_grad=False))
    assert not any(p.requires_grad for m in frozen_bn.modules() if isinstance(m, nn.BatchNorm2d)
                   for p in m.parameters())


def _recognisable_classifier(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """A Classifier state dict whose every float tensor holds seeded random values (no init would produce them)."""
    clf = Classifier(PiNASBackbone(get_space("demo"), arch), num_classes=5)
    gen = torch.Generator().manual_seed(123)
    state = {k: torch.rand(v.shape, generator=gen) + 0.5 if v.is_floating_point() else v + 7
             for k, v in clf.state_dict().items()}
    torch.save(state, path)
    return state


def test_pretrained_checkpoint_is_loaded_through_the_config(tmp_path):
    ckpt = tmp_path / "classifier.pth"
    saved = _recognisable_classifier(DEMO_ARCH, ckpt)
    cfg = Config.fromfile(str(CONFIGS / "demo_mask-rcnn_coco.py"))
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(ckpt))
    init_default_scope("mmdet")
    detector = DET_MODELS.build(cfg.model)
    detector.init_weights()
    loaded = detector.state_dict()
    backbone_keys = [k for k in saved if k.startswith("backbone.")]
    assert backbone_keys and all(k in loaded for k in backbone_keys)  # detector keys == classifier keys
    for k in backbone_keys:
        torch.testing.assert_close(loaded[k], saved[k], msg=k)
    # without init_cfg the same build does not hold those values: the comparison above is meaningful
    cfg.model.backbone.init_cfg = None
    fresh = DET_MODELS.build(cfg.model)
    fresh.init_weights()
    assert not torch.equal(fresh.state_dict()["backbone.stem.0.weight"], saved["backbone.stem.0.weight"])


def test_pretrained_checkpoint_of_another_arch_or_space_is_an_error(tmp_path):
    other = tmp_path / "other_arch.pth"
    _recognisable_classifier("00-00-00-00", other)
    model = PiNASResNeSt(arch=DEMO_ARCH, space="demo", init_cfg=dict(type="Pretrained", checkpoint=str(other)))
    with pytest.raises(KeyError, match=r"another architecture; layer \d \(stage 1, block 1\): checkpoint has "
                                       r"candidate\(s\) \[0\], arch wants 1"):
        model.init_weights()
    big = PiNASResNeSt(arch="pinas-trans", init_cfg=dict(type="Pretrained", checkpoint=str(other)))
    with pytest.raises(KeyError, match=r"stage depths are \(2, 2, 2, 2\), space 'resnest50' has \(3, 4, 6, 3\)"):
        big.init_weights()
    missing = PiNASResNeSt(arch=DEMO_ARCH, space="demo", pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        missing.init_weights()


def _write_config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "stock_plus_pinas.py"
    path.write_text(text)
    return Config.fromfile(str(path))


def test_stock_mmdet_mask_rcnn_config_with_only_the_backbone_swapped(tmp_path):
    cfg = _write_config(tmp_path, (
        "_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['pinas.openmmlab'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='PiNASResNeSt', arch='pinas-trans'))\n"))
    init_default_scope("mmdet")
    detector = DET_MODELS.build(cfg.model).eval()
    with torch.no_grad():
        feats = detector.extract_feat(torch.randn(1, 3, 64, 64))
    assert len(feats) == 5 and all(f.shape[1] == 256 for f in feats)


def test_stock_mmseg_deeplabv3_config_with_only_the_backbone_swapped(tmp_path):
    text = ("_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'\n"
            "custom_imports = dict(imports=['pinas.openmmlab'], allow_failed_imports=False)\n"
            "model = dict({}backbone=dict(_delete_=True, type='PiNASResNeSt', arch='pinas-trans',\n"
            "                           strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)))\n")
    init_default_scope("mmseg")
    # the stock `pretrained='open-mmlab://resnet50_v1c'` reaches the backbone: said as such, not as a missing file
    with pytest.raises(ValueError, match=r"pretrained='open-mmlab://resnet50_v1c' comes from the stock base "
                                         r"config's model.pretrained .* set model.pretrained=None"):
        SEG_MODELS.build(_write_config(tmp_path, text.format("")).model)
    segmentor = SEG_MODELS.build(_write_config(tmp_path, text.format("pretrained=None, ")).model).eval()
    with torch.no_grad():
        feats = segmentor.extract_feat(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 16), (512, 8, 8), (1024, 8, 8), (2048, 8, 8)]


def test_an_architecture_given_as_a_number_is_a_clear_error(tmp_path):
    """MMEngine's --cfg-options turns 01231032 into the int 1231032; the error says how to write it instead."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    options = parser.parse_args(["--cfg-options", "model.backbone.arch=01231032"]).cfg_options
    assert options == {"model.backbone.arch": 1231032}  # what the stock tools hand over
    cfg = Config.fromfile(str(CONFIGS / "demo_mask-rcnn_coco.py"))
    cfg.merge_from_dict(options)
    init_default_scope("mmdet")
    with pytest.raises(ArchError, match=r"arrived as the number 1231032 .* did you mean "
                                        r"model.backbone.arch='01-23-10-32'"):
        DET_MODELS.build(cfg.model)
    with pytest.raises(ArchError, match=r"number 99 .* e.g. model.backbone.arch='11-11-11-11'"):
        PiNASResNeSt(arch=99, space="demo")
    dashed = parser.parse_args(["--cfg-options", "model.backbone.arch=01-23-10-32"]).cfg_options
    assert PiNASResNeSt(arch=dashed["model.backbone.arch"], space="demo").arch == (0, 1, 2, 3, 1, 0, 3, 2)


class _AsksForGetattr:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: the shape of the getattr calls HistoryBuffer's pickles make,
    aimed at something that is not one of its statistics."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, "__init__")


def test_weights_only_loads_accept_mmengine_history_and_nothing_more(tmp_path):
    import pinas.openmmlab  # noqa: F401  (what custom_imports does)

    buffer = HistoryBuffer()
    for value in (1.0, 2.5, np.float64(4.0)):
        buffer.update(value)
    torch.save({"message_hub": {"log_scalars": {"loss": buffer}, "runtime_info": {"eta": np.float64(3.0),
                                                                                   "iter": np.int64(7)}}},
               tmp_path / "hub.pth")
    loaded = torch.load(tmp_path / "hub.pth", weights_only=True)["message_hub"]
    assert loaded["log_scalars"]["loss"].mean() == buffer.mean() and loaded["runtime_info"]["iter"] == 7
    torch.save({"x": _AsksForGetattr()}, tmp_path / "sneaky.pth")
    with pytest.raises(pickle.UnpicklingError, match="allows only HistoryBuffer's statistics"):
        torch.load(tmp_path / "sneaky.pth", weights_only=True)
