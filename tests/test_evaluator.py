"""Candidate evaluation: precise-BN recalibration, the proxies, the evaluation cache and the linear-probe stage.

Real torch on the generated demo data, no mocks. Two supernets are used (session fixtures in ``conftest.py``):
* ``trained_supernet``: ``run_supernet`` for a few steps on the demo data (the blocks' last-BN gammas move off zero,
  so different architectures score differently);
* ``random_supernet``: a freshly initialised supernet-Pi written as a supernet stage folder (every block starts as
  the identity, so the features are random convolutional features of the stem and shortcuts), for the probe.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HOLDOUT, TINY_EVAL
from scipy import stats

from pinas.data.images import ImageFolderDataset, TrainCrops
from pinas.data.transforms import CenterCrop, moco_v2_views
from pinas.io.artifacts import ArtifactError, load_tensors
from pinas.io.stage_dirs import ProbeDir, SupernetDir
from pinas.models.backbone import PiNASBackbone
from pinas.search.evaluation import EvaluatorConfig, build_evaluator
from pinas.search.recalibration import FixedBatches, path_batchnorms, precise_bn
from pinas.space import DEMO
from pinas.stages.linear_probe import LinearProbeConfig, run_linear_probe, train_probe
from pinas.stages.search import search_images


@pytest.fixture(scope="session")
def demo_imagenet(eval_imagenet):
    return eval_imagenet


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _batches(seed: int, n: int, size: int = 64, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g) * 2 + 0.5, torch.zeros(batch)) for _ in range(n)]


def test_precise_bn_changes_only_the_path_statistics_and_restores_them():
    torch.manual_seed(0)
    backbone = PiNASBackbone(DEMO).train()
    arch = DEMO.sample(np.random.default_rng(1))
    batches = _batches(0, 3)
    with torch.no_grad():  # give every BN non-default statistics first, like a trained supernet
        for x, _ in _batches(1, 2):
            backbone(x, arch)
            backbone(x, DEMO.sample(np.random.default_rng(2)))
    before = _snapshot(backbone)
    path_buffers = {f"{name}.{b}" for name, m in backbone.named_modules() if m in path_batchnorms(backbone, arch)
                    for b in ("running_mean", "running_var", "num_batches_tracked")}
    momenta = {name: m.momentum for name, m in backbone.named_modules() if hasattr(m, "momentum")}

    with precise_bn([(backbone, arch)], batches):
        assert not backbone.training
        inside = _snapshot(backbone)
        for key, value in inside.items():
            if key in path_buffers:
                assert not torch.equal(value, before[key]) or key.endswith("num_batches_tracked"), key
            else:
                assert torch.equal(value, before[key]), f"{key} changed but is not a path BN buffer"
        # the stem's first BN now holds exactly the mean of the per-batch statistics of its input
        conv, bn = backbone.stem[0], backbone.stem[1]
        with torch.no_grad():
            feats = [conv(x) for x, _ in batches]
        means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
        variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
        torch.testing.assert_close(bn.running_mean, means, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, variances, rtol=1e-4, atol=1e-5)

    after = _snapshot(backbone)
    assert all(torch.equal(after[k], before[k]) for k in before), "supernet state differs after recalibration"
    assert backbone.training
    assert {name: m.momentum for name, m in backbone.named_modules() if hasattr(m, "momentum")} == momenta


def test_contrastive_proxy_is_deterministic_cached_and_leaves_the_supernet_unchanged(trained_supernet,
                                                                                       demo_imagenet):
    model = SupernetDir(trained_supernet).load()
    before = _snapshot(model)
    rng = np.random.default_rng(0)
    a, b = DEMO.sample(rng), DEMO.sample(rng)
    evaluator = build_evaluator(TINY_EVAL, model, *search_images(HOLDOUT, demo_imagenet / "train"))
    first = evaluator(a)
    assert evaluator(DEMO.format(a)) is first and evaluator.hits == 1  # cache hit, any spelling of the arch
    score_b = evaluator(b)
    assert first.proxy == "contrastive" and first.score == -first.loss and np.isfinite(first.loss)
    assert score_b.score != first.score, "different paths of a trained supernet should score differently"
    # a fresh evaluator (no cache), evaluating in another order, gives bit-identical scores
    fresh = build_evaluator(TINY_EVAL, model, *search_images(HOLDOUT, demo_imagenet / "train"))
    assert fresh(b) == score_b and fresh(a) == first
    after = _snapshot(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_bn_gamma_proxy_sums_last_bn_gammas(trained_supernet):
    # BN-NAS: an architecture's score is the sum over its layers of the mean |gamma| of the chosen candidate's last
    # BN. Plant known gammas (by state-dict name: stages.<stage>.<block>.candidates.<choice>.bn3.weight, layers
    # numbered in order) and check the score against the planted sum.
    model = SupernetDir(trained_supernet).load()
    planted = np.random.default_rng(0).uniform(0.1, 2.0, (DEMO.num_layers, DEMO.num_choices))
    names = sorted({k.rsplit(".candidates.", 1)[0] for k in model.student.backbone.state_dict()
                    if k.endswith(".bn3.weight")}, key=lambda k: tuple(int(p) for p in k.split(".")[1:3]))
    assert len(names) == DEMO.num_layers
    with torch.no_grad():
        params = dict(model.student.backbone.named_parameters())
        for layer, name in enumerate(names):
            for choice in range(DEMO.num_choices):
                gamma = params[f"{name}.candidates.{choice}.bn3.weight"]
                gamma.copy_(torch.full_like(gamma, planted[layer, choice]) * torch.tensor([1.0, -1.0]).repeat(
                    gamma.numel() // 2))  # signs mixed: the score takes magnitudes
    evaluator = build_evaluator(EvaluatorConfig(proxy="bn_gamma"), model, None, None)
    for seed in range(3):
        arch = DEMO.sample(np.random.default_rng(seed))
        assert evaluator(arch).score == pytest.approx(sum(planted[i, c] for i, c in enumerate(arch)), rel=1e-6)


def test_fixed_batches_are_identical_with_and_without_the_memory_cache(demo_imagenet):
    views = moco_v2_views(64)
    crops = TrainCrops(demo_imagenet / "val", views.crops, seed=5)
    idx = [[0, 1, 2, 3], [40, 41, 42, 43]]
    cpu = torch.device("cpu")
    cached = FixedBatches(crops, idx, views.device, cpu, seed=5, cache_bytes=1 << 30)
    uncached = FixedBatches(crops, idx, views.device, cpu, seed=5, cache_bytes=0)
    for _ in range(2):
        for (x1, y1), (x2, y2) in zip(cached, uncached):
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (16, 3, 64, 64)
    center = list(FixedBatches(ImageFolderDataset(demo_imagenet / "val", 73), idx, CenterCrop(64), cpu))
    assert center[0][0].shape == (4, 3, 64, 64)


PROBE_CFG = LinearProbeConfig(epochs=5, batch_size=32, base_lr=0.1, base_batch=32, crop_min_scale=0.5, num_workers=0,
                              device="cpu", log_every=20, checkpoint_every=50, val_archs=1, val_recal_batches=8,
                              holdout=HOLDOUT)


def test_linear_probe_beats_chance_on_the_demo_data(random_supernet, demo_imagenet, tmp_path):
    manifest = run_linear_probe(PROBE_CFG, random_supernet, demo_imagenet / "train", tmp_path / "probe",
                                val_dir=demo_imagenet / "val")
    top1 = manifest["metrics"]["val_top1_mean"]
    # 5 balanced classes, 600 val images: chance is 20 %; one-sided binomial test against it (about 25 % is
    # what random convolutional features give here, p ~ 0.002)
    correct = round(top1 * 600 / 100)
    assert stats.binomtest(correct, 600, 0.2, alternative="greater").pvalue < 0.01, manifest["metrics"]
    assert set(manifest["files"]) == {"probe.pt", "probe.json", "metrics.jsonl"}
    assert load_tensors(tmp_path / "probe" / "probe.pt")["weight"].shape == (5, DEMO.out_channels[-1])
    # the probe proxy of the search scores with this head: top-1 on val after recalibration, deterministic
    model = SupernetDir(random_supernet).load()
    cfg = EvaluatorConfig(proxy="linear_probe", batch_size=32, recal_batches=2, device="cpu")
    evaluator = build_evaluator(cfg, model, *search_images(HOLDOUT, demo_imagenet / "train"),
                                ProbeDir(tmp_path / "probe").load())
    result = evaluator(DEMO.default_arch())
    assert result.score == result.acc and 0 <= result.acc <= 100 and result.loss > 0


def test_linear_probe_resumes_exactly(random_supernet, demo_imagenet, tmp_path):
    cfg = PROBE_CFG.model_copy(update={"epochs": 0.6, "checkpoint_every": 3, "log_every": 2})
    train = demo_imagenet / "train"
    train_probe(cfg, random_supernet, train, tmp_path / "whole")
    assert train_probe(cfg, random_supernet, train, tmp_path / "split", stop_after=5) == {"stopped_at": 5}
    assert not (tmp_path / "split" / "probe.pt").exists()
    train_probe(cfg, random_supernet, train, tmp_path / "split")
    whole, split = load_tensors(tmp_path / "whole" / "probe.pt"), load_tensors(tmp_path / "split" / "probe.pt")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert (tmp_path / "whole" / "metrics.jsonl").read_text() .count("\n") == \
        (tmp_path / "split" / "metrics.jsonl").read_text().count("\n")


def test_stage_inputs_are_validated_before_any_work(random_supernet, demo_imagenet, tmp_path):
    with pytest.raises(ArtifactError, match="supernet_dir .*missing"):
        run_linear_probe(PROBE_CFG, tmp_path / "missing", demo_imagenet / "train", tmp_path / "out")
    with pytest.raises(ValueError, match="nowhere"):
        run_linear_probe(PROBE_CFG, random_supernet, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="extra"):
        LinearProbeConfig(unknown_key=1)


# ------------------------------------------------------------------------------ contrastive proxy: no bias
def _planted_embeddings(space, planted: np.ndarray, unit: float, queue_size: int):
    """An exact model of per-layer quality: the embedding of a path is a fixed direction plus, for every layer, a
    direction of its own for the chosen block, of squared length ``unit * planted[layer, choice]`` (the block's
    badness). Two paths that differ at every layer (a candidate and its references) share only the fixed direction,
    so their cosine is 1 / sqrt((1 + S_a) (1 + S_r)), S the summed badness: noisier paths agree less. The queue is
    orthogonal to every embedding, so each negative contributes exp(0)."""
    layers, choices = planted.shape
    eye = torch.eye(1 + layers * choices + queue_size, dtype=torch.float64)

    def embed(path):
        e = eye[0] + sum(np.sqrt(unit * planted[i, c]) * eye[1 + i * choices + c] for i, c in enumerate(path))
        return torch.nn.functional.normalize(e, dim=0)[None].repeat(2, 1)  # two identical images

    return embed, eye[:, 1 + layers * choices:]


@pytest.mark.parametrize("seed", [0, 1])
def test_contrastive_references_keep_the_planted_order_of_every_layer(seed):
    """With planted per-layer qualities, varying one layer of a base architecture at a time, the proxy's order of
    the four choices at every layer is the planted order. References that are fixed rotations of the candidate
    (two offsets drawn once) credit a choice with the quality of its rotated twins and get most layers wrong."""
    from pinas.search.proxies import ReferencePaths, cross_path_losses
    from pinas.space import RESNEST50

    rng = np.random.default_rng(seed)
    planted = np.stack([rng.permutation(RESNEST50.num_choices) for _ in range(RESNEST50.num_layers)])
    embed, queue = _planted_embeddings(RESNEST50, planted, unit=0.02, queue_size=16)
    references = ReferencePaths(RESNEST50, squares=1, seed=seed)
    base = RESNEST50.sample(rng)
    variants = {(layer, c): base[:layer] + (c,) + base[layer + 1:]
                for layer in range(RESNEST50.num_layers) for c in range(RESNEST50.num_choices)}
    refs = {a: references(a) for a in variants.values()}
    paths = set(refs) | {r for rs in refs.values() for r in rs}
    q = {(p, v): embed(p) for p in paths for v in (0, 2)}
    k = {(p, v): embed(p) for p in paths for v in (1, 3)}
    loss = dict(zip(refs, cross_path_losses(refs, q, k, queue, 0.2)))
    for layer in range(RESNEST50.num_layers):
        by_proxy = sorted(range(RESNEST50.num_choices), key=lambda c: loss[variants[layer, c]])
        assert by_proxy == list(np.argsort(planted[layer])), f"layer {layer + 1}"
    # every reference differs from its candidate at every layer, and a square covers each other choice once
    for arch, rs in refs.items():
        for layer in range(RESNEST50.num_layers):
            assert sorted(r[layer] for r in rs) == sorted(set(range(4)) - {arch[layer]})


def test_contrastive_loss_pairs_each_query_with_the_other_paths_key():
    """cross_path_losses against the pairing written out: q(candidate, view 1) with k(reference, view 4) and
    q(reference, view 3) with k(candidate, view 2), negatives from the queue, averaged over the references."""
    from pinas.search.proxies import cross_path_losses

    g = torch.Generator().manual_seed(0)

    def unit(*shape, dim=1):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=dim)

    arch, refs = (0, 1), [(1, 2), (2, 3)]
    q = {(p, v): unit(6, 8) for p in [arch, *refs] for v in range(4)}
    k = {(p, v): unit(6, 8) for p in [arch, *refs] for v in range(4)}
    queue = unit(8, 10, dim=0)

    def nce(qs, ks):  # -log softmax of the positive among [positive, queue], mean over images
        logits = torch.cat([(qs * ks).sum(1, keepdim=True), qs @ queue], 1) / 0.2
        return float(-torch.log_softmax(logits, 1)[:, 0].mean())

    expected = np.mean([nce(q[arch, 0], k[r, 3]) + nce(q[r, 2], k[arch, 1]) for r in refs])
    (got,) = cross_path_losses({arch: refs}, q, k, queue, 0.2)
    assert got == pytest.approx(expected, rel=1e-5)
    same_path = np.mean([nce(q[arch, 0], k[arch, 1]) + nce(q[r, 2], k[r, 3]) for r in refs])
    assert got != pytest.approx(same_path, rel=1e-3)
