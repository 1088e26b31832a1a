"""SPOS-style evolutionary search (method doc 3.3, the BN-NAS/SPOS defaults), resumable between generations.

Generation 0 is a random population; each later generation is ``mutations`` children of the top ``parents`` found
so far (each layer re-drawn with probability ``mutation_prob``), ``crossovers`` uniform crossovers of two of them,
and random architectures to fill up. A candidate is priced first (params and MACs, latency, the BN-NAS gamma score)
and one that violates a constraint, or was already evaluated, is re-drawn, so the evaluator only ever sees new,
feasible architectures. With ``prefilter_factor`` > 1 each operator proposes that many times more children and
only the best by the free BN-NAS gamma score are evaluated.

Why resuming is exact: the whole search is a function of (config, seed, scores); its state (the numpy generator,
every evaluated candidate, the fitness history) is a JSON dict (:meth:`EvolutionSearch.state_dict`). Loaded
again, it seeds the evaluation cache with the stored scores and goes on at the next generation with the generator
exactly where it was, so it ends with the same result as a run that was never interrupted.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pinas.engine.loop import ProgressFn
from pinas.models.cost import CostModel
from pinas.search.constraints import Constraints, LatencyFn, pareto_front
from pinas.search.evaluation import Evaluation, Evaluator
from pinas.search.proxies import BNGammaProxy
from pinas.search.ranking import kendall_tau
from pinas.space import Arch, SearchSpace

log = logging.getLogger("pinas")


class EvolutionConfig(BaseModel):
    """The evolution; defaults are SPOS's (50 x 20, top 10, 25 + 25, p = 0.1)."""

    model_config = ConfigDict(extra="forbid")

    population: int = Field(50, ge=1)
    generations: int = Field(20, ge=1)
    parents: int = Field(10, ge=1, description="top candidates (over all generations) that breed")
    mutations: int = Field(25, ge=0)
    crossovers: int = Field(25, ge=0)
    mutation_prob: float = Field(0.1, gt=0, le=1, description="per-layer probability of a mutation")
    prefilter_factor: int = Field(1, ge=1, description="propose this many times the children, keep the best by "
                                                       "BN-NAS gamma (1 = no pre-filter)")
    top_k: int = Field(10, ge=1)
    max_tries: int = Field(200, ge=1, description="draws per wanted candidate before giving up")
    seed: int = 0

    @model_validator(mode="after")
    def _check_parents(self) -> EvolutionConfig:
        if self.parents > self.population:
            raise ValueError(f"parents = {self.parents} exceeds population = {self.population}")
        return self


class InfeasibleError(ValueError):
    """No new architecture satisfying the constraints could be drawn."""


# -------------------------------------------------------------------------------------------------- search
class EvolutionSearch:
    """The evolution loop; its whole state is ``state_dict()`` (JSON), so it can stop and resume anywhere
    between generations."""

    def __init__(self, cfg: EvolutionConfig, space: SearchSpace, evaluator: Evaluator, cost: CostModel,
                 constraints: Constraints | None = None, latency: LatencyFn | None = None,
                 gamma: BNGammaProxy | None = None):
        self.cfg, self.space, self.evaluator, self.cost = cfg, space, evaluator, cost
        self.latency, self.gamma = latency, gamma
        self.constraints = constraints or Constraints()
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
        if progress:  # the generation is scored in one batch: say what is running until it is done
            progress(min(len(self.candidates), total), total, {"generation": g, "scoring": len(population)})
        results = self.evaluator.evaluate_many([arch for arch, _ in population])
        for (arch, origin), result in zip(population, results):
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
