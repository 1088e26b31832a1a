"""The demo data must be loadable by the stock dataset classes and every label must come from one scene."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pinas.data.demo import (
    IGNORE_INDEX,
    MIN_INSTANCE_PIXELS,
    SHAPE_CLASSES,
    DemoDataSpec,
    _publish,
    det_scene,
    generate_all,
    generate_coco,
    generate_imagenet,
    render_scene,
)

# pycocotools' Cython decode warns under NumPy 2; mmdet's imports warn about torch.jit. Neither is ours.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]
SPEC = DemoDataSpec(seed=3, cls_train_per_class=4, cls_val_per_class=2, det_train_images=12, det_val_images=4)
K = len(SHAPE_CLASSES)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return generate_all(tmp_path_factory.mktemp("demo"), SPEC)


def test_same_seed_identical_files_and_other_seed_differs(data, tmp_path):
    again = generate_all(tmp_path / "again", SPEC)
    other = generate_all(tmp_path / "other", DemoDataSpec(**{**SPEC.__dict__, "seed": 4}))
    for name, folder in data.items():
        digests = _digests(folder)
        assert digests == _digests(again[name])
        differing = {k for k, v in _digests(other[name]).items() if digests.get(k) != v}
        assert len(differing) > 0.9 * len(digests), name  # all images differ; manifests too
    assert not list((tmp_path / "again").glob(".*")), "temporary build folders must not be left behind"


def test_imagenet_folder_tree(data):
    root = data["imagenet"]
    for split, per_class in (("train", SPEC.cls_train_per_class), ("val", SPEC.cls_val_per_class)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(SHAPE_CLASSES)
        for name in SHAPE_CLASSES:
            files = sorted((root / split / name).glob(f"{name}_*.JPEG"))
            assert len(files) == per_class
            image = Image.open(files[0])
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (72, 72)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["classes"] == list(SHAPE_CLASSES) and manifest["counts"] == {"train": 20, "val": 10}


def test_render_scene_class_map_is_union_of_instances():
    for index in range(10):
        scene = det_scene(SPEC, "train", index)
        rgb, instance_ids, class_map = render_scene(scene, SPEC.det_image_size)
        assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8 and 1 <= len(scene.shapes) <= SPEC.max_objects
        assert np.array_equal(class_map == IGNORE_INDEX, instance_ids == 0)
        for k in range(K):
            union = np.isin(instance_ids, [i + 1 for i, s in enumerate(scene.shapes) if s.cls == k])
            assert np.array_equal(union, class_map == k)
        assert all((instance_ids == i + 1).sum() >= MIN_INSTANCE_PIXELS for i in range(len(scene.shapes)))


def test_coco_json_is_consistent_with_pycocotools(data):
    from pycocotools.coco import COCO

    coco = COCO(str(data["coco"] / "annotations/instances_train2017.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    assert len(coco.getImgIds()) == SPEC.det_train_images
    kinds = set()
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert anns, "every image has at least one object"
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            x, y, w, h = (int(v) for v in ann["bbox"])
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= K
            assert abs(int(mask.sum()) - ann["area"]) <= 0.02 * ann["area"] and ann["area"] >= MIN_INSTANCE_PIXELS
            assert mask[y:y + h, x:x + w].sum() == mask.sum()  # inside the box ...
            assert mask[y, x:x + w].any() and mask[y + h - 1, x:x + w].any()  # ... and the box is tight
            kind = "polygon" if isinstance(ann["segmentation"], list) else "rle"
            if SHAPE_CLASSES[ann["category_id"] - 1] in ("circle", "ring"):
                assert kind == "rle"
            kinds.add(kind)
    assert kinds == {"polygon", "rle"}


def test_one_scene_drives_coco_ade20k_and_cityscapes_files(data):
    from pycocotools.coco import COCO

    coco = COCO(str(data["coco"] / "annotations/instances_train2017.json"))
    for index in range(SPEC.det_train_images):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=index + 1))
        ade = _load(data["ade20k"] / f"annotations/training/ADE_train_{index + 1:08d}.png")
        city = _load(data["cityscapes"] / f"gtFine/train/demotown/demotown_000000_{index:06d}_gtFine_labelTrainIds.png")
        assert np.array_equal(ade, np.where(city == IGNORE_INDEX, 0, city + 1))
        for k in range(K):
            union = np.zeros_like(city, dtype=bool)
            for ann in anns:
                if ann["category_id"] == k + 1:
                    union |= coco.annToMask(ann).astype(bool)
            assert np.array_equal(union, city == k), (index, k)
        rendered = render_scene(det_scene(SPEC, "train", index), SPEC.det_image_size)
        city_rgb = _load(data["cityscapes"] / f"leftImg8bit/train/demotown/demotown_000000_{index:06d}_leftImg8bit.png")
        assert np.array_equal(city_rgb, rendered.rgb)  # PNG is lossless: the very same rendering


def test_mmdet_coco_dataset_loads(data):
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs
    from pycocotools.coco import COCO

    dataset = CocoDataset(data_root=str(data["coco"]), ann_file="annotations/instances_train2017.json",
                          data_prefix={"img": "train2017/"}, metainfo={"classes": SHAPE_CLASSES},
                          pipeline=[LoadImageFromFile(), LoadAnnotations(with_bbox=True, with_mask=True),
                                    PackDetInputs()])
    assert len(dataset) == SPEC.det_train_images
    sample = dataset[0]
    assert tuple(sample["inputs"].shape) == (3, 128, 128)
    gt = sample["data_samples"].gt_instances
    coco = COCO(str(data["coco"] / "annotations/instances_train2017.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=sample["data_samples"].img_id))
    expected_boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    np.testing.assert_allclose(gt.bboxes.tensor.numpy(), expected_boxes)
    assert gt.labels.tolist() == [a["category_id"] - 1 for a in anns]
    assert np.array_equal(gt.masks.masks.astype(bool), np.stack([coco.annToMask(a).astype(bool) for a in anns]))


def _seg_values(dataset) -> set[int]:
    values: set[int] = set()
    for i in range(len(dataset)):
        values |= set(np.unique(dataset[i]["gt_seg_map"]).tolist())
    return values


def test_mmseg_ade20k_dataset_loads(data):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import ADE20KDataset, BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    prefix = {"img_path": "images/training", "seg_map_path": "annotations/training"}
    pipeline = [LoadImageFromFile(), LoadAnnotations()]
    stock = ADE20KDataset(data_root=str(data["ade20k"]), data_prefix=prefix, pipeline=pipeline)
    assert len(stock) == SPEC.det_train_images and stock.reduce_zero_label
    assert _seg_values(stock) <= set(range(K)) | {255}
    # mmseg 1.2.2 rejects class names outside ADE20KDataset.METAINFO, so the shape names go through the stock
    # BaseSegDataset configured with ADE20K's suffixes and reduce_zero_label.
    with pytest.raises(ValueError, match="not a subset"):
        ADE20KDataset(data_root=str(data["ade20k"]), data_prefix=prefix, metainfo={"classes": SHAPE_CLASSES})
    named = BaseSegDataset(data_root=str(data["ade20k"]), data_prefix=prefix, img_suffix=".jpg", seg_map_suffix=".png",
                           reduce_zero_label=True, metainfo={"classes": SHAPE_CLASSES}, pipeline=pipeline)
    assert len(named) == SPEC.det_train_images and named.metainfo["classes"] == SHAPE_CLASSES
    raw = _load(Path(named[0]["seg_map_path"])).astype(np.int32)
    assert np.array_equal(named[0]["gt_seg_map"], np.where(raw == 0, 255, raw - 1))
    assert _seg_values(named) <= set(range(K)) | {255}


def test_mmseg_cityscapes_dataset_loads(data):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import BaseSegDataset, CityscapesDataset
    from mmseg.datasets.transforms import LoadAnnotations

    for split, count in (("train", SPEC.det_train_images), ("val", SPEC.det_val_images)):
        prefix = {"img_path": f"leftImg8bit/{split}", "seg_map_path": f"gtFine/{split}"}
        stock = CityscapesDataset(data_root=str(data["cityscapes"]), data_prefix=prefix)
        assert len(stock) == count
        for info in stock.data_list:
            stem = Path(info["img_path"]).name.removesuffix("_leftImg8bit.png")
            assert Path(info["seg_map_path"]).name == f"{stem}_gtFine_labelTrainIds.png"
            assert Path(info["seg_map_path"]).is_file()
    named = BaseSegDataset(data_root=str(data["cityscapes"]), img_suffix="_leftImg8bit.png",
                           seg_map_suffix="_gtFine_labelTrainIds.png", metainfo={"classes": SHAPE_CLASSES},
                           data_prefix={"img_path": "leftImg8bit/val", "seg_map_path": "gtFine/val"},
                           pipeline=[LoadImageFromFile(), LoadAnnotations()])
    assert len(named) == SPEC.det_val_images
    assert _seg_values(named) <= set(range(K)) | {255}


def test_fewer_classes_take_a_prefix(tmp_path):
    spec = DemoDataSpec(num_classes=2, cls_train_per_class=2, cls_val_per_class=1, det_train_images=6,
                        det_val_images=2)
    out = generate_all(tmp_path, spec)
    assert sorted(p.name for p in (out["imagenet"] / "train").iterdir()) == ["circle", "square"]
    doc = json.loads((out["coco"] / "annotations/instances_val2017.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["circle", "square"]
    assert {a["category_id"] for a in doc["annotations"]} <= {1, 2}
    labels = [_load(p) for p in (out["cityscapes"] / "gtFine").rglob("*.png")]
    assert set(np.unique(np.concatenate([lab.ravel() for lab in labels])).tolist()) <= {0, 1, 255}


def test_existing_folders_are_reused_or_refused_never_overwritten(data, tmp_path):
    coco = generate_coco(tmp_path, SPEC)
    before = _digests(coco)
    mtimes = {p: p.stat().st_mtime_ns for p in coco.rglob("*")}
    assert generate_coco(tmp_path, SPEC) == coco  # same spec: returned as is
    assert {p: p.stat().st_mtime_ns for p in coco.rglob("*")} == mtimes

    with pytest.raises(FileExistsError, match=str(coco)):
        generate_coco(tmp_path, DemoDataSpec(**{**SPEC.__dict__, "det_train_images": 5}))
    (coco / "train2017" / "000000000001.jpg").unlink()
    with pytest.raises(FileExistsError, match="files but its manifest"):
        generate_coco(tmp_path, SPEC)
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="no manifest"):
        generate_imagenet(tmp_path, SPEC)
    assert (tmp_path / "imagenet" / "mine.txt").read_text() == "user data"
    assert {k: v for k, v in _digests(coco).items() if k != "train2017/000000000001.jpg"} == {
        k: v for k, v in before.items() if k != "train2017/000000000001.jpg"}

    # ImageNet depends only on the cls_* fields: other detection sizes reuse it.
    assert generate_imagenet(data["imagenet"].parent, DemoDataSpec(**{**SPEC.__dict__, "max_objects": 2}))


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out: Path, spec: DemoDataSpec) -> dict:
        (out / "half.jpg").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _publish(tmp_path, "coco", SPEC, broken)
    assert list(tmp_path.iterdir()) == []
