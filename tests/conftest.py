"""Shared fixtures: one thread per test process, generated data made once per spec, one Prefect API per session.

One intra-op thread: on the shared 2-core machines it is several times faster under contention (design notes), and
the subprocesses the tests start inherit ``OMP_NUM_THREADS=1``.
"""
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from pinas.data import demo  # noqa: E402
from pinas.data.images import SearchHoldout  # noqa: E402
from pinas.search.evaluation import EvaluatorConfig  # noqa: E402
from pinas.stages.supernet import SupernetConfig  # noqa: E402

torch.set_num_threads(1)

#: the longest modules, longest first: the first two start at once on different workers (``--dist loadfile
#: --no-loadscope-reorder`` hands out modules in collection order, one to each worker, then the rest to whichever is
#: free), so both workers end together instead of one waiting for a long module that started last
LONGEST_FIRST = ("test_deployment.py", "test_faults.py", "test_paper_profile.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))  # stable: the others keep their order

#: the search holdout of the tests: a tenth of the generated train/ (the demo profile's)
HOLDOUT = SearchHoldout(images=0.1)
#: the few-step demo supernet of the evaluator and search tests, and the contrastive evaluator they score with
SUPERNET_CFG = SupernetConfig(space="demo", epochs=0.5, batch_size=16, queue_size=256, projector_hidden=128,
                              base_lr=1.0, ema_momentum=0.99, num_workers=0, device="cpu", log_every=5,
                              holdout=HOLDOUT)
TINY_EVAL = EvaluatorConfig(proxy="contrastive", batch_size=8, recal_batches=1, heldout_images=8, device="cpu")

GENERATORS = {"imagenet": demo.generate_imagenet, "coco": demo.generate_coco, "ade20k": demo.generate_ade20k,
              "cityscapes": demo.generate_cityscapes}


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """``demo_data(kind, **spec)``: the generated dataset of that kind and :class:`DemoDataSpec`, made once per
    session whichever tests ask for it."""
    base = tmp_path_factory.mktemp("demo-data")

    def make(kind: str = "imagenet", **spec) -> Path:
        spec = demo.DemoDataSpec(**spec)
        key = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
        return GENERATORS[kind](base / key, spec)  # an existing folder with this spec is reused as it is

    return make


@pytest.fixture(scope="session")
def demo_imagenet(demo_data) -> Path:
    """A small ImageNet-format tree (5 shape classes, 72 px) shared by the training tests."""
    return demo_data("imagenet", cls_train_per_class=40, cls_val_per_class=12)


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API (its own database) for every test that talks to Prefect; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def eval_imagenet(demo_data) -> Path:
    """The demo ImageFolder with a large val split (120 train / 120 val images per class): the random-feature
    probe is only a few points above chance and needs the sample to show it."""
    return demo_data("imagenet", cls_val_per_class=120)


@pytest.fixture(scope="session")
def trained_supernet(eval_imagenet, tmp_path_factory) -> Path:
    """A supernet stage folder from a few steps of ``run_supernet`` on the demo data (the blocks' last-BN gammas
    move off zero, so different architectures score differently)."""
    from pinas.stages.supernet import run_supernet

    out = tmp_path_factory.mktemp("trained_supernet")
    run_supernet(SUPERNET_CFG, eval_imagenet / "train", out)
    return out


@pytest.fixture(scope="session")
def random_supernet(tmp_path_factory) -> Path:
    """A freshly initialised supernet-Pi written as a supernet stage folder: every block starts as the identity, so
    the features are random convolutional features of the stem and shortcuts."""
    from pinas.io.stage_dirs import SupernetDir
    from pinas.models.backbone import PiNASBackbone
    from pinas.models.supernet_pi import SupernetPi
    from pinas.space import DEMO

    folder = SupernetDir(tmp_path_factory.mktemp("random_supernet"))
    torch.manual_seed(0)
    model = SupernetPi(PiNASBackbone(DEMO), SUPERNET_CFG.projector_hidden, SUPERNET_CFG.feature_dim,
                       SUPERNET_CFG.queue_size, SUPERNET_CFG.temperature, SUPERNET_CFG.ema_momentum)
    folder.write(model, SUPERNET_CFG.settings(), Path("none"))
    folder.write_manifest([SupernetDir.ARTIFACT, SupernetDir.CONFIG], SUPERNET_CFG.model_dump(mode="json"))
    return folder.path
