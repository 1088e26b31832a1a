"""What the search may return: bounds on params, MACs and latency, and the Pareto front of what it found.

Costs come from the per-layer tables of :class:`pinas.models.cost.CostModel` (params, MACs) and, for latency, a
measured :class:`LatencyTable` or any ``arch -> ms`` function. A bound that no architecture of the space can meet is
reported before anything is evaluated (:meth:`Constraints.check_reachable`).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pinas.models.cost import CostModel
from pinas.space import Arch, SearchSpace

LatencyFn = Callable[[Arch], float]


class ConstraintConfig(BaseModel):
    """Bounds on the searched architecture; ``None`` is unbounded."""

    model_config = ConfigDict(extra="forbid")

    max_params_m: float | None = Field(None, gt=0, description="constraint on millions of parameters")
    min_params_m: float | None = Field(None, ge=0)
    max_macs_m: float | None = Field(None, gt=0, description="constraint on millions of MACs (FLOPs / 2)")
    min_macs_m: float | None = Field(None, ge=0)
    max_latency_ms: float | None = Field(None, gt=0, description="needs latency_table or a latency_fn")
    latency_table: str | None = Field(None, description='pinas-pipeline latency-table JSON (or a hand-made '
                                      '{"fixed_ms": x, "layers": [[ms per choice], ...]})')
    latency_margin: bool = Field(True, description="bound the table's predictions by max_latency_ms / (1 + the "
                                 "table's MAPE on whole networks), so the measured latency stays within the bound")

    @model_validator(mode="after")
    def _check_bounds(self) -> ConstraintConfig:
        for low, high in (("min_params_m", "max_params_m"), ("min_macs_m", "max_macs_m")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} = {lo} is above {high} = {hi}")
        return self


class LatencyTable:
    """Latency as a fixed part plus one measured entry per (layer, choice), in milliseconds.

    ``validation`` is what the table's own check on whole networks found (``pinas-pipeline latency-table``), when the
    file holds one: ``trusted`` false means its error on whole networks is above its threshold."""

    def __init__(self, fixed_ms: float, layers: Sequence[Sequence[float]], validation: dict | None = None):
        self.fixed_ms, self.layers, self.validation = float(fixed_ms), np.asarray(layers, float), validation

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace) -> LatencyTable:
        """The table in ``path`` for ``space``; a table of another space or input size, or a malformed one, is a
        ``ValueError`` naming the field."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency_table {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"latency_table {path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"latency_table {path}: expected a JSON object with fixed_ms and layers")
        made_for = data.get("settings") or {}
        for field, wanted in (("space", space.name), ("input_size", space.input_size)):
            if field in made_for and made_for[field] != wanted:
                raise ValueError(f"latency_table {path}: measured for settings.{field} = {made_for[field]!r}, this "
                                 f"search needs {wanted!r}; measure one for it (pinas-pipeline latency-table)")
        if "layers" not in data:
            raise ValueError(f"latency_table {path}: missing field 'layers' (ms per choice, one row per layer)")
        fixed = data.get("fixed_ms", 0.0)
        if not isinstance(fixed, (int, float)) or isinstance(fixed, bool) or fixed < 0:
            raise ValueError(f"latency_table {path}: fixed_ms must be a number of ms >= 0, got {fixed!r}")
        layers = data["layers"]
        if not isinstance(layers, list) or len(layers) != space.num_layers:
            got = f"{len(layers)} rows" if isinstance(layers, list) else type(layers).__name__
            raise ValueError(f"latency_table {path}: layers must be a list of {space.num_layers} rows (space "
                             f"{space.name!r}), got {got}")
        for i, row in enumerate(layers):
            if not isinstance(row, list) or len(row) != space.num_choices:
                raise ValueError(f"latency_table {path}: layers[{i}] must list {space.num_choices} ms values")
            for c, value in enumerate(row):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                    raise ValueError(f"latency_table {path}: layers[{i}][{c}] must be a number of ms >= 0, got "
                                     f"{value!r}")
        return cls(fixed, layers, data.get("validation"))

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
    def from_config(cls, cfg: ConstraintConfig, latency: LatencyFn | None = None) -> Constraints:
        """The bounds of ``cfg``; with ``cfg.latency_margin`` and a checked table, the latency bound on the table's
        predictions shrinks by the table's own error on whole networks."""
        def scale(v):
            return None if v is None else v * 1e6
        max_latency = cfg.max_latency_ms
        check = getattr(latency, "validation", None)
        if max_latency is not None and cfg.latency_margin and check:
            max_latency = max_latency / (1 + check["mape_pct"] / 100)
        return cls(scale(cfg.min_params_m), scale(cfg.max_params_m), scale(cfg.min_macs_m), scale(cfg.max_macs_m),
                   max_latency)

    def satisfied(self, rec: dict) -> bool:
        checks = ((self.min_params, rec["params"], 1), (self.max_params, rec["params"], -1),
                  (self.min_macs, rec["macs"], 1), (self.max_macs, rec["macs"], -1),
                  (self.max_latency_ms, rec.get("latency_ms"), -1))
        return all(bound is None or (value - bound) * sign >= 0 for bound, value, sign in checks)

    @property
    def bounds_cost(self) -> bool:
        """Whether a params or MACs bound is set (checking one needs the cost table)."""
        return any(b is not None for b in (self.min_params, self.max_params, self.min_macs, self.max_macs))

    def check_reachable(self, cost: CostModel | Callable[[], CostModel], latency: LatencyTable | None) -> None:
        """Fail early, naming the field, when one bound lies outside everything the space can reach.

        ``cost`` may be a function that builds the table: it is called only when a params or MACs bound is set
        (building it traces the supernet, a second and more that a run without such bounds need not pay).
        """
        if self.bounds_cost:
            self._check_cost_reachable(cost if isinstance(cost, CostModel) else cost())
        if latency is not None and self.max_latency_ms is not None:
            fastest = latency.fixed_ms + latency.layers.min(1).sum()
            if self.max_latency_ms < fastest:
                raise ValueError(f"no architecture satisfies max_latency_ms = {self.max_latency_ms}: the fastest "
                                 f"takes {fastest:.3f} ms by the latency table")

    def _check_cost_reachable(self, cost: CostModel) -> None:
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


@functools.lru_cache(maxsize=8)
def cost_model(space: SearchSpace, num_classes: int) -> CostModel:
    """The cost table at the space's input size, built once per process (it traces the supernet)."""
    return CostModel(space, space.input_size, num_classes)
