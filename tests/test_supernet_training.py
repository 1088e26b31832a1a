"""Supernet-Pi training: objective semantics, exact resume after SIGKILL, and a 2-process gloo run."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HOLDOUT

from pinas.data.images import TrainCrops
from pinas.data.transforms import moco_v2_views
from pinas.engine.steplog import read_step_log
from pinas.io.artifacts import load_tensors, verify_manifest
from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi, TwoPathStudent
from pinas.space import DEMO
from pinas.stages.supernet import SupernetConfig, four_views, pi_step, run_supernet, train_supernet

REPO = Path(__file__).resolve().parents[1]


def small_config(**overrides) -> SupernetConfig:
    base = dict(space="demo", epochs=2, batch_size=16, queue_size=256, projector_hidden=128, feature_dim=32,
                ema_momentum=0.99, base_lr=0.03, base_batch=16, num_workers=0, checkpoint_every=4, log_every=1,
                seed=0, shuffle_bn_splits=2, holdout=HOLDOUT)
    return SupernetConfig(**{**base, **overrides})


def _model_and_step(seed=0):
    torch.manual_seed(seed)
    model = SupernetPi(PiNASBackbone(DEMO), 64, 16, 32, temperature=0.2, momentum=0.9)
    opt = torch.optim.SGD(model.student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, TwoPathStudent(model.student), opt, scaler


def _views(demo_imagenet, n=8):
    views = moco_v2_views(64)
    ds = TrainCrops(demo_imagenet / "train", views.crops, seed=0)
    crops = torch.stack([ds[0, i][0] for i in range(0, len(ds), len(ds) // n)][:n])
    return four_views(views.device, crops)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _candidate_prefixes(arch):
    return {f"backbone.{name}.candidates.{c}." for name, c in
            zip([f"stages.{s}.{b}" for s, d in enumerate(DEMO.depths) for b in range(d)], arch)}


def test_off_path_candidates_and_teacher_blocks_do_not_move(demo_imagenet):
    """Momentum and weight decay leave unsampled candidates bit-identical; the EMA touches only sampled paths."""
    model, student, opt, scaler = _model_and_step()
    x = _views(demo_imagenet)
    rng = np.random.default_rng(0)
    # a first step fills SGD momentum buffers, so the second step would move stale params if grads were zeros
    pi_step(model, student, opt, scaler, x, *DEMO.sample_pair(rng))
    alpha, beta = DEMO.sample_pair(rng)
    s0, t0 = _snapshot(model.student), _snapshot(model.teacher)
    pi_step(model, student, opt, scaler, x, alpha, beta)
    s1, t1 = _snapshot(model.student), _snapshot(model.teacher)
    on = _candidate_prefixes(alpha) | _candidate_prefixes(beta)
    moved_student = moved_teacher = 0
    for key, before in s0.items():
        if ".candidates." not in key or "running_" in key or "num_batches" in key:
            continue
        on_path = any(key.startswith(p) for p in on)
        if on_path:
            moved_student += not torch.equal(before, s1[key])
            moved_teacher += not torch.equal(t0[key], t1[key])
        else:
            assert torch.equal(before, s1[key]), f"student {key} moved though off both paths"
            assert torch.equal(t0[key], t1[key]), f"teacher {key} moved though off both paths"
    assert moved_student > 0 and moved_teacher > 0
    # shared modules move in both
    assert not torch.equal(s0["projector.0.weight"], s1["projector.0.weight"])
    assert not torch.equal(t0["projector.0.weight"], t1["projector.0.weight"])


def test_path_restricted_ema_is_the_exact_formula():
    model, *_ = _model_and_step()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    arch = DEMO.sample(np.random.default_rng(1))
    t0, s = _snapshot(model.teacher), _snapshot(model.student)
    model.momentum_update(arch)
    t1 = _snapshot(model.teacher)
    on_path = {"backbone." + n for n in model.student.backbone.path_parameter_names(arch)}
    for name, _ in model.student.named_parameters():
        expected = 0.9 * t0[name] + 0.1 * s[name] if (name in on_path or name.startswith("projector.")) else t0[name]
        assert torch.allclose(t1[name], expected, atol=1e-6), name
    assert any(n.startswith("backbone.stem") for n in on_path)


def test_queue_holds_the_mean_keys(demo_imagenet):
    model, *_ = _model_and_step()
    k_alpha = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    k_beta = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    model.enqueue(k_alpha, k_beta)
    assert torch.allclose(model.queue[:, :8].T, (k_alpha + k_beta) / 2)
    assert (model.queue[:, :8].norm(dim=0) < 1).all()  # not re-normalised
    assert int(model.queue_ptr) == 8
    model.enqueue(k_alpha, k_beta)
    model.enqueue(k_beta, k_beta)
    model.enqueue(k_alpha, k_alpha)  # wraps around: 32 slots
    assert int(model.queue_ptr) == 0
    assert torch.allclose(model.queue[:, 24:].T, k_alpha)


def test_info_nce_is_cross_entropy_with_the_positive_first():
    from pinas.models.supernet_pi import info_nce
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    k = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(8, 10), dim=0)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.2
    expected = -torch.log_softmax(logits, 1)[:, 0].mean()
    assert torch.allclose(info_nce(q, k, queue, 0.2), expected)


def test_contrastive_loss_falls_and_artifact_is_tensor_only(demo_data, tmp_path):
    """On a small demo set the loss rises while the queue fills with real keys, then falls well below that peak.

    The demo profile's milder views (crop from 35 %, hue 0.1) are used: at 64 px the paper's hue 0.4 leaves too
    little of an image's identity to learn from in 50 steps.
    """
    data = demo_data("imagenet", cls_train_per_class=8, cls_val_per_class=2)
    cfg = small_config(epochs=25, batch_size=18, base_batch=18, queue_size=36, base_lr=0.05, checkpoint_every=1000,
                       crop_min_scale=0.35, hue=0.1)
    manifest = run_supernet(cfg, data / "train", tmp_path / "run")
    losses = [r["loss"] for r in read_step_log(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == manifest["metrics"]["steps"] == 50
    after_queue_filled, last = np.mean(losses[2:12]), np.mean(losses[-10:])
    assert last < after_queue_filled - 0.4, (after_queue_filled, last)
    artifact = load_tensors(tmp_path / "run" / "supernet.pt")
    assert set(artifact) == {"student", "teacher", "queue", "queue_ptr"}
    verify_manifest(tmp_path / "run")


def _train_cli(cfg: SupernetConfig, train_dir: Path, out: Path, extra=()):
    cfg_path = out.parent / f"{out.name}.json"
    cfg_path.write_text(cfg.model_dump_json())
    return [sys.executable, "-m", "pinas.stages.rank", "supernet", "--config", str(cfg_path), "--paths",
            json.dumps({"train_dir": str(train_dir)}), "--out", str(out), *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_same_weights(demo_imagenet, tmp_path, caplog):
    """Only the killed run is a subprocess; the uninterrupted reference and the resumed run train in-process."""
    cfg = small_config(epochs=1, checkpoint_every=3)  # 11 steps (180 images), checkpoints at 3, 6, 9
    train = demo_imagenet / "train"
    train_supernet(cfg, train, tmp_path / "straight")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cli(cfg, train, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((killed / "checkpoints").glob("checkpoint-00000006.pt")):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "supernet.pt").exists()
    steps_logged = [r["step"] for r in read_step_log(killed / "metrics.jsonl")]
    with caplog.at_level(logging.INFO, logger="pinas"):
        train_supernet(cfg, train, killed)
    assert "resuming at step" in caplog.text
    a, b = load_tensors(tmp_path / "straight" / "supernet.pt"), load_tensors(killed / "supernet.pt")
    for part in ("student", "teacher"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert torch.equal(a["queue"], b["queue"])
    # the loss curve has each step once, as if never interrupted
    resumed_steps = [r["step"] for r in read_step_log(killed / "metrics.jsonl")]
    assert resumed_steps == [r["step"] for r in read_step_log(tmp_path / "straight" / "metrics.jsonl")]
    assert len(steps_logged) >= 6




@pytest.mark.slow
def test_two_process_gloo_run_agrees_across_ranks(demo_imagenet, tmp_path):
    """torchrun with 2 CPU processes: same path pairs on both ranks, identical student weights at the end."""
    cfg = small_config(epochs=1, batch_size=8, queue_size=64, checkpoint_every=100)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.model_dump_json())
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER_WITH_STATE)
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(worker), str(cfg_path), str(demo_imagenet / "train"), str(out)],
                   check=True, env=_env(), capture_output=True, timeout=600)
    p0, p1 = (json.loads((out / f"paths-{r}.json").read_text()) for r in (0, 1))
    assert p0 == p1 and len(p0) > 3
    assert any(a != p0[0][1] for _, a, _ in p0)  # paths change from step to step
    s0, s1 = (torch.load(out / f"student-{r}.pt", weights_only=True) for r in (0, 1))
    # parameters agree exactly (DDP averages gradients); BN running statistics are per-rank, as in the paper
    params = [k for k in s0 if "running_" not in k and "num_batches" not in k]
    assert len(params) > 100
    for key in params:
        assert torch.equal(s0[key], s1[key]), key
    assert torch.equal(load_tensors(out / "supernet.pt")["student"]["projector.0.weight"], s0["projector.0.weight"])


WORKER_WITH_STATE = """
import json, sys, torch
from pathlib import Path
import pinas.stages.supernet as st
cfg = st.SupernetConfig.model_validate_json(Path(sys.argv[1]).read_text())
out = Path(sys.argv[3])
paths, models = [], []
original = st.SupernetPi
class Capturing(original):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        models.append(self)
st.SupernetPi = Capturing
st.train_supernet(cfg, Path(sys.argv[2]), out, on_step=lambda s, a, b: paths.append([s, list(a), list(b)]))
rank = torch.distributed.get_rank()
(out / f"paths-{rank}.json").write_text(json.dumps(paths))
torch.save(models[0].student.state_dict(), out / f"student-{rank}.pt")
"""


@pytest.mark.parametrize("objective,steps,drop", [("same_path", 50, 0.4), ("spos", 30, 0.3)])
def test_ablation_objectives_train_and_their_loss_falls(objective, steps, drop, demo_data, tmp_path):
    """The study's ablations: MoCo within one path, and SPOS (cross-entropy on one uniformly drawn path)."""
    data = demo_data("imagenet", cls_train_per_class=8, cls_val_per_class=2)
    cfg = small_config(objective=objective, epochs=steps // 2, batch_size=18, base_batch=18, queue_size=36,
                       base_lr=0.05, checkpoint_every=1000, crop_min_scale=0.35, hue=0.1)
    manifest = run_supernet(cfg, data / "train", tmp_path / "run")
    losses = [r["loss"] for r in read_step_log(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == manifest["metrics"]["steps"] == steps
    start = np.mean(losses[2:12]) if objective == "same_path" else np.mean(losses[:5])  # same_path: queue filled
    assert np.mean(losses[-10:]) < start - drop, (start, losses[-10:])
    artifact = load_tensors(tmp_path / "run" / "supernet.pt")
    assert ("classifier" in artifact) == (objective == "spos")
    assert manifest["config"]["objective"] == objective


def _relabelled(train: Path, out: Path, sizes: list[int]) -> Path:
    """The same images in the same order (so the same batches), cut into classes of ``sizes``: other labels."""
    files = [p for c in sorted(d for d in train.iterdir() if d.is_dir()) for p in sorted(c.iterdir())]
    assert sum(sizes) == len(files)
    i = 0
    for k, size in enumerate(sizes):
        (out / f"class{k}").mkdir(parents=True)
        for p in files[i:i + size]:
            (out / f"class{k}" / f"{i:04d}{p.suffix}").symlink_to(p)
            i += 1
    return out


@pytest.mark.parametrize("objective", ["pi", "same_path", "spos"])
def test_only_spos_reads_the_labels(objective, demo_data, tmp_path):
    """Trained on the same images in the same order under other labels, the label-free objectives end with the same
    weights; SPOS does not."""
    train = demo_data("imagenet", cls_train_per_class=8, cls_val_per_class=2) / "train"
    relabelled = _relabelled(train, tmp_path / "relabelled", [4, 12, 8, 8, 8])
    cfg = small_config(objective=objective, epochs=1, batch_size=18, base_batch=18, queue_size=36)  # 2 steps
    weights = []
    for name, folder in (("a", train), ("b", relabelled)):
        run_supernet(cfg, folder, tmp_path / name)
        weights.append(load_tensors(tmp_path / name / "supernet.pt")["student"])
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same == (objective != "spos")


def _nce(q, k, queue, temperature=0.2):
    """InfoNCE written out: -log softmax of the positive among [positive, queue negatives], mean over images."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / temperature
    return -torch.log_softmax(logits, 1)[:, 0].mean()


def test_the_step_pulls_each_query_towards_the_other_paths_key(demo_imagenet):
    """One pi step's loss, recomputed from the pre-step model: query of view 1 on alpha meets the key of view 4 on
    beta, and query of view 3 on beta meets the key of view 2 on alpha; each key after the EMA step of its path."""
    import copy

    model, student, opt, scaler = _model_and_step()
    model.shuffle_bn_splits = 2
    x = _views(demo_imagenet)
    alpha, beta = DEMO.sample_pair(np.random.default_rng(4))
    reference = copy.deepcopy(model)
    torch.manual_seed(7)  # the shuffle-BN permutations
    loss = pi_step(model, student, opt, scaler, x, alpha, beta)
    torch.manual_seed(7)
    with torch.no_grad():
        q_alpha, q_beta = reference.student(x[0], alpha), reference.student(x[2], beta)
        reference.momentum_update(alpha)
        k_alpha = reference.keys(x[1], alpha)
        reference.momentum_update(beta)
        k_beta = reference.keys(x[3], beta)
    queue = reference.queue
    cross = _nce(q_alpha, k_beta, queue) + _nce(q_beta, k_alpha, queue)
    same = _nce(q_alpha, k_alpha, queue) + _nce(q_beta, k_beta, queue)
    assert float(loss) == pytest.approx(float(cross), rel=1e-5)
    assert float(loss) != pytest.approx(float(same), rel=1e-3)


def test_shuffled_keys_come_back_to_their_own_images():
    """In one process the teacher embeds a shuffled batch in sub-batches (BN over each) and un-shuffles: with BN
    frozen every key is its own image's embedding; in training mode the keys are those of BN over some pairing of
    the images into sub-batches, not over the whole batch."""
    import itertools

    torch.manual_seed(0)
    # float64: BN over 2 images divides by a tiny variance, which magnifies float32 summation order
    model = SupernetPi(PiNASBackbone(DEMO), 32, 16, 32, 0.2, 0.99, shuffle_bn_splits=2).double()
    for m in model.teacher.modules():  # every block matters (bn3 starts at gamma 0)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    arch = DEMO.sample(np.random.default_rng(0))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        model.teacher.eval()
        own = torch.cat([model.teacher(x[i:i + 1], arch) for i in range(4)])
        torch.testing.assert_close(model.keys(x, arch), own, rtol=1e-9, atol=1e-12)
        model.teacher.train()
        keys = model.keys(x, arch)
        whole = model.teacher(x, arch)
        pairings = []
        for first in itertools.combinations(range(4), 2):
            second = tuple(i for i in range(4) if i not in first)
            k = torch.empty_like(keys)
            k[list(first)], k[list(second)] = model.teacher(x[list(first)], arch), model.teacher(x[list(second)], arch)
            pairings.append(k)
    assert min((keys - k).abs().max().item() for k in pairings) < 1e-9
    assert (keys - whole).abs().max().item() > 0.1
