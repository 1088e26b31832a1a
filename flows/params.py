"""The flows' parameters as the Prefect run form shows them: a few typed knobs, then ``overrides``.

The typed config has well over a hundred settings in ten sections, and its effective defaults depend on the profile
(the demo profile overrides most of the paper defaults the classes hold). A form of the whole config would show the
class defaults, not what a run of the chosen profile would use, so the flows take instead the settings people change
between runs as plain typed fields: the profile (a select), the run root, the dataset folders, the GPUs per node,
the stages (a multi-select), the architecture, and the study's supernets and size. An empty knob ("" / 0 / [])
means "as the profile and config file say": Prefect's form renders an optional field as a type toggle set to None,
which nobody can fill. Everything else goes through ``overrides``, a nested mapping merged last. The CLI, the
deployments and the UI all build their config with :func:`flow_config`.
"""
from __future__ import annotations

from typing import Any

from pinas.config import PipelineConfig, deep_merge, load_config

#: the dataset knobs, by the ``data.<name>`` setting they fill
DATASETS = ("imagenet", "coco", "ade20k", "cityscapes")


def knob_overrides(stages: list[str] | None = None, arch: str = "", devices: int = 0,
                   folders: dict[str, str] | None = None, study: dict[str, Any] | None = None) -> dict[str, Any]:
    """The knobs that are set, as a nested override mapping (unset knobs leave the config alone)."""
    out: dict[str, Any] = {}
    if stages:
        out["stages"] = list(stages)
    if arch:
        out["arch"] = arch
    if devices:
        out["devices"] = devices
    data = {name: path for name, path in (folders or {}).items() if path}
    if data:
        out["data"] = data
    study = {k: v for k, v in (study or {}).items() if v}
    if study:
        out["study"] = study
    return out


def flow_config(profile: str, config_file: str, overrides: dict[str, Any] | None, **knobs: Any) -> PipelineConfig:
    """The profile, then the config file on the worker (if any), then the knobs, then ``overrides``; validated
    as a whole (a bad value is a :class:`~pinas.config.ConfigError` naming the field)."""
    return load_config(config_file or None, profile, deep_merge(knob_overrides(**knobs), overrides or {}))
