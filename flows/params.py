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

#: the flows' knobs by parameter name, by where they go: the top level, ``data.<name>``, ``study.<name>``
TOP_LEVEL = ("stages", "arch", "devices")
DATASETS = ("imagenet", "coco", "ade20k", "cityscapes")
STUDY = ("supernets", "archs")
#: the other parameters (run_root is where the run lives, not a setting of it)
NOT_CONFIG = ("profile", "config_file", "overrides", "run_root")


def knob_overrides(parameters: dict[str, Any]) -> dict[str, Any]:
    """The knobs that are set, as a nested override mapping (an unset knob, "" / 0 / [], leaves the config alone)."""
    unknown = set(parameters) - {*TOP_LEVEL, *STUDY, *DATASETS, *NOT_CONFIG}
    if unknown:
        raise TypeError(f"flow parameters without a place in the config: {sorted(unknown)}")
    out: dict[str, Any] = {k: parameters[k] for k in TOP_LEVEL if parameters.get(k)}
    for section, names in (("data", DATASETS), ("study", STUDY)):
        given = {k: parameters[k] for k in names if parameters.get(k)}
        if given:
            out[section] = given
    return out


def flow_config(parameters: dict[str, Any]) -> PipelineConfig:
    """The config a flow run's parameters describe: the profile, then the config file on the worker (if any), then
    the knobs, then ``overrides``; validated as a whole (a bad value is a :class:`~pinas.config.ConfigError`
    naming the field). ``parameters`` are the flow's, by name (the flows pass ``locals()`` as they start)."""
    return load_config(parameters.get("config_file") or None, parameters.get("profile", "demo"),
                       deep_merge(knob_overrides(parameters), parameters.get("overrides") or {}))
