"""Training crops come from the whole image, reproducibly; the search holdout is a clean, stratified part of train/.

Real PIL images written to disk in an ImageFolder tree; no mocks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pinas.data.images import (
    CropSpec,
    DataError,
    ImageList,
    SearchHoldout,
    TrainCrops,
    batch_loader,
    decode_square,
)
from pinas.data.randaugment import rand_augment

FRAME = {"left": (255, 0, 0), "right": (0, 255, 0), "top": (0, 0, 255), "bottom": (255, 255, 0)}


def framed_image(path: Path, width: int = 96, height: int = 72, border: int = 4) -> Path:
    """A 4:3 grey photo with a frame of a different colour on each side."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[:, :border], pixels[:, -border:] = FRAME["left"], FRAME["right"]
    pixels[:border, border:-border], pixels[-border:, border:-border] = FRAME["top"], FRAME["bottom"]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def colours_seen(view: torch.Tensor) -> set[str]:
    pixels = view.permute(1, 2, 0).reshape(-1, 3).int()
    return {side for side, rgb in FRAME.items() if ((pixels - torch.tensor(rgb)).abs().sum(1) < 40).any()}


def test_random_crops_see_every_border_of_a_wide_image(tmp_path):
    """The old pipeline cut every crop from the centre square of the decoded image, so the left and right strips of
    a 4:3 photo never appeared in any view; crops from the full image show all four sides of the frame."""
    framed_image(tmp_path / "train" / "a" / "0.png")
    crops = TrainCrops(tmp_path / "train", CropSpec(32, scale=(0.2, 1.0), views=4), seed=0)
    seen = [colours_seen(view) for step in range(50) for view in crops[step, 0][0]]
    assert set().union(*seen) == set(FRAME)
    assert all(sum(side in s for s in seen) >= 10 for side in FRAME)  # each side in many of the 200 views
    # the evaluation view is the centre square: the left and right sides are cut away, as retraining evaluates
    assert colours_seen(decode_square(tmp_path / "train" / "a" / "0.png", 36)) == {"top", "bottom"}


def test_crops_are_a_function_of_seed_step_and_image_whatever_the_workers(demo_data):
    train = demo_data("imagenet", cls_train_per_class=4, cls_val_per_class=1) / "train"
    crops = TrainCrops(train, CropSpec(32, scale=(0.2, 1.0), views=2, randaug=(2, 12)), seed=3)
    batches = [[0, 5, 9], [1, 2, 19], [7, 3, 11]]
    alone = [x for x, _ in batch_loader(crops, batches, num_workers=0, start=10)]
    pooled = [x for x, _ in batch_loader(crops, batches, num_workers=2, start=10)]
    assert all(torch.equal(a, b) for a, b in zip(alone, pooled, strict=True))
    assert alone[0].shape == (3, 2, 3, 32, 32)
    assert torch.equal(alone[1][0], crops[11, 1][0])  # batch 1 of a stream starting at step 10 is step 11
    assert not torch.equal(crops[11, 1][0], crops[12, 1][0])  # another step, other crops
    assert not torch.equal(alone[0][0][0], alone[0][0][1])  # two views of one image differ


def test_rand_augment_at_magnitude_zero_is_off_and_otherwise_deterministic(tmp_path):
    img = Image.open(framed_image(tmp_path / "a.png")).convert("RGB")
    assert rand_augment(img, 2, 0, np.random.default_rng(0)) is img
    outputs = [np.asarray(rand_augment(img, 2, 12, np.random.default_rng(s))) for s in range(40)]
    again = [np.asarray(rand_augment(img, 2, 12, np.random.default_rng(s))) for s in range(40)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs, again))
    unchanged = sum(np.array_equal(o, np.asarray(img)) for o in outputs)
    # each of the 2 drawn operations is skipped with probability 1/2: about a quarter come out untouched
    assert 3 <= unchanged <= 20, unchanged


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i:03d}.png").write_bytes(b"")  # the split reads names, never pixels
    return root


def test_the_search_holdout_is_a_disjoint_seeded_part_of_train_blind_to_the_labels(tmp_path):
    images = ImageList.scan(_tree(tmp_path / "train", {"a": 40, "b": 20, "c": 40}))
    kept, held = SearchHoldout(images=0.1).split(images)
    assert len(held) == 10 and len(kept) == 90
    assert set(kept.samples).isdisjoint(held.samples) and set(kept.samples) | set(held.samples) == set(images.samples)
    assert list(kept.samples) == sorted(kept.samples) and list(held.samples) == sorted(held.samples)  # file order
    assert SearchHoldout(images=0.1).split(images) == (kept, held)  # a pure function of the files and settings
    assert SearchHoldout(images=0.1, seed=1).split(images)[1] != held
    assert len(SearchHoldout(images=25).split(images)[1]) == 25  # a count works as well as a fraction
    # as many files under other labels: the same positions are held out (a label-free supernet trains alike)
    relabelled = ImageList.scan(_tree(tmp_path / "relabelled", {"a": 60, "c": 40}))
    positions = [images.samples.index(s) for s in held.samples]
    assert [relabelled.samples.index(s) for s in SearchHoldout(images=0.1).split(relabelled)[1].samples] == positions
    with pytest.raises(DataError, match="search_holdout"):
        SearchHoldout(images=99).split(images)  # some class would keep no training image


def test_loader_workers_start_in_a_process_that_ran_a_prefect_flow(prefect_api, demo_data):
    """The pipeline trains inside its flow's process: workers forked from it inherit Prefect's threads and died at
    exit (code 1, no message); they start from a fork server instead."""
    from prefect import flow

    @flow
    def noop() -> int:
        return 1

    assert noop() == 1
    train = demo_data("imagenet", cls_train_per_class=4, cls_val_per_class=1) / "train"
    crops = TrainCrops(train, CropSpec(32), seed=0)
    batches = [x for x, _ in batch_loader(crops, [[0, 1], [2, 3]], num_workers=2)]
    assert [tuple(x.shape) for x in batches] == [(2, 3, 32, 32)] * 2
