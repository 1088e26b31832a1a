"""Ranking diagnostics: how well does one score order architectures like another (method doc section 6)?

A proxy is only useful if it ranks architectures like their real accuracy does, so the question is a rank
correlation: Kendall tau-b (pairwise order agreement, tie-corrected) and Spearman rho (Pearson on average ranks),
with a bootstrap confidence interval because the number of architectures with a ground truth is small (tens).
The statistics are scipy's (``scipy.stats.kendalltau``, ``spearmanr``, ``bootstrap``).

Score files map an architecture to a number: a JSON object ``{arch: score}`` (or ``{arch: {key: score}}``), a
JSON list or JSON-lines file of records with an ``arch`` field (``candidates.jsonl`` of a search), or a CSV with
an ``arch`` column. Architectures are matched on their digits, so ``"301-3231"``, ``"3013231"`` and
``[3, 0, 1, 3, 2, 3, 1]`` are the same key. Command line::

    pinas-pipeline rank proxy.json accuracy.csv [--key-a score] [--key-b acc] [--bootstrap 1000]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (tie-corrected); NaN when either list is constant."""
    from scipy import stats  # ~1 s to import: loaded when a statistic is computed, not with the search

    x, y = _pair(x, y)
    return float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson on average ranks); NaN when either list is constant."""
    from scipy import stats

    x, y = _pair(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two equally long 1-d score lists, got shapes {x.shape} and {y.shape}")
    return x, y


def bootstrap_ci(x: Sequence[float], y: Sequence[float], stat: Callable[[np.ndarray, np.ndarray], float],
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat`` over (x, y) pairs resampled with replacement (``scipy.stats.bootstrap``,
    paired); resamples where the statistic is undefined (all ties) are left out of the interval."""
    from scipy import stats

    x, y = _pair(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: NaN statistics, dropped below
        result = stats.bootstrap((x, y), stat, paired=True, vectorized=False, n_resamples=n_boot,
                                 confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    values = result.bootstrap_distribution[np.isfinite(result.bootstrap_distribution)]
    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


# ------------------------------------------------------------------------------------------------ score files
def arch_key(arch: str | Sequence[int]) -> str:
    """The digits of an architecture, whatever its spelling (stage dashes, list literal, sequence)."""
    text = arch if isinstance(arch, str) else ",".join(str(int(c)) for c in arch)
    key = "".join(ch for ch in text if ch.isdigit())
    if not key:
        raise ValueError(f"{arch!r} is not an architecture")
    return key


def _value(item, key: str, where: str) -> float:
    if isinstance(item, dict):
        if key not in item:
            raise ValueError(f"{where}: no field {key!r} (fields: {', '.join(item)})")
        item = item[key]
    return float(item)


def load_scores(path: str | Path, key: str = "score") -> dict[str, float]:
    """Architecture -> score from a JSON / JSON-lines / CSV file (formats in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"{path}: empty CSV")
        columns = list(rows[0])
        arch_col = next((c for c in columns if c.lower() in ("arch", "architecture")), columns[0])
        value_col = key if key in columns else next(c for c in columns if c != arch_col)
        return {arch_key(r[arch_col]): float(r[value_col]) for r in rows}
    text = path.read_text()
    if path.suffix.lower() == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        if isinstance(data, dict):
            return {arch_key(a): _value(v, key, f"{path} [{a}]") for a, v in data.items()}
        records = data
    return {arch_key(r["arch"]): _value(r, key, f"{path} [{r.get('arch')}]") for r in records}


def compare(a: dict[str, float], b: dict[str, float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Kendall tau and Spearman rho over the architectures both mappings score, with bootstrap intervals."""
    common = sorted(set(a) & set(b))
    if len(common) < 3:
        raise ValueError(f"only {len(common)} architectures are scored in both files; need at least 3")
    x, y = np.array([a[k] for k in common]), np.array([b[k] for k in common])
    return {"n": len(common),
            "kendall_tau": kendall_tau(x, y), "kendall_tau_ci95": bootstrap_ci(x, y, kendall_tau, n_boot, seed),
            "spearman_rho": spearman_rho(x, y), "spearman_rho_ci95": bootstrap_ci(x, y, spearman_rho, n_boot, seed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pinas-pipeline rank",
                                     description="Rank correlation between two architecture -> score files.")
    parser.add_argument("a", type=Path, help="first score file (e.g. the proxy: candidates.jsonl, JSON, CSV)")
    parser.add_argument("b", type=Path, help="second score file (e.g. standalone accuracy)")
    parser.add_argument("--key-a", default="score", help="field holding the score in A's records (default score)")
    parser.add_argument("--key-b", default="score", help="field holding the score in B's records (default score)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = compare(load_scores(args.a, args.key_a), load_scores(args.b, args.key_b), args.bootstrap, args.seed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        tl, th = result["kendall_tau_ci95"]
        rl, rh = result["spearman_rho_ci95"]
        print(f"n = {result['n']}\nKendall tau  = {result['kendall_tau']:+.4f}  (95% CI {tl:+.4f} .. {th:+.4f})\n"
              f"Spearman rho = {result['spearman_rho']:+.4f}  (95% CI {rl:+.4f} .. {rh:+.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
