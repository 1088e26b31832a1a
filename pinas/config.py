"""The typed pipeline configuration: one section per stage, two profiles, YAML files merged on top.

The config is the Prefect flow's parameter, so the Prefect UI renders it as a form, and every section forbids
unknown keys: a typo in a YAML file is an error naming the key, never a silently ignored setting. A profile
(``pinas/profiles/<name>.yaml``) holds the overrides of the paper defaults that live in the stage config classes;
a user's YAML is merged over the profile it names (``profile: demo`` by default).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pinas.data.sources import DataConfig
from pinas.engine.launch import Nodes, slurm_nodes
from pinas.space import get_space
from pinas.stages.export import ExportConfig
from pinas.stages.graph import SEARCHED, SELECTABLE, STAGES, check_needs, plan
from pinas.stages.linear_probe import LinearProbeConfig
from pinas.stages.retrain import RetrainConfig
from pinas.stages.search import SearchConfig
from pinas.stages.study import StudyConfig
from pinas.stages.supernet import SupernetConfig
from pinas.stages.transfer import TransferConfig

PROFILES_DIR = Path(__file__).with_name("profiles")
Profile = Literal["demo", "paper"]
StageName = Literal[SELECTABLE]  # type: ignore[valid-type]  # the stage table's names, in pipeline order
DISTRIBUTED_SECTIONS = tuple(stage.section for stage in STAGES if stage.distributed)  # nproc / nodes follow devices
HOLDOUT_SECTIONS = ("supernet", "linear_probe", "search")  # they read data.search_holdout


class ConfigError(ValueError):
    """A pipeline configuration that cannot be loaded; the message names the file and the field."""


class PipelineConfig(BaseModel):
    """Everything a pipeline run needs. ``stages`` lists which stages run (in pipeline order)."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile = "demo"
    stages: list[StageName] = Field(default_factory=lambda: list(SELECTABLE))
    arch: str = Field(SEARCHED, description="architecture that is retrained, transferred and exported: 'searched' "
                      "takes the search stage's best, anything else is an architecture string or name of "
                      "retrain.space (and replaces retrain.arch)")
    devices: int = Field(1, ge=1, description="GPUs (processes) per node: every distributed stage's nproc unless "
                                              "the stage sets its own, and the pool the transfers share")
    oversubscribe: bool = Field(False, description="allow more processes per node than it has GPUs (or, on CPU, "
                                                   "cores); refused before training otherwise")
    nodes: Nodes = Field(default_factory=Nodes, description="machines: count, this one's rank, node 0's address "
                         "(under srun, from Slurm's environment where not given)")
    data: DataConfig = DataConfig()
    supernet: SupernetConfig = SupernetConfig()
    linear_probe: LinearProbeConfig = LinearProbeConfig()
    search: SearchConfig = SearchConfig()
    retrain: RetrainConfig = RetrainConfig()
    transfer: TransferConfig = TransferConfig()
    export: ExportConfig = ExportConfig()
    study: StudyConfig = Field(StudyConfig(), description="the ranking study (pinas-pipeline study), not a "
                                                          "pipeline stage")

    @model_validator(mode="before")
    @classmethod
    def _stages_share_devices_and_holdout(cls, data: Any) -> Any:
        """A distributed stage without its own ``nproc`` / ``nodes`` takes the pipeline's ``devices`` / node count;
        the stages that read ImageNet ``train/`` take ``data.search_holdout``."""
        if not isinstance(data, dict):
            return data
        devices = data.get("devices", 1)
        nodes = data.get("nodes") or {}
        slurm = slurm_nodes(dict(os.environ))
        if slurm and isinstance(nodes, dict):  # under srun: Slurm's nodes, where the config gives none
            nodes = {**slurm, **nodes}
        count = nodes.get("count", 1) if isinstance(nodes, dict) else getattr(nodes, "count", 1)
        holdout = _as_dict(_as_dict(data.get("data")).get("search_holdout"))
        data = dict(data, nodes=nodes)
        for section in DISTRIBUTED_SECTIONS:
            given = _as_dict(data.get(section))
            data[section] = {"nproc": devices, "nodes": count,
                             **({"holdout": holdout} if section in HOLDOUT_SECTIONS else {}), **given}
        return data

    @field_validator("arch", mode="before")
    @classmethod
    def _arch_is_text(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML reads 0123 as the number 83: the digits are gone before we see them
            raise ValueError(f"got the number {value}; write the architecture grouped by stage (e.g. 11-11-11-11) "
                             "or quote it")
        return value

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineConfig:
        for section in HOLDOUT_SECTIONS:
            if getattr(self, section).holdout != self.data.search_holdout:
                raise ValueError(f"{section}.holdout differs from data.search_holdout: the search would score images "
                                 "a stage trained on; set data.search_holdout only")
        stages = set(self.stages)
        if self.arch != SEARCHED:
            try:
                get_space(self.retrain.space).parse(self.arch)
            except ValueError as exc:
                raise ValueError(f"arch: {exc}") from None
        check_needs(self)
        if "search" in stages and self.search.max_latency_ms is not None and not self.search.latency_table:
            raise ValueError(f"search.max_latency_ms = {self.search.max_latency_ms} needs search.latency_table (a "
                             'JSON {"fixed_ms": x, "layers": [[ms per choice], ...]} measured on the target)')
        if "search" in stages and self.search.evaluator.proxy == "contrastive" and self.supernet.objective == "spos":
            raise ValueError("search.evaluator.proxy contrastive needs the momentum teacher of a contrastive "
                             "supernet (supernet.objective pi or same_path); a spos supernet is searched with "
                             "linear_probe or bn_gamma")
        if self.arch == SEARCHED and "search" in stages and self.retrain.space != self.supernet.space:
            raise ValueError(f"retrain.space {self.retrain.space!r} differs from supernet.space "
                             f"{self.supernet.space!r}: the searched architecture would not fit")
        return self


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    return dict(value or {})


def needed_datasets(config: PipelineConfig) -> tuple[str, ...]:
    """The datasets the stages of this pipeline read (ImageNet always: its classes are the networks' head)."""
    return tuple(dict.fromkeys(["imagenet", *(d for step in plan(config) for d in step.datasets)]))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, recursing into nested mappings."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def profile_dict(profile: str) -> dict[str, Any]:
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {profile!r}; profiles: "
                          + ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))))
    return _read_yaml(path)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid pipeline config ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, profile: str | None = None,
                overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Profile defaults, then the YAML file, then ``overrides``; validated as a whole."""
    user = _read_yaml(Path(path)) if path is not None else {}
    chosen = profile or user.get("profile") or "demo"
    merged = deep_merge(deep_merge(profile_dict(chosen), user), overrides or {})
    merged["profile"] = chosen
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(path) if path else f"profile {chosen}")) from None
