"""Stage 2: evolutionary architecture search on the trained supernet, under cost constraints, resumable.

SPOS-style evolution (method doc 3.3, the BN-NAS/SPOS defaults): generation 0 is a random population; each later
generation is ``mutations`` children of the top ``parents`` found so far (each layer re-drawn with probability
``mutation_prob``), ``crossovers`` uniform crossovers of two of them, and random architectures to fill up.
A candidate is priced first (params and MACs from :class:`pinas.cost.CostModel`, latency from a table or a hook)
and one that violates a constraint, or was already evaluated, is re-drawn, so the evaluator only ever sees new,
feasible architectures. With ``prefilter_factor`` > 1 each operator proposes that many times more children and
only the best by the free BN-NAS gamma score are evaluated.

Why resuming is exact: the whole search is a function of (config, seed, scores); after every generation the
numpy generator's state, every evaluated candidate and the fitness history are written atomically to
``search_state.json``. A restarted run loads it, seeds the evaluation cache with the stored scores, and goes on at
the next generation with the generator exactly where it was, so it ends with the same result as a run that was
never interrupted (scores are deterministic: see :mod:`pinas.evaluator`).

Outputs in ``out_dir``: ``search_state.json``, ``candidates.jsonl`` (every evaluated candidate: arch, generation,
origin, score, loss, acc, params, macs, [latency_ms], bn_gamma), ``result.json`` (best, top-k, Pareto front of
score vs MACs [and latency], random-population median), ``fitness.png``, ``pareto.png`` and the manifest.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .artifacts import ArtifactError, atomic_write_bytes, atomic_write_json, read_manifest, write_manifest
from .cost import CostModel
from .data import scan_image_folder
from .evaluator import (
    BNGammaProxy,
    Evaluation,
    Evaluator,
    EvaluatorConfig,
    build_evaluator,
    check_supernet_dir,
    load_trained_supernet,
)
from .linear_probe import check_classes, load_probe
from .plots import plot_fitness, plot_pareto
from .ranking import kendall_tau
from .space import Arch, SearchSpace
from .supernet_training import training_views
from .training import SINGLE_PROCESS, ProgressFn, resolve_device

log = logging.getLogger("pinas")
STATE, CANDIDATES, RESULT = "search_state.json", "candidates.jsonl", "result.json"
LatencyFn = Callable[[Arch], float]


class SearchConfig(BaseModel):
    """Evolution, constraints and the evaluator; defaults are SPOS's (50 x 20, top 10, 25 + 25, p = 0.1)."""

    model_config = ConfigDict(extra="forbid")

    evaluator: EvaluatorConfig = EvaluatorConfig()
    population: int = Field(50, ge=1)
    generations: int = Field(20, ge=1)
    parents: int = Field(10, ge=1, description="top candidates (over all generations) that breed")
    mutations: int = Field(25, ge=0)
    crossovers: int = Field(25, ge=0)
    mutation_prob: float = Field(0.1, gt=0, le=1, description="per-layer probability of a mutation")
    prefilter_factor: int = Field(1, ge=1, description="propose this many times the children, keep the best by "
                                                       "BN-NAS gamma (1 = no pre-filter)")
    max_params_m: float | None = Field(None, gt=0, description="constraint on millions of parameters")
    min_params_m: float | None = Field(None, ge=0)
    max_macs_m: float | None = Field(None, gt=0, description="constraint on millions of MACs (FLOPs / 2)")
    min_macs_m: float | None = Field(None, ge=0)
    max_latency_ms: float | None = Field(None, gt=0, description="needs latency_table or a latency_fn")
    latency_table: str | None = Field(None, description='JSON {"fixed_ms": x, "layers": [[ms per choice], ...]}')
    num_classes: int | None = Field(None, ge=1, description="classifier head counted in the costs; "
                                                            "default: classes of train_dir")
    top_k: int = Field(10, ge=1)
    max_tries: int = Field(200, ge=1, description="draws per wanted candidate before giving up")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        for low, high in (("min_params_m", "max_params_m"), ("min_macs_m", "max_macs_m")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} = {lo} is above {high} = {hi}")
        if self.parents > self.population:
            raise ValueError(f"parents = {self.parents} exceeds population = {self.population}")
        return self


