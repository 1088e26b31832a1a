"""The ranking study's statistics: which architectures to retrain, and how well each proxy ranks them.

Pi-NAS's claim (method doc section 6) is a ranking claim: the supernet's estimate of an architecture should order
architectures like their stand-alone accuracy does. A study retrains N architectures, scores each with every proxy
and reports Kendall tau / Spearman rho per proxy (``pinas.search.ranking``, i.e. ``scipy.stats``) with bootstrap
intervals. Retraining is noisy, so the study also retrains every architecture with several seeds and reports the
**seed-to-seed** tau (accuracies of one seed against another's): no proxy can rank better than the ground truth
agrees with itself, and a proxy tau inside the seed noise is no evidence of signal.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from pinas.models.cost import CostModel
from pinas.search.ranking import bootstrap_ci, kendall_tau, spearman_rho
from pinas.space import SearchSpace


def random_pool(space: SearchSpace, size: int, seed: int) -> list[tuple[int, ...]]:
    """``size`` distinct uniformly drawn architectures (fewer if the space is smaller), in draw order."""
    rng = np.random.default_rng(seed)
    drawn: dict[tuple[int, ...], None] = {}
    for _ in range(size * 20):
        if len(drawn) == size:
            break
        drawn[space.sample(rng)] = None
    return list(drawn)


def pick_architectures(space: SearchSpace, n: int, how: str, seed: int, pool: int, cost: CostModel | None = None,
                       scores: Mapping[tuple[int, ...], float] | None = None) -> list[str]:
    """``n`` distinct architectures of ``space`` from a pool of ``pool`` random ones:

    * ``random``: the first ``n`` drawn;
    * ``cost``: at ``n`` evenly spaced quantiles of their MACs, so the study spans the cost range rather than the
      crowded middle, where accuracies are hardest to tell apart;
    * ``proxy``: half at evenly spaced quantiles of the proxy's ``scores`` of the pool (the range the search sees,
      not only what a search would keep), the other half uniformly random from the rest of the pool.
    """
    archs = random_pool(space, max(pool, n), seed)
    if len(archs) < n:
        raise ValueError(f"space {space.name!r} has only {len(archs)} distinct architectures; asked for {n}")
    if how == "random":
        chosen = archs[:n]
    elif how in ("cost", "proxy"):
        if how == "cost" and cost is None or how == "proxy" and scores is None:
            raise ValueError(f"pick {how!r} needs the {'cost model' if how == 'cost' else 'proxy scores'}")
        key = (lambda a: (cost(a).macs, a)) if how == "cost" else (lambda a: (scores[a], a))
        ordered = sorted(archs, key=key)
        spread = n if how == "cost" else -(-n // 2)
        chosen = [ordered[i] for i in np.linspace(0, len(ordered) - 1, spread).round().astype(int)]
        rest = [a for a in archs if a not in set(chosen)]
        rng = np.random.default_rng([seed, 1])
        chosen += [rest[i] for i in rng.choice(len(rest), size=n - len(chosen), replace=False)]
    else:
        raise ValueError(f"unknown pick {how!r} (cost, random, proxy)")
    return [space.format(a) for a in chosen]


def seed_noise(accuracies: Mapping[str, Sequence[float]]) -> dict:
    """How much retraining disagrees with itself, and whether the architectures differ at all beyond that.

    ``mean_std``: the spread of one architecture's top-1 over seeds (averaged); ``between_arch_std``: the spread of
    the seed-mean top-1 over architectures; ``seed_to_seed_kendall_tau``: rank agreement of one seed's accuracies
    with another's (mean over pairs of seeds); ``anova_p``: one-way ANOVA (``scipy.stats.f_oneway``) of top-1 by
    architecture — a large p says the retrained accuracies do not tell these architectures apart, so no proxy can be
    shown to rank them. The seed statistics are None with fewer than two seeds.
    """
    from scipy import stats

    seeds = min(len(v) for v in accuracies.values())
    table = np.array([list(v)[:seeds] for v in accuracies.values()])
    out = {"seeds": seeds, "between_arch_std": float(table.mean(axis=1).std(ddof=1)), "mean_std": None,
           "max_range": None, "seed_to_seed_kendall_tau": None, "anova_p": None}
    if seeds < 2:
        return out
    taus = [kendall_tau(table[:, i], table[:, j]) for i, j in itertools.combinations(range(seeds), 2)]
    with np.errstate(all="ignore"):
        p = stats.f_oneway(*table).pvalue
    out.update(mean_std=float(table.std(axis=1, ddof=1).mean()), max_range=float(np.ptp(table, axis=1).max()),
               seed_to_seed_kendall_tau=float(np.nanmean(taus)) if np.isfinite(taus).any() else None,
               anova_p=_defined(p))
    return out


def correlations(scores: Mapping[str, float], accuracy: Mapping[str, float], n_boot: int, seed: int) -> dict:
    """Kendall tau and Spearman rho of a proxy's scores against the (seed-mean) accuracy, with 95% intervals;
    None where undefined (a proxy or accuracy that is the same for every architecture), so the JSON stays JSON."""
    archs = sorted(scores)
    x = np.array([scores[a] for a in archs])
    y = np.array([accuracy[a] for a in archs])
    return {"n": len(archs),
            "kendall_tau": _defined(kendall_tau(x, y)),
            "kendall_tau_ci95": [_defined(v) for v in bootstrap_ci(x, y, kendall_tau, n_boot, seed)],
            "spearman_rho": _defined(spearman_rho(x, y)),
            "spearman_rho_ci95": [_defined(v) for v in bootstrap_ci(x, y, spearman_rho, n_boot, seed)]}


def _defined(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
