"""Cost model: parameter and MAC counts against the method doc and against torch's own counter."""
import numpy as np
import pytest

from pinas.models.backbone import Classifier, build_subnet
from pinas.models.cost import CostModel, count_with_torch
from pinas.space import DEMO, PINAS_CLS_ARCH, PINAS_TRANS_ARCH, RESNEST50, RESNEST50_ARCH

# (arch, params in M, MACs in G) from the method doc, section 1.4 / appendix A
PAPER_TABLE = [
    (RESNEST50_ARCH, 27.48, 5.371),
    (PINAS_CLS_ARCH, 27.05, 5.332),
    (PINAS_TRANS_ARCH, 27.04, 5.254),
    ((0,) * 16, 26.22, 5.370),
    ((2,) * 16, 27.49, 5.519),
    ((3,) * 16, 26.94, 5.178),
]


@pytest.fixture(scope="module")
def resnest50_costs():
    return CostModel(RESNEST50, 224, num_classes=1000)


@pytest.mark.parametrize("arch, params_m, gmacs", PAPER_TABLE)
def test_counts_match_the_method_doc(resnest50_costs, arch, params_m, gmacs):
    cost = resnest50_costs(arch)
    assert abs(cost.params_m - params_m) <= 0.02
    assert abs(cost.gmacs - gmacs) / gmacs <= 0.02


def test_space_extremes_match_the_method_doc(resnest50_costs):
    low, high = resnest50_costs.extremes()
    assert abs(low.gmacs - 5.173) < 0.005 and abs(high.gmacs - 5.567) < 0.005


@pytest.mark.parametrize("space, size", [(DEMO, 64), (RESNEST50, 224)], ids=["demo", "resnest50"])
def test_table_equals_a_full_torch_count(space, size):
    table = CostModel(space, size, num_classes=10)
    rng = np.random.default_rng(0)
    for _ in range(2):
        arch = space.sample(rng)
        assert table(arch) == count_with_torch(Classifier(build_subnet(space, arch), 10), size)


def test_cost_scales_with_input_size():
    assert CostModel(DEMO, 128)(DEMO.default_arch()).macs > 3.5 * CostModel(DEMO, 64)(DEMO.default_arch()).macs