# ------------------------------------------------------------------------------------------- costs, pareto
class LatencyTable:
    """Latency as a fixed part plus one measured entry per (layer, choice), in milliseconds."""

    def __init__(self, fixed_ms: float, layers: Sequence[Sequence[float]]):
        self.fixed_ms, self.layers = float(fixed_ms), np.asarray(layers, float)

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency_table {path} does not exist")
        data = json.loads(path.read_text())
        table = cls(data.get("fixed_ms", 0.0), data["layers"])
        if table.layers.shape != (space.num_layers, space.num_choices):
            raise ValueError(f"latency_table {path}: layers is {table.layers.shape}, space {space.name!r} needs "
                             f"({space.num_layers}, {space.num_choices})")
        return table

    def __call__(self, arch: Arch) -> float:
        return self.fixed_ms + float(self.layers[np.arange(len(arch)), list(arch)].sum())


def pareto_front(objectives: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows (every column minimised): no other row is <= everywhere and < somewhere."""
    p = np.asarray(objectives, float)
    if p.ndim != 2:
        raise ValueError("objectives must be (points, objectives)")
    no_worse = (p[None, :, :] <= p[:, None, :]).all(-1)  # [i, j]: row j is no worse than row i anywhere
    better = (p[None, :, :] < p[:, None, :]).any(-1)
    return ~(no_worse & better).any(1)


@dataclass(frozen=True)
class Constraints:
    """Bounds on params, MACs (absolute counts) and latency (ms); ``None`` is unbounded."""

    min_params: float | None = None
    max_params: float | None = None
    min_macs: float | None = None
    max_macs: float | None = None
    max_latency_ms: float | None = None

    @classmethod
    def from_config(cls, cfg: SearchConfig) -> Constraints:
        def scale(v):
            return None if v is None else v * 1e6
        return cls(scale(cfg.min_params_m), scale(cfg.max_params_m), scale(cfg.min_macs_m), scale(cfg.max_macs_m),
                   cfg.max_latency_ms)

    def satisfied(self, rec: dict) -> bool:
        checks = ((self.min_params, rec["params"], 1), (self.max_params, rec["params"], -1),
                  (self.min_macs, rec["macs"], 1), (self.max_macs, rec["macs"], -1),
                  (self.max_latency_ms, rec.get("latency_ms"), -1))
        return all(bound is None or (value - bound) * sign >= 0 for bound, value, sign in checks)

    def check_reachable(self, cost: CostModel, latency: LatencyTable | None) -> None:
        """Fail early, naming the field, when one bound lies outside everything the space can reach."""
        fixed = cost.fixed
        ranges = {"params": (fixed.params + sum(map(min, cost.layer_params)),
                             fixed.params + sum(map(max, cost.layer_params))),
                  "macs": (fixed.macs + sum(map(min, cost.layer_macs)), fixed.macs + sum(map(max, cost.layer_macs)))}
        bounds = [("min_params_m", self.min_params, "params", 1), ("max_params_m", self.max_params, "params", 0),
                  ("min_macs_m", self.min_macs, "macs", 1), ("max_macs_m", self.max_macs, "macs", 0)]
        for field, bound, what, is_min in bounds:
            lo, hi = ranges[what]
            if bound is not None and (bound > hi if is_min else bound < lo):
                raise ValueError(f"no architecture satisfies {field} = {bound / 1e6:g}: {what} in space "
                                 f"{cost.space.name!r} range from {lo / 1e6:.4f} M to {hi / 1e6:.4f} M")
        if latency is not None and self.max_latency_ms is not None:
            fastest = latency.fixed_ms + latency.layers.min(1).sum()
            if self.max_latency_ms < fastest:
                raise ValueError(f"no architecture satisfies max_latency_ms = {self.max_latency_ms}: the fastest "
                                 f"takes {fastest:.3f} ms by the latency table")


@functools.lru_cache(maxsize=8)
def cost_model(space: SearchSpace, num_classes: int) -> CostModel:
    """The cost table at the space's input size, built once per process (it traces the supernet)."""
    return CostModel(space, space.input_size, num_classes)


class InfeasibleError(ValueError):
    """No new architecture satisfying the constraints could be drawn."""


# -------------------------------------------------------------------------------------------------- search
class EvolutionSearch:
    """The evolution loop; its whole state is ``state_dict()`` (JSON), so it can stop and resume anywhere
    between generations."""

    def __init__(self, cfg: SearchConfig, space: SearchSpace, evaluator: Evaluator, cost: CostModel,
                 latency: LatencyFn | None = None, gamma: BNGammaProxy | None = None):
        self.cfg, self.space, self.evaluator, self.cost = cfg, space, evaluator, cost
        self.latency, self.gamma = latency, gamma
        self.constraints = Constraints.from_config(cfg)
        self.rng = np.random.default_rng(cfg.seed)
        self.candidates: list[dict] = []
        self.history: list[dict] = []
        self.generation = -1  # last completed generation
        self._seen: set[Arch] = set()

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"generation": self.generation, "rng": self.rng.bit_generator.state, "candidates": self.candidates,
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.generation = int(state["generation"])
        self.rng.bit_generator.state = state["rng"]
        self.candidates, self.history = list(state["candidates"]), list(state["history"])
        self._seen = {self.space.parse(c["arch"]) for c in self.candidates}
        for c in self.candidates:
            self.evaluator.remember(Evaluation(c["arch"], c["proxy"], c["score"], c["loss"], c["acc"]))

    # --------------------------------------------------------------------------------------- proposing
    def price(self, arch: Arch) -> dict:
        """Params, MACs, latency (when known) and the BN-NAS gamma score of an architecture: all free."""
        cost = self.cost(arch)
        rec = {"params": cost.params, "macs": cost.macs}
        if self.latency is not None:
            rec["latency_ms"] = float(self.latency(arch))
        if self.gamma is not None:
            rec["bn_gamma"] = self.gamma(arch)[0]
        return rec

    def _propose(self, draw: Callable[[], Arch], count: int, taken: set[Arch]) -> list[Arch]:
        """Up to ``count`` new feasible architectures from ``draw`` (best ``count`` by gamma when pre-filtering)."""
        want = count * self.cfg.prefilter_factor
        found: list[Arch] = []
        for _ in range(want * self.cfg.max_tries):
            if len(found) == want:
                break
            arch = draw()
            if arch in taken or arch in self._seen or not self.constraints.satisfied(self.price(arch)):
                continue
            taken.add(arch)
            found.append(arch)
        if self.cfg.prefilter_factor > 1 and self.gamma is not None:
            keep = set(sorted(found, key=lambda a: -self.gamma(a)[0])[:count])
            taken.difference_update(set(found) - keep)
            found = [a for a in found if a in keep]
        return found

    def parents(self) -> list[Arch]:
        return [self.space.parse(c["arch"]) for c in self.ranked()[:self.cfg.parents]]

    def ranked(self) -> list[dict]:
        """Candidates best first (score, then fewer MACs, then the arch string: a total, stable order)."""
        return sorted(self.candidates, key=lambda c: (-c["score"], c["macs"], c["arch"]))

    def next_population(self) -> list[tuple[Arch, str]]:
        cfg, space, rng = self.cfg, self.space, self.rng
        taken: set[Arch] = set()
        children: list[tuple[Arch, str]] = []
        if self.generation >= 0:
            parents = self.parents()

            def mutate() -> Arch:
                return space.mutate(parents[rng.integers(len(parents))], rng, cfg.mutation_prob)

            def cross() -> Arch:
                i, j = rng.choice(len(parents), size=2, replace=len(parents) < 2)
                return space.crossover(parents[i], parents[j], rng)

            children += [(a, "mutation") for a in self._propose(mutate, cfg.mutations, taken)]
            children += [(a, "crossover") for a in self._propose(cross, cfg.crossovers, taken)]
        fill = max(0, cfg.population - len(children))
        children += [(a, "random") for a in self._propose(lambda: space.sample(rng), fill, taken)]
        return children

    # ---------------------------------------------------------------------------------------- running
    def run_generation(self, progress: ProgressFn | None = None) -> bool:
        """Evaluate one generation; False when no new feasible architecture could be drawn."""
        g = self.generation + 1
        population = self.next_population()
        if not population:
            if not self.candidates:
                raise InfeasibleError(
                    f"no architecture satisfying the constraints {self.constraints} was found in "
                    f"{self.cfg.population * self.cfg.max_tries} random draws; relax the constraints")
            log.warning("search: generation %d found no new feasible architecture; stopping early", g)
            return False
        t0 = time.perf_counter()
        total = self.cfg.generations * self.cfg.population
        scores = []
        for arch, origin in population:
            result = self.evaluator(arch)
            rec = {"arch": result.arch, "generation": g, "origin": origin, "proxy": result.proxy,
                   "score": result.score, "loss": result.loss, "acc": result.acc, **self.price(arch)}
            self.candidates.append(rec)
            self._seen.add(arch)
            scores.append(result.score)
            if progress:
                progress(min(len(self.candidates), total), total, rec)
        best_so_far = self.ranked()[0]
        self.history.append({"generation": g, "best": max(scores), "mean": float(np.mean(scores)),
                             "best_so_far": best_so_far["score"], "best_arch": best_so_far["arch"],
                             "evaluated": len(self.candidates), "seconds": round(time.perf_counter() - t0, 3)})
        self.generation = g
        log.info("search generation %d/%d: best %.5g mean %.5g, best so far %.5g (%s), %d evaluated, %.1f s",
                 g + 1, self.cfg.generations, max(scores), np.mean(scores), best_so_far["score"],
                 best_so_far["arch"], len(self.candidates), time.perf_counter() - t0)
        return True

    def front_mask(self) -> np.ndarray:
        """Which candidates are Pareto-optimal in (score up, MACs down[, latency down])."""
        return pareto_front(np.array([[-c["score"], c["macs"]] + ([c["latency_ms"]] if self.latency else [])
                                      for c in self.candidates]))

    def result(self) -> dict:
        """Best, top-k, the Pareto front, the random population's median and BN-gamma's agreement with the proxy."""
        ranked = self.ranked()
        front = [c for c, on in zip(self.candidates, self.front_mask()) if on]
        randoms = [c["score"] for c in self.candidates if c["generation"] == 0]
        gammas = [c.get("bn_gamma") for c in self.candidates]
        return {"best": ranked[0], "top_k": ranked[:self.cfg.top_k],
                "pareto_front": sorted(front, key=lambda c: (c["macs"], -c["score"], c["arch"])),
                "pareto_objectives": ["score", "macs"] + (["latency_ms"] if self.latency else []),
                "evaluated": len(ranked), "generations": self.generation + 1,
                "random_population_median_score": float(np.median(randoms)) if randoms else None,
                "bn_gamma_kendall_tau": kendall_tau(gammas, [c["score"] for c in self.candidates])
                if None not in gammas and len(gammas) > 1 else None,
                "constraints": {k: v for k, v in vars(self.constraints).items() if v is not None}}


# --------------------------------------------------------------------------------------------------- stage
def _jsonl(records: Sequence[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _load_state(path: Path, fingerprint: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupted search state ({exc}); remove it to start over") from exc
    if state.get("fingerprint") != fingerprint:
        old = state.get("fingerprint", {})
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise ArtifactError(f"{path} belongs to a search with a different {', '.join(diff)}; use a fresh out_dir")
    return state


def run_search(cfg: SearchConfig, supernet_dir: Path, train_dir: Path, val_dir: Path, out_dir: Path,
               probe_dir: Path | None = None, progress: ProgressFn | None = None, latency_fn: LatencyFn | None = None,
               stop_after_generation: int | None = None) -> dict:
    """The stage: validate inputs, evolve (resuming from ``out_dir/search_state.json``), write the results.

    ``train_dir`` feeds BN recalibration, ``val_dir`` the held-out proxy images; ``probe_dir`` is the finished
    ``linear_probe`` stage (needed when ``cfg.evaluator.proxy == "linear_probe"``). ``latency_fn`` (arch -> ms)
    overrides ``cfg.latency_table``. ``stop_after_generation`` returns after that generation is saved, as if the
    process had been killed there (for tests of resumption).
    """
    out_dir = Path(out_dir)
    supernet_cfg = check_supernet_dir(supernet_dir)
    _, classes = scan_image_folder(train_dir)
    scan_image_folder(val_dir)
    probe = None
    if cfg.evaluator.proxy == "linear_probe":
        if probe_dir is None:
            raise ValueError("probe_dir is required for evaluator.proxy = 'linear_probe' (run the linear_probe stage)")
        probe = load_probe(probe_dir)
        if probe[1]["space"] != supernet_cfg.space:
            raise ValueError(f"probe_dir {probe_dir} was trained on space {probe[1]['space']!r}, the supernet is "
                             f"{supernet_cfg.space!r}")
        check_classes(probe[1]["classes"], Path(val_dir), "val_dir")
    device = resolve_device(cfg.evaluator.device, SINGLE_PROCESS)
    model, _ = load_trained_supernet(supernet_dir, device)
    space = model.space
    latency = latency_fn or (LatencyTable.load(cfg.latency_table, space) if cfg.latency_table else None)
    if cfg.max_latency_ms is not None and latency is None:
        raise ValueError("max_latency_ms needs latency_table (or a latency_fn)")
    cost = cost_model(space, cfg.num_classes or len(classes))
    constraints = Constraints.from_config(cfg)
    constraints.check_reachable(cost, latency if isinstance(latency, LatencyTable) else None)

    evaluator = build_evaluator(cfg.evaluator, model, train_dir, val_dir, probe, device,
                                training_views(supernet_cfg, space.input_size))
    search = EvolutionSearch(cfg, space, evaluator, cost, latency, BNGammaProxy(model.student.backbone))
    # what the result depends on (the batch cache and loader workers do not change a score)
    fingerprint = {"config": cfg.model_dump(exclude={"evaluator": {"cache_mb", "num_workers"}}),
                   "space": supernet_cfg.space, "supernet": read_manifest(supernet_dir)["files"],
                   "probe": read_manifest(probe_dir)["files"] if probe is not None else None,
                   "latency": "fn" if latency_fn else cfg.latency_table}
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(out_dir / STATE, fingerprint)
    if state is not None:
        search.load_state_dict(state)
        log.info("search: resuming at generation %d (%d candidates already scored)", search.generation + 1,
                 len(search.candidates))
    while search.generation + 1 < cfg.generations:
        if not search.run_generation(progress):
            break
        atomic_write_bytes(out_dir / CANDIDATES, _jsonl(search.candidates))
        atomic_write_json(out_dir / STATE, {"fingerprint": fingerprint, **search.state_dict()})
        if stop_after_generation is not None and search.generation >= stop_after_generation:
            return {"stopped_after_generation": search.generation}
    return _finish(cfg, search, out_dir, evaluator)


def _finish(cfg: SearchConfig, search: EvolutionSearch, out_dir: Path, evaluator: Evaluator) -> dict:
    result = search.result()
    atomic_write_bytes(out_dir / CANDIDATES, _jsonl(search.candidates))
    atomic_write_json(out_dir / RESULT, result)
    proxy = cfg.evaluator.proxy
    plot_fitness(search.history, out_dir / "fitness.png", proxy)
    plot_pareto(search.candidates, search.front_mask(), out_dir / "pareto.png", result["best"], proxy)
    best = result["best"]
    metrics = {"best_arch": best["arch"], "best_score": best["score"], "best_params_m": best["params"] / 1e6,
               "best_macs_m": best["macs"] / 1e6, "evaluated": result["evaluated"],
               "random_population_median_score": result["random_population_median_score"],
               "bn_gamma_kendall_tau": result["bn_gamma_kendall_tau"], "cache_hits": evaluator.hits}
    files = [RESULT, CANDIDATES, STATE, "fitness.png", "pareto.png"]
    return write_manifest(out_dir, "search", files, cfg.model_dump(), metrics)
