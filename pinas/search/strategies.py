"""Search strategies with one interface: ask for candidates, tell their scores, a JSON state for exact resume.

A strategy proposes architectures of an :class:`~pinas.space.ArchSpace` and learns from their scores; it knows
nothing of ResNeSt, supernets or benchmark tables. The pipeline scores candidates on the trained supernet
(:class:`pinas.search.searcher.Searcher`), the benchmark looks them up in a table (:mod:`pinas.bench.transnas`);
the same strategy code runs against both.

The contract:

* ``ask(n)`` returns at most ``n`` ``(arch, origin)`` pairs, each an architecture never proposed before that passes
  ``feasible`` (the constraints); fewer (or none) when no new feasible one can be drawn;
* ``tell(records)`` hands back every asked architecture's record, a dict with ``arch`` (the space's string),
  ``score`` (higher is better) and whatever the caller priced (``macs`` breaks ties in the evolution's ranking);
* ``state_dict()`` is JSON (the numpy generator's state, the records, the strategy's own variables): loaded into a
  fresh strategy between a tell and the next ask, it continues exactly as the uninterrupted one.

``prior`` is a free, zero-cost score of an architecture (BN-NAS's gamma on a supernet, Zen-NAS on a benchmark
table): the evolution may pre-filter its children with it, the predictor-guided search starts from it.

Strategies (``StrategyConfig.strategy``):

* ``evolution`` (default): SPOS's evolution, generation by generation: ``mutations`` mutants (each decision
  re-drawn with ``mutation_prob``) and ``crossovers`` uniform crossovers of the best ``parents`` found so far,
  random architectures to fill ``population``;
* ``random``: uniform draws without replacement;
* ``regularized_evolution``: Real et al. 2019: an aging population of the last ``population`` evaluated
  architectures; each child is one decision's mutation of the best of ``tournament`` members drawn from it;
* ``local_search``: hill climbing from the best random start over the one-decision neighbours, in a seeded order,
  moving to the best improving neighbour of each batch; a random restart at a local optimum;
* ``distribution``: a categorical distribution per decision (PARSEC's idea), sampled for candidates and moved
  towards the choices of the best ``elite_fraction`` of everything evaluated (the cross-entropy method);
* ``predictor``: a surrogate fitted on the evaluated architectures ranks many cheap proposals and only the most
  promising are evaluated (:mod:`pinas.search.predictor`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pinas.space import Arch, ArchSpace

StrategyName = Literal["evolution", "random", "regularized_evolution", "local_search", "distribution", "predictor"]
Proposal = tuple[Arch, str]  # (architecture, how it was made)


class StrategyConfig(BaseModel):
    """Which strategy searches and its settings; the evolution's defaults are SPOS's (50 x 20, top 10, 25 + 25,
    p = 0.1). Every strategy evaluates ``population`` candidates per generation for ``generations``."""

    model_config = ConfigDict(extra="forbid")

    strategy: StrategyName = Field("evolution", description="evolution (SPOS, default), random, "
                                   "regularized_evolution, local_search, distribution or predictor")
    population: int = Field(50, ge=1, description="candidates evaluated per generation (every strategy)")
    generations: int = Field(20, ge=1)
    parents: int = Field(10, ge=1, description="evolution: top candidates (over all generations) that breed")
    mutations: int = Field(25, ge=0, description="evolution: mutants per generation")
    crossovers: int = Field(25, ge=0, description="evolution: crossovers per generation")
    mutation_prob: float = Field(0.1, gt=0, le=1, description="evolution: per-decision probability of a mutation")
    prefilter_factor: int = Field(1, ge=1, description="evolution: propose this many times the children, keep the "
                                                       "best by the free prior score (1 = no pre-filter)")
    tournament: int = Field(10, ge=1, description="regularized_evolution: members drawn per tournament from the "
                                                  "aging population (the last `population` evaluated)")
    elite_fraction: float = Field(0.2, gt=0, le=1, description="distribution: share of the evaluated architectures "
                                                               "whose choices the distribution moves towards")
    learning_rate: float = Field(0.3, gt=0, le=1, description="distribution: step towards the elite's choices")
    proposals: int = Field(5000, ge=1, description="predictor: cheap proposals ranked by the surrogate per batch "
                                                  "(every unevaluated architecture of a space no larger)")
    initial: int = Field(20, ge=1, description="predictor: architectures evaluated before the first fit (the best "
                                               "by the prior when one is given, random otherwise)")
    top_k: int = Field(10, ge=1)
    max_tries: int = Field(200, ge=1, description="draws per wanted candidate before giving up")
    seed: int = 0

    @model_validator(mode="after")
    def _check_parents(self) -> StrategyConfig:
        if self.parents > self.population:
            raise ValueError(f"parents = {self.parents} exceeds population = {self.population}")
        return self


def rank_key(record: dict) -> tuple:
    """Best first: higher score, then fewer MACs (when priced), then the architecture string (a total order)."""
    return -record["score"], record.get("macs", 0), record["arch"]


class Strategy:
    """What every strategy shares: the space, the generator, the records told, the proposals made, and drawing new
    feasible architectures (:meth:`propose`)."""

    name: ClassVar[str]

    def __init__(self, space: ArchSpace, cfg: StrategyConfig, feasible: Callable[[Arch], bool] | None = None,
                 prior: Callable[[Arch], float] | None = None):
        self.space, self.cfg = space, cfg
        self.feasible = feasible or (lambda arch: True)
        self.prior = prior
        self.rng = np.random.default_rng(cfg.seed)
        self.records: list[dict] = []
        self.proposed: set[Arch] = set()

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"strategy": self.name, "rng": self.rng.bit_generator.state, "records": self.records}

    def load_state_dict(self, state: dict) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"a {state.get('strategy')!r} search state cannot resume strategy {self.name!r}")
        self.rng.bit_generator.state = state["rng"]
        self.records = list(state["records"])
        self.proposed = {self.space.parse(r["arch"]) for r in self.records}

    # ------------------------------------------------------------------------------------ ask / tell
    def ask(self, n: int) -> list[Proposal]:
        raise NotImplementedError

    def tell(self, records: Iterable[dict]) -> None:
        self.records.extend(records)

    def ranked(self) -> list[dict]:
        return sorted(self.records, key=rank_key)

    def propose(self, draw: Callable[[], Arch], count: int, taken: set[Arch]) -> list[Arch]:
        """Up to ``count`` new feasible architectures from ``draw``, added to ``taken`` and to the proposals."""
        found = self._draw(draw, count, taken)
        self.proposed.update(found)
        return found

    def _draw(self, draw: Callable[[], Arch], count: int, taken: set[Arch]) -> list[Arch]:
        found: list[Arch] = []
        for _ in range(count * self.cfg.max_tries):
            if len(found) == count:
                break
            arch = draw()
            if arch in taken or arch in self.proposed or not self.feasible(arch):
                continue
            taken.add(arch)
            found.append(arch)
        return found

    def random(self, n: int, taken: set[Arch] | None = None) -> list[Proposal]:
        return [(a, "random") for a in self.propose(lambda: self.space.sample(self.rng), n, set() if taken is None
                                                     else taken)]


class RandomSearch(Strategy):
    name = "random"

    def ask(self, n: int) -> list[Proposal]:
        return self.random(n)


class Evolution(Strategy):
    """SPOS's evolution (see the module docstring); ``n`` is the generation's size."""

    name = "evolution"

    def propose(self, draw: Callable[[], Arch], count: int, taken: set[Arch]) -> list[Arch]:
        """With a prior and ``prefilter_factor`` > 1: the best ``count`` by the prior of that many times more."""
        if self.prior is None or self.cfg.prefilter_factor == 1:
            return super().propose(draw, count, taken)
        found = self._draw(draw, count * self.cfg.prefilter_factor, taken)
        keep = set(sorted(found, key=lambda a: -self.prior(a))[:count])
        taken.difference_update(set(found) - keep)
        found = [a for a in found if a in keep]
        self.proposed.update(found)
        return found

    def ask(self, n: int) -> list[Proposal]:
        cfg, space, rng = self.cfg, self.space, self.rng
        taken: set[Arch] = set()
        children: list[Proposal] = []
        if self.records:
            parents = [space.parse(r["arch"]) for r in self.ranked()[:cfg.parents]]

            def mutate() -> Arch:
                return space.mutate(parents[rng.integers(len(parents))], rng, cfg.mutation_prob)

            def cross() -> Arch:
                i, j = rng.choice(len(parents), size=2, replace=len(parents) < 2)
                return space.crossover(parents[i], parents[j], rng)

            mutations = min(cfg.mutations, n)  # a last, smaller generation keeps to n
            children += [(a, "mutation") for a in self.propose(mutate, mutations, taken)]
            children += [(a, "crossover") for a in self.propose(cross, min(cfg.crossovers, n - mutations), taken)]
        return children + self.random(max(0, n - len(children)), taken)


class RegularizedEvolution(Strategy):
    """Aging evolution: the population is the last ``population`` records; tournaments of ``tournament``."""

    name = "regularized_evolution"

    def ask(self, n: int) -> list[Proposal]:
        cfg, space, rng = self.cfg, self.space, self.rng
        missing = cfg.population - len(self.records)
        if missing > 0:
            return self.random(min(n, missing))
        population = self.records[-cfg.population:]
        taken: set[Arch] = set()

        def child() -> Arch:
            drawn = rng.choice(len(population), size=min(cfg.tournament, len(population)), replace=False)
            parent = min((population[i] for i in drawn), key=rank_key)
            return space.mutate_one(space.parse(parent["arch"]), rng)

        return [(a, "mutation") for a in self.propose(child, n, taken)]


class LocalSearch(Strategy):
    """Hill climbing over one-decision neighbours (White et al. 2020), with random restarts at local optima."""

    name = "local_search"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.current: dict | None = None  # the record the search stands on

    def state_dict(self) -> dict:
        return {**super().state_dict(), "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.current = state["current"]

    def tell(self, records: Iterable[dict]) -> None:
        records = list(records)
        super().tell(records)
        best = min(records, key=rank_key, default=None)
        if best is not None and (self.current is None or rank_key(best) < rank_key(self.current)):
            self.current = best

    def ask(self, n: int) -> list[Proposal]:
        if self.current is None:
            return self.random(n)
        pool = [a for a in self.space.neighbours(self.space.parse(self.current["arch"]))
                if a not in self.proposed and self.feasible(a)]
        if not pool:  # a local optimum: start again from a random architecture
            self.current = None
            return self.random(n)
        order = self.rng.permutation(len(pool))[:n]
        chosen = [pool[i] for i in order]
        self.proposed.update(chosen)
        return [(a, "neighbour") for a in chosen]


class DistributionSearch(Strategy):
    """A categorical distribution per decision, moved towards the elite's choices (cross-entropy method)."""

    name = "distribution"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probs = np.full((self.space.num_decisions, self.space.num_choices), 1.0 / self.space.num_choices)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "probs": self.probs.tolist()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.probs = np.asarray(state["probs"], float)

    def tell(self, records: Iterable[dict]) -> None:
        super().tell(records)
        elite = self.ranked()[:max(1, round(self.cfg.elite_fraction * len(self.records)))]
        counts = np.ones_like(self.probs)  # Laplace smoothing: no choice's probability reaches 0
        for record in elite:
            counts[np.arange(self.space.num_decisions), list(self.space.parse(record["arch"]))] += 1
        target = counts / counts.sum(axis=1, keepdims=True)
        self.probs = (1 - self.cfg.learning_rate) * self.probs + self.cfg.learning_rate * target

    def ask(self, n: int) -> list[Proposal]:
        def draw() -> Arch:
            u = self.rng.random(self.space.num_decisions)
            return tuple(int(c) for c in (self.probs.cumsum(axis=1) < u[:, None]).sum(axis=1).clip(
                0, self.space.num_choices - 1))

        return [(a, "distribution") for a in self.propose(draw, n, set())]


