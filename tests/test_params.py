"""The flows' parameters: a form a person can fill (no None toggles, every field described), knobs that land in
the config where they say, and the CLI's parameters building the same config as the CLI itself."""
from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from flows.params import flow_config
from flows.pipeline import pinas_pipeline
from flows.study import pinas_study
from pinas.config import ConfigError, load_config


@pytest.mark.parametrize("flow", [pinas_pipeline, pinas_study], ids=["pipeline", "study"])
def test_every_parameter_is_a_described_field_without_a_none_toggle(flow):
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    props = schema["properties"]
    assert props["profile"]["enum"] == ["demo", "paper"]
    assert props["overrides"]["type"] == "object"
    for name, prop in props.items():
        assert "anyOf" not in prop and "$ref" not in prop, name  # Prefect's form shows these as a type toggle
        assert prop.get("description"), f"{name} has no description in the run form"
        assert "default" in prop, name


def test_knobs_fill_their_settings_and_empty_knobs_keep_the_profile():
    base = load_config(profile="paper")
    unset = {"profile": "paper", "run_root": "r", "stages": [], "arch": "", "devices": 0, "imagenet": "", "coco": "",
             "ade20k": "", "cityscapes": "", "overrides": {}, "config_file": ""}
    assert flow_config(unset) == base
    config = flow_config({**unset, "stages": ["supernet", "search"], "devices": 8, "imagenet": "/data/imagenet",
                          "overrides": {"supernet": {"epochs": 3}}})
    assert config.stages == ["supernet", "search"] and config.devices == 8 and config.supernet.nproc == 8
    assert str(config.data.imagenet) == "/data/imagenet" and config.data.coco == base.data.coco
    assert config.supernet.epochs == 3
    # overrides are merged last: they win over a knob
    assert flow_config({"devices": 4, "overrides": {"devices": 2}}).devices == 2
    study = flow_config({"supernets": ["pi", "spos"], "archs": 0})
    assert study.study.supernets == ["pi", "spos"] and study.study.archs == load_config().study.archs


@pytest.mark.parametrize("flow", [pinas_pipeline, pinas_study], ids=["pipeline", "study"])
def test_every_flow_parameter_has_a_place_in_the_config(flow):
    defaults = {name: prop["default"] for name, prop in
                parameter_schema(flow.fn).model_dump_for_openapi()["properties"].items()}
    assert flow_config(defaults) == load_config()  # the form's defaults are the demo profile as it is
    with pytest.raises(TypeError, match="without a place"):
        flow_config({**defaults, "epochs": 3})


def test_a_bad_knob_is_a_config_error_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="arch"):
        flow_config({"arch": "9-9"})
    with pytest.raises(ConfigError, match="does not exist"):
        flow_config({"config_file": str(tmp_path / "absent.yaml")})
