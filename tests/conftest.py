"""Shared fixtures: generated demo data in the real formats, made once per test session."""
import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def demo_imagenet(tmp_path_factory):
    """A small ImageNet-format tree (5 shape classes, 72 px) shared by the training tests."""
    from pinas.demo_data import DemoDataSpec, generate_imagenet

    root = tmp_path_factory.mktemp("demo-data")
    return generate_imagenet(root, DemoDataSpec(cls_train_per_class=40, cls_val_per_class=12))
