"""PNG pictures of training (loss and accuracy per step), of a search (fitness per generation, the Pareto front)
and of a ranking study (proxy vs top-1).

Figures are drawn on matplotlib's object API with the Agg canvas, never through ``pyplot``: no global backend
switch, no window, safe in worker threads and under Prefect. Files are written atomically like every artifact; a
binary stream (``io.BytesIO``) gets the PNG bytes instead, for the Prefect UI.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pinas.io.artifacts import atomic_write


def figure(size: tuple[float, float] = (6, 4)):
    """A new figure (inches) on the Agg canvas (matplotlib is imported here, when a plot is drawn: it costs a
    third of a second that a pipeline run served from the cache should not pay)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: str | Path | BinaryIO) -> Path | BinaryIO:
    fig.tight_layout()
    if hasattr(path, "write"):
        fig.savefig(path, format="png", dpi=120)
        return path
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


#: accuracy-like metrics of a step log, in percent: per step (train_top1) or per evaluation (top1, top5)
ACCURACY_KEYS = ("train_top1", "top1", "top5")


def plot_training(records: Sequence[dict], path: str | Path | BinaryIO, title: str = "") -> Path | BinaryIO:
    """A training curve from a step log (``metrics.jsonl``): the loss per logged step and, when the stage has any,
    its accuracies (train top-1 per step, validation top-1 / top-5 per evaluation) on a second panel."""
    fig = figure()
    loss = [r for r in records if "loss" in r]
    accuracy = {k: [r for r in records if k in r] for k in ACCURACY_KEYS}
    accuracy = {k: rows for k, rows in accuracy.items() if rows}
    axes = fig.subplots(1, 2 if accuracy else 1, squeeze=False)[0]
    ax = axes[0]
    ax.plot([r["step"] for r in loss], [r["loss"] for r in loss], ".-", color="tab:blue", ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if accuracy:
        ax = axes[1]
        for key, rows in accuracy.items():
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], ".-" if key == "train_top1" else "o-",
                    ms=4, label="train top-1 (batch)" if key == "train_top1" else f"validation {key}")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def plot_fitness(history: Sequence[dict], path: str | Path, proxy: str = "proxy") -> Path:
    """Best and mean score of each generation, and the best found so far. ``history`` rows: generation, best,
    mean, best_so_far."""
    fig = figure()
    ax = fig.add_subplot()
    gens = [h["generation"] for h in history]
    ax.plot(gens, [h["best_so_far"] for h in history], "-", color="tab:red", lw=4, alpha=0.4, label="best so far")
    ax.plot(gens, [h["best"] for h in history], "o-", color="tab:blue", ms=3, label="generation best")
    ax.plot(gens, [h["mean"] for h in history], "s--", color="tab:gray", ms=3, label="generation mean")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{proxy} score (higher is better)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def plot_pareto(candidates: Sequence[dict], front: Sequence[bool], path: str | Path, best: dict | None = None,
                proxy: str = "proxy") -> Path:
    """Every evaluated candidate in grey, the non-dominated ones highlighted, score against MMACs."""
    fig = figure()
    ax = fig.add_subplot()
    macs = np.array([c["macs"] for c in candidates]) / 1e6
    score = np.array([c["score"] for c in candidates])
    front = np.asarray(front, bool)
    ax.scatter(macs[~front], score[~front], s=10, color="0.7", label="evaluated")
    order = np.argsort(macs[front])
    ax.step(macs[front][order], score[front][order], "o-", where="post", color="tab:orange", ms=5,
            label="Pareto front")
    if best is not None:
        ax.scatter([best["macs"] / 1e6], [best["score"]], marker="*", s=160, color="tab:red", zorder=3, label="best")
    ax.set_xlabel("MMACs")
    ax.set_ylabel(f"{proxy} score (higher is better)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def plot_study(rows: Sequence[dict], proxy: str, stats: dict, path: str | Path, title: str = "") -> Path:
    """One point per retrained architecture: its ``proxy`` score against its seed-mean top-1, a bar spanning its
    seeds' top-1; the title gives Kendall tau and Spearman rho with their 95% intervals."""
    fig = figure()
    ax = fig.add_subplot()
    x = np.array([r[proxy] for r in rows])
    mean = np.array([r["top1_mean"] for r in rows])
    lo = mean - np.array([min(r["top1"]) for r in rows])
    hi = np.array([max(r["top1"]) for r in rows]) - mean
    ax.errorbar(x, mean, yerr=[lo, hi], fmt="o", ms=5, capsize=3, color="tab:blue", ecolor="0.6",
                label="seed-mean top-1 (bar: range over seeds)")
    tau_lo, tau_hi = (_num(v) for v in stats["kendall_tau_ci95"])
    ax.set_title(f"{title}: {proxy}  tau {_num(stats['kendall_tau'])} [{tau_lo}, {tau_hi}]  "
                 f"rho {_num(stats['spearman_rho'])}", fontsize=9)
    ax.set_xlabel(f"{proxy} score (higher is better)")
    ax.set_ylabel("stand-alone top-1 (%)")
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.locator_params(axis="x", nbins=5)  # proxy scores often differ in the third decimal: long tick labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.2f}"
