"""The stage table and the one rule for what a stage's result depends on (no Prefect API needed here).

Every field of every stage's config is walked (the list is derived from the config classes, not written here): a
field a class declares runtime-only must leave the cache key and the stage folder alone, every other field must
change them. The pipeline-level consequences (a runtime change is a cache hit; a stage rebuilt byte-identical keeps
the later stages cached) are in ``test_pipeline.py``.
"""
from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from flows.caching import stage_dir, stage_key, upstream_digests
from pinas.config import load_config
from pinas.stages.graph import BY_NAME, STAGES, check_needs, plan

#: values to try for free-text fields, where "change the last character" does not give a valid value
TEXT_ALTERNATIVES = {"space": ["resnest50", "demo"], "config": ["deeplabv3_pinas-trans_os8_ade20k.py"],
                     "latency_table": ["other.json"]}
#: fields valid only together with another change: (field, the other change)
JOINT = {"space": {"arch": "pinas-cls"}}


def leaves(model: BaseModel, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], bool]]:
    """(path, runtime-only?) of every leaf field, nested models walked; runtime as the owning class declares."""
    out = []
    runtime = getattr(type(model), "runtime_fields", frozenset())
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel) and name not in runtime:
            out += leaves(value, (*prefix, name))
        else:
            out.append(((*prefix, name), name in runtime))
    return out


def candidates(name: str, value: Any, annotation: Any) -> list[Any]:
    """Other values a field could take (some may be invalid for the model: the caller validates)."""
    literal = [a for a in get_args(annotation) if get_origin(a) is Literal] or \
        ([annotation] if get_origin(annotation) is Literal else [])
    if literal:
        return [v for v in get_args(literal[0]) if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, value + 2, value - 1]
    if isinstance(value, float):
        return [value * 2 or 0.5, value / 2, value + 0.05, value - 0.05]
    if isinstance(value, str):
        return TEXT_ALTERNATIVES.get(name, []) + [value[:-1] + ("2" if value[-1] != "2" else "3")]
    if isinstance(value, tuple):
        return [(*value[:-1],) or value * 2] + [(c, *value[1:]) for c in candidates(name, value[0], type(value[0]))]
    if isinstance(value, dict):
        return [{"x": 1}]
    if value is None:
        return [2, 0.5, "other.json", 32, 64, 224, 256]
    raise AssertionError(f"no candidate values for {name} = {value!r}")


def changed(model: BaseModel, path: tuple[str, ...]) -> BaseModel | None:
    """``model`` with the field at ``path`` set to another valid value, or None when none validates."""
    owner = model
    for part in path[:-1]:
        owner = getattr(owner, part)
    annotation = type(owner).model_fields[path[-1]].annotation
    current = getattr(owner, path[-1])
    for value in candidates(path[-1], current, annotation):
        dumped = model.model_dump()
        node = dumped
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        if len(path) == 1 and "arch" in dumped:
            node.update(JOINT.get(path[-1], {}))
        try:
            other = type(model).model_validate(dumped)
        except ValidationError:
            continue
        if getattr(_walk(other, path[:-1]), path[-1]) != current:
            return other
    return None


def _walk(model: BaseModel, path: tuple[str, ...]) -> Any:
    for part in path:
        model = getattr(model, part)
    return model


def steps():
    config = load_config(profile="demo")
    return [(step.name, step.config) for step in plan(config)]


@pytest.mark.parametrize(("stage", "cfg"), steps(), ids=[name for name, _ in steps()])
def test_runtime_fields_keep_the_key_and_every_other_field_changes_it(stage, cfg, tmp_path):
    key = stage_key(stage, cfg, {})
    stuck, leaks, fields = [], [], leaves(cfg)
    assert len(fields) >= 5
    for path, runtime in fields:
        other = changed(cfg, path)
        if other is None:
            stuck.append(".".join(path))
            continue
        other_key = stage_key(stage, other, {})
        if runtime and other_key != key:
            leaks.append(f"{'.'.join(path)} (runtime, changed the key)")
        if not runtime and other_key == key:
            leaks.append(f"{'.'.join(path)} (changes the result, kept the key)")
        assert (stage_dir(tmp_path, stage, other_key) == stage_dir(tmp_path, stage, key)) == (other_key == key)
    assert not stuck, f"no other valid value found for {stuck}: add one to TEXT_ALTERNATIVES"
    assert not leaks, leaks


def test_the_runtime_fields_that_users_change_are_declared_so():
    # the settings a user changes to go faster or see more, never to get another result
    config = load_config(profile="demo")
    assert {"num_workers", "log_every", "checkpoint_every", "device"} <= type(config.supernet).runtime_fields
    assert {"device", "num_workers", "cache_mb"} <= type(config.search.evaluator).runtime_fields


def test_a_changed_upstream_file_changes_the_key_and_a_changed_manifest_does_not():
    cfg = load_config(profile="demo").search
    base = {"supernet": {"handoff_sha256": "a" * 64, "manifest_sha256": "m1"}}
    same_files = {"supernet": {"handoff_sha256": "a" * 64, "manifest_sha256": "m2"}}
    other_files = {"supernet": {"handoff_sha256": "b" * 64, "manifest_sha256": "m1"}}
    assert stage_key("search", cfg, upstream_digests(base)) == stage_key("search", cfg, upstream_digests(same_files))
    assert stage_key("search", cfg, upstream_digests(base)) != stage_key("search", cfg, upstream_digests(other_files))


def test_the_plan_follows_the_table_and_the_settings():
    config = load_config(profile="demo")
    names = [step.name for step in plan(config)]
    assert names == ["supernet", "linear-probe", "search", "retrain", "transfer-coco", "transfer-ade20k",
                     "transfer-cityscapes", "export"]
    # the order of the table is an order of the dependencies
    for step in plan(config):
        assert all(names.index(up) < names.index(step.name) for up in step.reads), step
    label_free = load_config(profile="demo", overrides={"search": {"evaluator": {"proxy": "bn_gamma"}}})
    assert "linear-probe" not in [s.name for s in plan(label_free)]
    given = load_config(profile="demo", overrides={"arch": "11-11-11-11", "stages": ["retrain", "export"]})
    assert [(s.name, s.reads) for s in plan(given)] == [("retrain", ()), ("export", ("retrain",))]
    no_coco = load_config(profile="demo", overrides={"transfer": {"tasks": {"coco": {"enabled": False}}}})
    assert "transfer-coco" not in [s.name for s in plan(no_coco)]


def test_a_stage_without_what_it_reads_is_refused():
    config = load_config(profile="demo")
    for stages, missing in ((["search"], "supernet"), (["retrain"], "search"), (["transfer"], "retrain")):
        with pytest.raises(ValueError, match=f"needs \\['{missing}'\\]"):
            check_needs(config.model_copy(update={"stages": stages}))
    init = load_config(profile="demo", overrides={"arch": "11-11-11-11", "retrain": {"init_from_supernet": True},
                                                 "stages": ["supernet", "retrain"]})
    assert [s.reads for s in plan(init) if s.name == "retrain"] == [("supernet",)]
    with pytest.raises(ValueError, match="needs \\['supernet'\\]"):
        check_needs(init.model_copy(update={"stages": ["retrain"]}))


def test_every_stage_row_is_whole():
    for stage in STAGES:
        assert BY_NAME[stage.name] is stage
        assert callable(stage.run) and stage.run.__name__ == "run"
        assert stage.folder.__module__ == "pinas.io.stage_dirs"
        assert set(stage.reads) <= set(BY_NAME), stage.name
        assert stage.folder.HANDOFF, f"{stage.name}: which of its files do later stages read?"