class PredictorSearch(Strategy):
    """Predictor-guided search: proposals ranked by a Gaussian process, warm-started from the prior
    (:mod:`pinas.search.predictor`)."""

    name = "predictor"
    REFIT_GROWTH = 4 / 3  # the GP's hyper-parameters are chosen again when the evaluated grow by this factor

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hyper: list[float] | None = None  # the last choice, and at how many evaluated it was made
        self.fitted_at = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "hyper": self.hyper, "fitted_at": self.fitted_at}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.hyper, self.fitted_at = state["hyper"], state["fitted_at"]

    def ask(self, n: int) -> list[Proposal]:
        cfg, space = self.cfg, self.space
        if len(self.records) < cfg.initial:
            wanted = min(n, cfg.initial - len(self.records))
            if self.prior is None:
                return self.random(wanted)
            pool = self._draw(lambda: space.sample(self.rng), 20 * cfg.initial, set())
            chosen = sorted(pool, key=lambda a: -self.prior(a))[:wanted]
            self.proposed.update(chosen)
            return [(a, "prior") for a in chosen]
        from pinas.search import predictor  # scipy.stats takes a second to import: only this strategy pays it

        pool = self._pool()
        if not pool:
            return []
        seen = [space.parse(r["arch"]) for r in self.records]
        prior = self._prior_ranks(seen + pool)
        choices = space.num_choices
        refit = self.hyper is None or len(seen) >= self.REFIT_GROWTH * self.fitted_at
        gp = predictor.GaussianProcess(predictor.one_hot(np.array(seen), choices), prior[:len(seen)],
                                       np.array([r["score"] for r in self.records]), None if refit else self.hyper)
        if refit:
            self.hyper, self.fitted_at = gp.hyper, len(seen)
        chosen = [pool[i] for i in gp.pick(predictor.one_hot(np.array(pool), choices), prior[len(seen):], n)]
        self.proposed.update(chosen)
        return [(a, "predictor") for a in chosen]

    def _prior_ranks(self, archs: list[Arch]) -> np.ndarray:
        from pinas.search import predictor

        if self.prior is None:
            return np.zeros(len(archs))
        return predictor.unit_ranks(np.array([self.prior(a) for a in archs]))

    def _pool(self) -> list[Arch]:
        """Unevaluated feasible proposals: the whole rest of a small space, else random draws and mutants."""
        space, cfg = self.space, self.cfg
        if space.size <= cfg.proposals:
            return [a for a in space.all_archs() if a not in self.proposed and self.feasible(a)]
        best = [space.parse(r["arch"]) for r in self.ranked()[:10]]

        def mutant() -> Arch:
            parent = best[self.rng.integers(len(best))]
            return space.mutate(parent, self.rng, min(1.0, self.rng.integers(1, 4) / space.num_decisions))

        taken: set[Arch] = set()
        pool = self._draw(mutant, cfg.proposals // 2, taken)
        return pool + self._draw(lambda: space.sample(self.rng), cfg.proposals - len(pool), taken)


def make_strategy(cfg: StrategyConfig, space: ArchSpace, feasible: Callable[[Arch], bool] | None = None,
                  prior: Callable[[Arch], float] | None = None) -> Strategy:
    classes = {c.name: c for c in (Evolution, RandomSearch, RegularizedEvolution, LocalSearch, DistributionSearch,
                                   PredictorSearch)}
    return classes[cfg.strategy](space, cfg, feasible, prior)


def run_strategy(strategy: Strategy, evaluate: Callable[[list[Arch]], list[float]], budget: int,
                 batch: int) -> list[dict]:
    """Ask, evaluate, tell until ``budget`` distinct architectures are evaluated (or none new can be drawn); the
    records in evaluation order."""
    while len(strategy.records) < budget:
        asked = strategy.ask(min(batch, budget - len(strategy.records)))
        if not asked:
            break
        archs = [a for a, _ in asked]
        scores = evaluate(archs)
        strategy.tell([{"arch": strategy.space.format(a), "origin": o, "score": float(s)}
                       for (a, o), s in zip(asked, scores)])
    return strategy.records
