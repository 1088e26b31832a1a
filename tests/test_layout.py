"""The package layout keeps its promises: no import cycles, and no stage reads another stage's code.

Module-level and function-level imports both count (a cycle hidden inside a function is still a cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The pinas / flows modules ``path`` imports (a package import counts as its ``__init__``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..y import z
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    files = [p for top in ("pinas", "flows") for p in (ROOT / top).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in _imports(path, name, set(modules)))
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, cycles


def test_stages_do_not_import_each_other():
    graph = import_graph()
    stages = {n for n in graph if n.startswith("pinas.stages.")} - {"pinas.stages.common", "pinas.stages.graph"}
    for stage in stages:
        others = sorted(t for t in graph.successors(stage) if t in stages)
        assert not others, f"{stage} imports {others}: read other stages' outputs through pinas.io.stage_dirs"


def test_the_library_does_not_import_the_flows():
    graph = import_graph()
    offenders = [(a, b) for a, b in graph.edges if a.startswith("pinas") and b.startswith("flows")]
    assert not offenders, offenders


def test_every_deployment_loads_its_flow_and_its_parameters_make_a_valid_config():
    """What ``prefect deploy --all`` and a worker do with prefect.yaml, short of a server: load each entrypoint's
    flow, validate the deployment's parameters against it, and build the pipeline config they describe."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from flows.params import flow_config

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["name"] for d in deployments} >= {"demo", "paper", "study-demo", "bench-transnas"}
    for deployment in deployments:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]), use_placeholder_flow=False)
        params = flow.validate_parameters(deployment["parameters"])
        if flow.name == "pinas-bench":  # no pipeline config: its parameters are the benchmark's own
            continue
        config = flow_config(params)  # what the flow builds from them
        assert config.profile == deployment["parameters"]["profile"], deployment["name"]


def test_the_flows_reach_the_stages_only_through_the_table():
    """A stage is wired in one place, ``pinas.stages.graph``: the flows import no stage module's run function, and
    every stage module with a pipeline entry has its row."""
    from pinas.stages.graph import STAGES

    graph = import_graph()
    stage_modules = {n for n in graph if n.startswith("pinas.stages.")} - {"pinas.stages.common",
                                                                          "pinas.stages.graph"}
    for path in (ROOT / "flows").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in stage_modules:
                names = [alias.name for alias in node.names]
                assert not [n for n in names if n == "run" or n.startswith("run_")], (path.name, node.module, names)
    rows = {stage.run.__module__ for stage in STAGES}
    entries = {n for n in stage_modules if "def run(" in (ROOT / (n.replace(".", "/") + ".py")).read_text()}
    assert entries == rows, f"stage modules with a run() but no row in the table: {sorted(entries - rows)}"
