"""The pipeline's search loop: a strategy proposes, the supernet's evaluator scores, generation after generation,
under cost constraints; resumable between generations.

The strategy (:mod:`pinas.search.strategies`, SPOS's evolution by default) proposes ``population`` new architectures
per generation; each is priced first (params and MACs, latency when known, the BN-NAS gamma score: all free) and one
that violates a constraint is never proposed, so the evaluator only ever sees new, feasible architectures. The
evaluator scores the generation in one batch; the records go back to the strategy.

Why resuming is exact: the whole search is a function of (config, seed, scores); its state (the strategy's
generator and variables, every evaluated candidate, the fitness history) is a JSON dict (:meth:`Searcher.state_dict`).
Loaded again, it seeds the evaluation cache with the stored scores and goes on at the next generation with the
generator exactly where it was, so it ends with the same result as a run that was never interrupted.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from pinas.engine.loop import ProgressFn
from pinas.models.cost import CostModel
from pinas.search.constraints import Constraints, LatencyFn, pareto_front
from pinas.search.evaluation import Evaluation, Evaluator
from pinas.search.proxies import BNGammaProxy
from pinas.search.ranking import kendall_tau
from pinas.search.strategies import StrategyConfig, make_strategy
from pinas.space import Arch, SearchSpace

log = logging.getLogger("pinas")


class InfeasibleError(ValueError):
    """No new architecture satisfying the constraints could be drawn."""


# -------------------------------------------------------------------------------------------------- search
class Searcher:
    """The search loop; its whole state is ``state_dict()`` (JSON), so it can stop and resume anywhere between
    generations."""

    def __init__(self, cfg: StrategyConfig, space: SearchSpace, evaluator: Evaluator, cost: CostModel,
                 constraints: Constraints | None = None, latency: LatencyFn | None = None,
                 gamma: BNGammaProxy | None = None):
        self.cfg, self.space, self.evaluator, self.cost = cfg, space, evaluator, cost
        self.latency, self.gamma = latency, gamma
        self.constraints = constraints or Constraints()
        self.strategy = make_strategy(cfg, space, lambda arch: self.constraints.satisfied(self.price(arch)),
                                      (lambda arch: gamma(arch)[0]) if gamma is not None else None)
        self.history: list[dict] = []
        self.generation = -1  # last completed generation

    @property
    def candidates(self) -> list[dict]:
        """Every evaluated candidate, in evaluation order."""
        return self.strategy.records

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"generation": self.generation, "history": self.history, **self.strategy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generation = int(state["generation"])
        self.history = list(state["history"])
        self.strategy.load_state_dict(state)
        for c in self.candidates:
            self.evaluator.remember(Evaluation(c["arch"], c["proxy"], c["score"], c["loss"], c["acc"]))

    # --------------------------------------------------------------------------------------- pricing
    def price(self, arch: Arch) -> dict:
        """Params, MACs, latency (when known) and the BN-NAS gamma score of an architecture: all free."""
        cost = self.cost(arch)
        rec = {"params": cost.params, "macs": cost.macs}
        if self.latency is not None:
            rec["latency_ms"] = float(self.latency(arch))
        if self.gamma is not None:
            rec["bn_gamma"] = self.gamma(arch)[0]
        return rec

    def ranked(self) -> list[dict]:
        """Candidates best first (score, then fewer MACs, then the arch string: a total, stable order)."""
        return self.strategy.ranked()

    # ---------------------------------------------------------------------------------------- running
    def run_generation(self, progress: ProgressFn | None = None) -> bool:
        """Evaluate one generation; False when no new feasible architecture could be drawn."""
        g = self.generation + 1
        population = self.strategy.ask(self.cfg.population)
        if not population:
            if not self.candidates:
                raise InfeasibleError(
                    f"no architecture satisfying the constraints {self.constraints} was found in "
                    f"{self.cfg.population * self.cfg.max_tries} random draws; relax the constraints")
            log.warning("search: generation %d found no new feasible architecture; stopping early", g)
            return False
        t0 = time.perf_counter()
        total = self.cfg.generations * self.cfg.population
        done = len(self.candidates)
        if progress:  # the generation is scored in one batch: say what is running until it is done
            progress(min(done, total), total, {"generation": g, "scoring": len(population)})
        results = self.evaluator.evaluate_many([arch for arch, _ in population])
        records = [{"arch": result.arch, "generation": g, "origin": origin, "proxy": result.proxy,
                    "score": result.score, "loss": result.loss, "acc": result.acc, **self.price(arch)}
                   for (arch, origin), result in zip(population, results)]
        self.strategy.tell(records)
        if progress:
            for i, rec in enumerate(records, done + 1):
                progress(min(i, total), total, rec)
        scores = [r["score"] for r in records]
        best_so_far = self.ranked()[0]
        self.history.append({"generation": g, "best": max(scores), "mean": float(np.mean(scores)),
                             "best_so_far": best_so_far["score"], "best_arch": best_so_far["arch"],
                             "evaluated": len(self.candidates), "seconds": round(time.perf_counter() - t0, 3)})
        self.generation = g
        log.info("search generation %d/%d (%s): best %.5g mean %.5g, best so far %.5g (%s), %d evaluated, %.1f s",
                 g + 1, self.cfg.generations, self.cfg.strategy, max(scores), np.mean(scores), best_so_far["score"],
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
