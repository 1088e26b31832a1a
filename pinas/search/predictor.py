"""The surrogate of the predictor-guided search (:class:`pinas.search.strategies.PredictorSearch`): a Gaussian
process ranks many cheap proposals and only the most promising are evaluated (the idea of PNAS and Once-for-All's
predictor search; BO with a GP, as in BANANAS' baselines).

* **Surrogate**: a GP whose kernel is ``exp(-theta * d(a, b))``, ``d`` the number of decisions where two
  architectures differ (Hamming) plus ``w`` times the distance of their prior scores' ranks. It needs no encoding of
  the space beyond its decisions, captures interactions between decisions locally, and gives a mean and a variance
  in closed form. The targets are the evaluated scores' normal scores (ranks mapped to Gaussian quantiles), so the
  few collapsed architectures (a cell with no path, a diverged path of a supernet) do not dominate the fit and only
  the order of the scores matters. ``theta``, the noise and the prior's weight ``w`` are chosen by marginal
  likelihood on a small grid whenever the evaluated architectures have grown by a third since the last choice
  (in between, the GP is refitted with the chosen ones); ``w = 0`` is on the grid, so a prior that does not agree
  with the evaluated scores is ignored.
* **Acquisition**: expected improvement over the best evaluated, with the **exploration** it implies (EI values
  uncertain architectures as well as good predictions). A batch is picked greedily, each pick's variance shrunk as
  if it had been evaluated at its predicted mean (the "kriging believer": the mean stays, the variance of everything
  near the pick falls), so the batch spreads out instead of piling onto one optimum.
* **Proposals**: every unevaluated architecture when the space has at most ``proposals`` of them (TransNAS-Bench's
  4,096 cells), else ``proposals`` draws: half random, half mutants of the best ten evaluated, each decision
  re-drawn with probability 1 to 3 in the number of decisions (the 4^16 ResNeSt space).
* **Zero-cost warm start**: with a prior (Zen-NAS on a table, BN-NAS's gamma on a supernet), the first ``initial``
  architectures are the best by the prior of ``20 * initial`` random ones, and the prior enters the kernel (above).

Computation is numpy and scipy (a Cholesky per grid point, triangular solves): a batch of 10 from 100 evaluated
architectures and 4,000 proposals takes milliseconds.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, stats

THETAS = (0.3, 0.6, 1.0, 1.5, 2.5)
NOISES = (1e-3, 1e-2, 1e-1)
PRIOR_WEIGHTS = (0.0, 1.0, 2.0, 4.0)


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Ranks mapped to standard normal quantiles (ties share their mean rank)."""
    return stats.norm.ppf((stats.rankdata(values) - 0.5) / len(values))


def unit_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (0 for a single value)."""
    return (stats.rankdata(values) - 1) / max(len(values) - 1, 1)


def one_hot(archs: np.ndarray, choices: int) -> np.ndarray:
    """(n, D) choices -> (n, D * choices) indicators: the Hamming distance is D minus their dot product."""
    return np.eye(choices, dtype=np.float32)[archs].reshape(len(archs), -1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Decisions that differ between every row of one-hot ``a`` (m, D * C) and ``b`` (n, D * C): (m, n)."""
    decisions = a[0].sum() if len(a) else 0
    return decisions - a @ b.T


class GaussianProcess:
    """The surrogate above, fitted on evaluated architectures ``x`` (one-hot, :func:`one_hot`), their prior ranks
    and their scores; ``hyper`` (``[weight, theta, noise]``, e.g. an earlier fit's :attr:`hyper`) skips the grid."""

    def __init__(self, x: np.ndarray, prior: np.ndarray, y: np.ndarray, hyper: list[float] | None = None):
        self.x, self.prior, self.t = x, prior, normal_scores(y)
        h, p = hamming(x, x), np.abs(prior[:, None] - prior[None, :])
        grid = [tuple(hyper)] if hyper else [(w, theta, noise) for w in (PRIOR_WEIGHTS if prior.any() else (0.0,))
                                             for theta in THETAS for noise in NOISES]
        best = None
        for w, theta, noise in grid:
            chol = linalg.cholesky(np.exp(-theta * (h + w * p)) + noise * np.eye(len(h)), lower=True)
            alpha = linalg.cho_solve((chol, True), self.t)
            evidence = -0.5 * self.t @ alpha - np.log(np.diag(chol)).sum()
            if best is None or evidence > best[0]:
                best = (evidence, w, theta, noise, chol, alpha)
        _, self.weight, self.theta, self.noise, self.chol, self.alpha = best

    @property
    def hyper(self) -> list[float]:
        return [float(self.weight), float(self.theta), float(self.noise)]

    def kernel(self, a: np.ndarray, prior_a: np.ndarray, b: np.ndarray, prior_b: np.ndarray) -> np.ndarray:
        return np.exp(-self.theta * (hamming(a, b) + self.weight * np.abs(prior_a[:, None] - prior_b[None, :])))

    def pick(self, pool: np.ndarray, prior: np.ndarray, n: int) -> list[int]:
        """Indices of ``n`` pool rows by expected improvement, greedily, with the kriging believer."""
        k = self.kernel(pool, prior, self.x, self.prior)
        mean = k @ self.alpha
        v = linalg.solve_triangular(self.chol, k.T, lower=True)  # (n_train, m)
        var = np.clip(1.0 - (v * v).sum(0), 1e-12, None)
        best, rows, picks = self.t.max(), [], []
        for _ in range(min(n, len(pool))):
            sd = np.sqrt(var)
            z = (mean - best) / sd
            ei = (mean - best) * stats.norm.cdf(z) + sd * stats.norm.pdf(z)
            ei[picks] = -np.inf
            j = int(np.argmax(ei))
            picks.append(j)
            cov = self.kernel(pool, prior, pool[j:j + 1], prior[j:j + 1])[:, 0] - v.T @ v[:, j]
            for row in rows:
                cov -= row * row[j]
            row = cov / np.sqrt(var[j] + self.noise)
            var = np.clip(var - row * row, 1e-12, None)
            rows.append(row)
        return picks
