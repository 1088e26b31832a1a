"""Search space: presets, architecture strings, and the seeded sampling operators."""
import numpy as np
import pytest

from pinas.space import (
    DEMO,
    PINAS_CLS_ARCH,
    PINAS_TRANS_ARCH,
    RESNEST50,
    RESNEST50_ARCH,
    ArchError,
    Candidate,
    SearchSpace,
    get_space,
)


def test_resnest50_preset_matches_the_paper():
    assert RESNEST50.depths == (3, 4, 6, 3) and RESNEST50.num_layers == 16
    assert RESNEST50.size == 4 ** 16 == 4_294_967_296
    assert [c.name for c in RESNEST50.candidates] == ["1s1x64d", "2s1x64d", "1s2x42d", "2s2x40d"]
    # group widths per stage from the method doc's table
    assert [RESNEST50.candidates[2].group_width(p) for p in RESNEST50.planes] == [84, 168, 336, 672]
    assert [RESNEST50.candidates[3].attention_width(p, 32) for p in RESNEST50.planes] == [40, 80, 160, 320]
    assert RESNEST50_ARCH == (1,) * 16
    assert RESNEST50.format(PINAS_CLS_ARCH) == "301-3231-203213-032"
    assert RESNEST50.format(PINAS_TRANS_ARCH) == "333-3113-330011-021"


def test_demo_preset_is_the_same_design_scaled_down():
    assert DEMO.candidates == RESNEST50.candidates
    assert DEMO.num_layers < RESNEST50.num_layers and DEMO.input_size < RESNEST50.input_size
    assert max(DEMO.planes) < max(RESNEST50.planes)
    assert get_space("demo") == DEMO
    with pytest.raises(ValueError, match="unknown search space 'tiny'"):
        get_space("tiny")


@pytest.mark.parametrize("space", [RESNEST50, DEMO], ids=lambda s: s.name)
def test_string_form_round_trips(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        text = space.format(arch)
        assert space.parse(text) == arch
        assert space.parse(text.replace("-", "")) == arch
        assert space.parse(str(list(arch))) == arch
        assert space.parse(list(arch)) == arch


def test_named_architectures_parse():
    assert RESNEST50.parse("pinas-cls") == PINAS_CLS_ARCH
    assert RESNEST50.parse(" [3,3,3, 3,1,1,3, 3,3,0,0,1,1, 0,2,1] ") == PINAS_TRANS_ARCH


@pytest.mark.parametrize("text, message", [
    ("", "empty architecture"),
    ("301-3231-203213", "3 stage groups, space 'resnest50' has 4"),
    ("301-3231-203213-03", "stage 4 has 2 digits, expected 3"),
    ("30132312032130", "has 14 layers, space 'resnest50' has 16"),
    ("301-3231-203213-0x2", "character 'x'"),
    ("301-3231-203293-032", r"layer 12 \(stage 3, block 5\) has choice 9, valid choices are 0..3"),
    ("[3,0,1,3,2,3,1,2,0,3,2,1,3,0,3,a]", "'a' is not a candidate index"),
    ("301--3231-203213-032", "empty stage group"),
])
def test_bad_strings_are_rejected_with_a_reason(text, message):
    with pytest.raises(ArchError, match=message):
        RESNEST50.parse(text)


def test_validate_rejects_non_integers_and_out_of_range():
    with pytest.raises(ArchError, match=r"layer 1 \(stage 1, block 1\) is 1.5"):
        DEMO.validate([1.5] + [0] * 7)
    with pytest.raises(ArchError, match="has choice -1"):
        DEMO.validate([0] * 7 + [-1])


def test_sampling_is_seeded_and_inside_the_space():
    a = [DEMO.sample(np.random.default_rng(7)) for _ in range(3)]
    b = [DEMO.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(1)
    seen = {DEMO.sample(rng) for _ in range(200)}
    assert len(seen) > 190  # uniform over 65,536: almost no repeats
    for arch in seen:
        DEMO.validate(arch)


def test_paired_paths_differ_at_every_layer_and_cover_all_ordered_pairs():
    rng = np.random.default_rng(0)
    pairs = set()
    for _ in range(300):
        alpha, beta = RESNEST50.sample_pair(rng)
        assert all(a != b for a, b in zip(alpha, beta))
        pairs.update(zip(alpha, beta))
    assert pairs == {(a, b) for a in range(4) for b in range(4) if a != b}
    assert RESNEST50.sample_pair(np.random.default_rng(3)) == RESNEST50.sample_pair(np.random.default_rng(3))


def test_mutation_and_crossover_are_seeded_and_stay_in_the_space():
    rng = np.random.default_rng(0)
    parent = RESNEST50.sample(rng)
    assert RESNEST50.mutate(parent, np.random.default_rng(5), 0.0) == parent
    everywhere = RESNEST50.mutate(parent, np.random.default_rng(5), 1.0)
    assert all(a != b for a, b in zip(parent, everywhere))
    m1 = RESNEST50.mutate(parent, np.random.default_rng(9), 0.1)
    assert m1 == RESNEST50.mutate(parent, np.random.default_rng(9), 0.1)
    changed = [sum(a != b for a, b in zip(parent, RESNEST50.mutate(parent, rng, 0.1))) for _ in range(400)]
    assert 1.2 < np.mean(changed) < 2.0  # 16 layers x 0.1
    other = RESNEST50.sample(rng)
    child = RESNEST50.crossover(parent, other, np.random.default_rng(2))
    assert child == RESNEST50.crossover(parent, other, np.random.default_rng(2))
    assert all(c in (a, b) for a, b, c in zip(parent, other, child))
    RESNEST50.validate(child)
    one = RESNEST50.mutate_one(parent, rng)
    assert sum(a != b for a, b in zip(parent, one)) == 1
    neighbours = RESNEST50.neighbours(parent)
    assert len(neighbours) == len(set(neighbours)) == 16 * 3
    assert all(sum(a != b for a, b in zip(parent, n)) == 1 for n in neighbours)


def test_space_rejects_candidates_that_do_not_fit_the_widths():
    with pytest.raises(ValueError, match="does not fit planes=8"):
        SearchSpace(name="bad", depths=(1,), planes=(8,), candidates=(Candidate(2, 2, 40),))
