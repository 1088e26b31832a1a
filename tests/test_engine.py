"""The training engine on a small regression problem: exact resume, settings-checked checkpoints, step logs and
progress reports that do not depend on interruptions or speed."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pinas.engine.checkpoint import SettingsMismatch
from pinas.engine.loop import LoggerHook, TrainLoop, default_hooks
from pinas.engine.sampler import EpochBatchSampler
from pinas.engine.steplog import TENSORBOARD_DIR, StepLog, read_step_log

SETTINGS = {"lr": 0.1, "seed": 0, "nested": {"width": 4}}


def make_loop(out, settings=SETTINGS, progress=None, hooks=None, evaluate=None):
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 4), torch.tensor([1.0, -2.0, 0.5, 3.0])
    y = x @ w_true
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9)
    sampler = EpochBatchSampler(len(x), 8, seed=0)
    rng = np.random.default_rng(0)

    def step(i, idx):
        noise = torch.randn(len(idx)) * 0.01 + rng.normal() * 0.01  # both RNG streams feed the result
        loss = ((model(x[idx]).squeeze(1) - y[idx] - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "images": len(idx), "lr": settings["lr"]}

    hooks = hooks if hooks is not None else default_hooks(out, log_every=3, checkpoint_every=4, progress=progress,
                                                          evaluate=evaluate, eval_every=1)
    loop = TrainLoop("toy", out, 3 * sampler.batches_per_epoch, sampler.batches_per_epoch, step,
                     lambda start: sampler.iter_from(start), {"model": model, "optimizer": optimizer}, settings,
                     hooks=hooks, np_rng=rng)
    return loop, model


def _eval(loop):
    return {"step": loop.step, "epoch": loop.epoch, "score": float(loop.state["model"].weight.sum())}


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    straight, model_a = make_loop(tmp_path / "a", evaluate=_eval)
    assert straight.run() is None
    split, _ = make_loop(tmp_path / "b", evaluate=_eval)
    assert split.run(stop_after=5) == 5
    assert split.run(stop_after=7) == 12  # resumed at 5, stopped again after an epoch-end evaluation
    resumed, model_b = make_loop(tmp_path / "b", evaluate=_eval)
    assert resumed.run() is None and resumed.start == 12
    assert torch.equal(model_a.weight, model_b.weight) and torch.equal(model_a.bias, model_b.bias)
    assert resumed.history == straight.history and len(straight.history) == 3  # one evaluation per epoch
    # the step log is the same, record for record (only the measured speed differs), as if never interrupted
    logs = [[{k: v for k, v in r.items() if k != "images_per_s"}
             for r in read_step_log(tmp_path / run / "metrics.jsonl")] for run in ("a", "b")]
    assert logs[0] == logs[1]
    assert [r["step"] for r in logs[0] if "loss" in r] == [3, 6, 9, 12, 15, 18, 21, 24]


def test_a_checkpoint_of_other_settings_is_refused_naming_the_fields(tmp_path):
    loop, _ = make_loop(tmp_path)
    assert loop.run(stop_after=4) == 4
    other = {**SETTINGS, "lr": 0.2, "nested": {"width": 8}}
    with pytest.raises(SettingsMismatch) as err:
        make_loop(tmp_path, settings=other)[0].run()
    assert "lr: 0.1 -> 0.2" in str(err.value) and "nested.width: 4 -> 8" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_progress_is_reported_by_time_whatever_log_every(tmp_path):
    reports = []
    hooks = [LoggerHook(tmp_path / "metrics.jsonl", log_every=1000, progress=lambda d, t, r: reports.append(d),
                        max_interval_s=0.0)]
    loop, _ = make_loop(tmp_path, hooks=hooks)
    loop.run()
    assert reports == list(range(1, 25))  # every step, as each one is "over the interval"
    assert [r["step"] for r in read_step_log(tmp_path / "metrics.jsonl")] == [24]  # the file keeps its cadence


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a TensorBoard log folder, read with TensorBoard's own reader: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_curves_continue_after_a_kill_without_duplicates(tmp_path):
    log = tmp_path / "metrics.jsonl"
    first = StepLog(log)
    for step in (3, 6, 9):
        first.write({"step": step, "loss": float(step)})
    first.events.flush()  # killed here: step 9 was logged after the last checkpoint (step 6)
    time.sleep(1.1)  # a restart comes at a later second: event files are named, and read in order, by their start
    resumed = StepLog(log, resume_step=6)
    for step in (9, 12):
        resumed.write({"step": step, "loss": 100.0 + step})
    resumed.close()
    assert tensorboard_scalars(tmp_path / TENSORBOARD_DIR)["loss"] == [(3, 3.0), (6, 6.0), (9, 109.0), (12, 112.0)]
    assert [r["step"] for r in read_step_log(log)] == [3, 6, 9, 12]


def test_a_resumed_training_writes_the_same_tensorboard_curves_as_an_uninterrupted_one(tmp_path):
    straight, _ = make_loop(tmp_path / "a", evaluate=_eval)
    straight.run()
    split, _ = make_loop(tmp_path / "b", evaluate=_eval)
    split.run(stop_after=5)
    time.sleep(1.1)  # as after a kill: the restart's event file is named at a later second
    make_loop(tmp_path / "b", evaluate=_eval)[0].run()
    a, b = (tensorboard_scalars(tmp_path / run / TENSORBOARD_DIR) for run in ("a", "b"))
    assert {"loss", "lr", "score"} <= set(a) and a["loss"] == b["loss"] and a["score"] == b["score"]
    assert [step for step, _ in a["loss"]] == [3, 6, 9, 12, 15, 18, 21, 24]
