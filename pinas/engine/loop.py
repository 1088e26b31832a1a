"""The one resumable training loop of pinas, with MMEngine-style hooks for logging, evaluation and checkpoints.

Every training stage (supernet-Pi, linear probe, retrain) is a :class:`TrainLoop`: the stage gives it a step
function ``step_fn(step, batch) -> outputs``, a batch stream that can start at any step (see
:class:`~pinas.engine.sampler.EpochBatchSampler`), the objects whose ``state_dict`` make up a checkpoint and the
settings the weights depend on. The loop owns what must not drift between stages:

* resume: the newest readable checkpoint is loaded, refused when it was made with other settings (the differing
  fields are named), and every state, the RNGs of every rank, the step, the evaluation history and the wall time
  are restored, so the run continues exactly where the checkpoint left it;
* ``stop_after``: stop (checkpointed) after that many steps of this call, an interruption on purpose;
* the hooks, called in ``priority`` order: :class:`EvalHook` (evaluation records), :class:`LoggerHook` (step log,
  log lines, progress callback, at least every ``max_interval_s``), :class:`CheckpointHook` (every N steps and at
  the end).

Outputs of ``step_fn`` are a dict: ``images`` (images in the step over all ranks), ``lr`` (the step's lr) and any
number of per-step means (``loss``, ``train_top1``...), which the logger averages over its window, weighted by
``images``. Values may stay tensors on the device: they are only read when a line is logged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinas.engine.checkpoint import Checkpointer, check_same_settings, restore_rng, rng_state
from pinas.engine.distributed import SINGLE_PROCESS, DistInfo, gather_objects
from pinas.engine.steplog import StepLog

log = logging.getLogger("pinas")
#: ``progress(done, total, record)``: how a stage reports its loop (the flow turns it into a Prefect progress bar)
ProgressFn = Callable[[int, int, dict], None]
StepFn = Callable[[int, Any], dict[str, Any]]


class Hook:
    """Called by :class:`TrainLoop`; lower ``priority`` runs first (evaluation, then logging, then saving)."""

    priority = 50

    def before_run(self, loop: TrainLoop) -> None: ...

    def after_step(self, loop: TrainLoop, outputs: dict[str, Any]) -> None: ...

    def after_eval(self, loop: TrainLoop, record: dict[str, Any]) -> None: ...

    def after_run(self, loop: TrainLoop) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What this hook must carry across a resume (kept in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainLoop:
    """Run ``step_fn`` from the last checkpoint (or step 0) to ``total_steps``; see the module docstring."""

    def __init__(self, name: str, out_dir: str | Path, total_steps: int, steps_per_epoch: int, step_fn: StepFn,
                 batches: Callable[[int], Iterable[Any]], state: dict[str, Any], settings: dict[str, Any],
                 hooks: Sequence[Hook] = (), info: DistInfo = SINGLE_PROCESS, np_rng: np.random.Generator | None = None,
                 device: torch.device | str = "cpu", description: str = ""):
        self.name, self.out_dir = name, Path(out_dir)
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        reserved = set(state) & {"rng", "step", "history", "wall_s", "settings", "hooks"}
        if reserved:
            raise ValueError(f"state names {sorted(reserved)} are reserved for the loop's own checkpoint entries")
        self.step_fn, self.batches, self.state, self.settings = step_fn, batches, state, settings
        self.hooks = sorted(hooks, key=lambda h: h.priority)
        self.info, self.np_rng, self.device, self.description = info, np_rng, device, description
        self.checkpointer = Checkpointer(self.out_dir / "checkpoints")
        self.start = self.step = 0  # the step this call started from / the steps done so far
        self.history: list[dict[str, Any]] = []  # evaluation records, kept in every checkpoint
        self._wall_before, self._t0 = 0.0, time.perf_counter()

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def wall_s(self) -> float:
        """Training wall time over all calls (earlier, interrupted ones included)."""
        ran = self.step > self.start
        return self._wall_before + (time.perf_counter() - self._t0 if ran else 0.0)

    # ------------------------------------------------------------------------------------------ checkpoints
    def resume(self) -> int:
        """Load the newest readable checkpoint made with the same settings; returns its step (0 if none)."""
        ckpt = self.checkpointer.load_latest(map_location=self.device)
        if ckpt is None:
            return 0
        check_same_settings(ckpt["settings"], self.settings, self.out_dir, f"{self.name} checkpoint")
        for key, obj in self.state.items():
            obj.load_state_dict(ckpt[key])
        rngs = ckpt["rng"]
        if len(rngs) == self.info.world_size:
            restore_rng(rngs[self.info.rank], self.np_rng)
        else:
            log.warning("checkpoint has RNG states for %d ranks, running %d: streams re-seeded", len(rngs),
                        self.info.world_size)
        self.history, self._wall_before = list(ckpt["history"]), float(ckpt["wall_s"])
        for hook in self.hooks:
            hook.load_state_dict(ckpt["hooks"].get(type(hook).__name__, {}))
        return int(ckpt["step"])

    def save(self) -> None:
        """Checkpoint the current step (a collective under torchrun: every rank calls it; rank 0 writes)."""
        rngs = gather_objects(rng_state(self.np_rng), self.info)
        if self.info.is_main:
            self.checkpointer.save({**{k: obj.state_dict() for k, obj in self.state.items()}, "rng": rngs,
                                    "step": self.step, "history": self.history, "wall_s": self.wall_s,
                                    "settings": self.settings,
                                    "hooks": {type(h).__name__: h.state_dict() for h in self.hooks}}, self.step)

    # ---------------------------------------------------------------------------------------------- running
    def call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def record_eval(self, record: dict[str, Any]) -> None:
        """Keep an evaluation record (it goes into every later checkpoint) and hand it to the hooks."""
        self.history.append(record)
        self.call("after_eval", record)

    def run(self, stop_after: int | None = None) -> int | None:
        """Train to the end (returns None), or stop checkpointed after ``stop_after`` steps (returns the step)."""
        self.start = self.step = self.resume()
        self._t0 = time.perf_counter()
        if self.info.is_main:
            log.info("%s: %s%s", self.name, self.description,
                     f", resuming at step {self.start}" if self.start else "")
        self.call("before_run")
        batches = iter(self.batches(self.start))
        for step in range(self.start, self.total_steps):
            if stop_after is not None and step - self.start >= stop_after:
                self.save()
                return step
            outputs = self.step_fn(step, next(batches))
            self.step = step + 1
            self.call("after_step", outputs)
        self.call("after_run")
        return None


class EvalHook(Hook):
    """``evaluate(loop) -> record`` every ``every_epochs`` epochs (0: only at the end) and after the last step."""

    priority = 10

    def __init__(self, evaluate: Callable[[TrainLoop], dict[str, Any]], every_epochs: int):
        self.evaluate, self.every_epochs = evaluate, every_epochs

    def after_step(self, loop: TrainLoop, outputs: dict[str, Any]) -> None:
        epoch_end = loop.step % loop.steps_per_epoch == 0
        due = epoch_end and self.every_epochs and (loop.step // loop.steps_per_epoch) % self.every_epochs == 0
        if loop.step == loop.total_steps or due:
            loop.record_eval(self.evaluate(loop))


class LoggerHook(Hook):
    """Step log (``metrics.jsonl``), log lines and the progress callback, on rank 0.

    The step log gets a record every ``log_every`` steps and at the last step (the window's means), so its content
    does not depend on when a run was interrupted or how fast it ran. Log lines and progress reports come with every
    record, at the first step of a call, and whenever ``max_interval_s`` passed since the last report, so a slow loop
    still shows life however large ``log_every`` is.
    """

    priority = 50

    def __init__(self, path: Path, log_every: int, progress: ProgressFn | None = None, max_interval_s: float = 10.0):
        self.path, self.log_every, self.progress, self.max_interval_s = path, log_every, progress, max_interval_s
        self.steplog: StepLog | None = None
        self._timed, self._reported = 0, time.perf_counter()
        self._reset()

    def before_run(self, loop: TrainLoop) -> None:
        if loop.info.is_main:
            self.steplog = StepLog(self.path, loop.start)
        self._timed, self._reported = 0, time.perf_counter()

    def _reset(self) -> None:
        self._sums: dict[str, Any] = {}
        self._images, self._lr = 0, None

    def state_dict(self) -> dict[str, Any]:
        """The open window, so a resumed run logs the same means as one never interrupted."""
        return {"sums": {k: float(v) for k, v in self._sums.items()}, "images": self._images, "lr": self._lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset()
        if state:
            self._sums, self._images, self._lr = dict(state["sums"]), int(state["images"]), state["lr"]

    def after_step(self, loop: TrainLoop, outputs: dict[str, Any]) -> None:
        if self.steplog is None:
            return
        n = outputs.get("images", 1)
        self._images += n
        self._timed += n
        self._lr = outputs.get("lr", self._lr)
        for key, value in outputs.items():
            if key not in ("images", "lr"):
                value = value.detach() if isinstance(value, torch.Tensor) else value
                self._sums[key] = self._sums.get(key, 0.0) + value * n
        now, done = time.perf_counter(), loop.step
        to_file = done % self.log_every == 0 or done == loop.total_steps
        if not (to_file or done == loop.start + 1 or now - self._reported >= self.max_interval_s):
            return
        record = {"step": done, "epoch": round(loop.epoch, 4)}
        record.update({k: round(float(v) / max(self._images, 1), 5) for k, v in self._sums.items()})
        if self._lr is not None:
            record["lr"] = self._lr
        record["images_per_s"] = round(self._timed / max(now - self._reported, 1e-9), 2)  # since the last report
        self._report(loop, "step", record)
        if to_file:
            self.steplog.write(record)
            self._reset()

    def after_eval(self, loop: TrainLoop, record: dict[str, Any]) -> None:
        if self.steplog is not None:
            self.steplog.write(record)
            self._report(loop, "eval", record)

    def after_run(self, loop: TrainLoop) -> None:
        if self.steplog is not None:
            self.steplog.close()

    def _report(self, loop: TrainLoop, kind: str, record: dict[str, Any]) -> None:
        shown = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "epoch"))
        log.info("%s%s step %d/%d (epoch %.3g): %s", loop.name, " eval at" if kind == "eval" else "", loop.step,
                 loop.total_steps, loop.epoch, shown)
        if self.progress:
            self.progress(loop.step, loop.total_steps, record)
        self._timed, self._reported = 0, time.perf_counter()


class CheckpointHook(Hook):
    """Checkpoint every ``every`` steps, and at the end of a run that trained (so a finished run restarts as a
    no-op that re-derives its outputs from the final checkpoint)."""

    priority = 90

    def __init__(self, every: int):
        self.every = every

    def after_step(self, loop: TrainLoop, outputs: dict[str, Any]) -> None:
        if loop.step % self.every == 0 and loop.step < loop.total_steps:
            loop.save()

    def after_run(self, loop: TrainLoop) -> None:
        if loop.start < loop.total_steps:
            loop.save()


def default_hooks(out_dir: Path, log_every: int, checkpoint_every: int, progress: ProgressFn | None = None,
                  evaluate: Callable[[TrainLoop], dict[str, Any]] | None = None, eval_every: int = 0) -> list[Hook]:
    """The hooks every training stage uses: step log in ``out_dir/metrics.jsonl``, checkpoints, optional eval."""
    hooks: list[Hook] = [LoggerHook(Path(out_dir) / "metrics.jsonl", log_every, progress),
                         CheckpointHook(checkpoint_every)]
    if evaluate is not None:
        hooks.append(EvalHook(evaluate, eval_every))
    return hooks
