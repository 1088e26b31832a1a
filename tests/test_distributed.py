"""Every stage on several processes: the distributed search equals the one-process search, the distributed probe
agrees across ranks, 2 "nodes" x 2 processes compute what 1 node x 4 does, transfers never share a device.

gloo on CPU, torchrun on localhost; the configs are the smallest that still run every code path.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import HOLDOUT, TINY_EVAL

from pinas.config import load_config
from pinas.engine.launch import first_slurm_host
from pinas.engine.placement import DevicePool, share
from pinas.io.artifacts import load_tensors
from pinas.io.stage_dirs import SearchDir
from pinas.stages.search import SearchConfig, run_search
from pinas.stages.supernet import SupernetConfig, run_supernet
from pinas.stages.transfer import TransferConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_search_on_two_processes_equals_the_one_process_search(trained_supernet, eval_imagenet, tmp_path):
    cfg = SearchConfig(holdout=HOLDOUT, evaluator=TINY_EVAL, population=6, generations=2, parents=2, mutations=3,
                       crossovers=3, top_k=3)
    data = (eval_imagenet / "train",)
    one = run_search(cfg, trained_supernet, *data, tmp_path / "one")
    two = run_search(cfg.model_copy(update={"nproc": 2}), trained_supernet, *data, tmp_path / "two")
    a, b = SearchDir(tmp_path / "one"), SearchDir(tmp_path / "two")
    assert b.result() == a.result() and b.candidates() == a.candidates()
    assert one["metrics"]["best_arch"] == two["metrics"]["best_arch"]
    assert "2 process" not in json.dumps(a.result())  # nothing about the processes leaks into the result
    # resuming a distributed search at a generation (its state written by rank 0) ends the same way
    three = tmp_path / "three"
    run_search(cfg.model_copy(update={"nproc": 2}), trained_supernet, *data, three, stop_after_generation=0)
    assert SearchDir(three).read_state()["generation"] == 0
    run_search(cfg, trained_supernet, *data, three)
    assert SearchDir(three).result() == a.result()


WORKER = """
import json, sys, torch
from pathlib import Path
import pinas.stages.linear_probe as lp
cfg = lp.LinearProbeConfig.model_validate_json(Path(sys.argv[1]).read_text())
out, paths, heads = Path(sys.argv[4]), [], []
original = torch.nn.Linear
class Capturing(original):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        heads.append(self)
lp.nn.Linear = Capturing
draw = lp.broadcast_object
lp.broadcast_object = lambda obj, info: paths.append(list(draw(obj, info))) or tuple(paths[-1])
lp.train_probe(cfg, Path(sys.argv[2]), Path(sys.argv[3]), out)
rank = torch.distributed.get_rank()
(out / f"paths-{rank}.json").write_text(json.dumps(paths))
torch.save(heads[-1].state_dict(), out / f"head-{rank}.pt")  # after the supernet's projector
"""


@pytest.mark.slow
def test_the_distributed_probe_draws_one_path_for_all_ranks(random_supernet, demo_imagenet, tmp_path):
    import subprocess

    from pinas.stages.linear_probe import LinearProbeConfig

    cfg = LinearProbeConfig(epochs=1, batch_size=16, base_lr=0.1, base_batch=16, num_workers=0, device="cpu",
                            log_every=2, checkpoint_every=100, val_archs=0, holdout=HOLDOUT)
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "probe"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(tmp_path / "worker.py"), str(tmp_path / "cfg.json"), str(random_supernet),
                    str(demo_imagenet / "train"), str(out)], check=True, capture_output=True, timeout=600)
    p0, p1 = (json.loads((out / f"paths-{r}.json").read_text()) for r in (0, 1))
    # 180 images (200 less the search holdout) / a global batch of 16 = 11 steps, varied paths
    assert p0 == p1 and len(p0) == 11 and len({tuple(p) for p in p0}) > 1
    h0, h1 = (torch.load(out / f"head-{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(h0[k], h1[k]) for k in h0)  # DDP kept the ranks' heads identical
    assert torch.equal(load_tensors(out / "probe.pt")["weight"], h0["weight"])  # rank 0 wrote it


SHUFFLE_WORKER = """
import json, sys, numpy as np, torch
from pathlib import Path
from pinas.engine.distributed import init_distributed
from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi
from pinas.space import DEMO
info = init_distributed("cpu")
torch.manual_seed(0)
model = SupernetPi(PiNASBackbone(DEMO), 32, 16, 32, 0.2, 0.99).double().eval()
for m in model.teacher.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        torch.nn.init.uniform_(m.weight, 0.5, 1.5)
arch = DEMO.sample(np.random.default_rng(0))
x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(info.rank))
torch.manual_seed(info.rank + 10)  # the ranks' own RNG streams differ; the permutation is rank 0's
with torch.no_grad():
    keys = model.keys(x, arch, info)
    own = torch.cat([model.teacher(x[i:i + 1], arch) for i in range(4)])
Path(sys.argv[1], f"rank-{info.rank}.json").write_text(json.dumps({"max_diff": float((keys - own).abs().max())}))
"""


@pytest.mark.slow
def test_shuffle_bn_across_ranks_returns_every_key_to_its_own_image(tmp_path):
    """Under 2-process gloo the teacher embeds a permutation of the gathered batch and each rank gets back exactly
    its own images' keys (with BN frozen, a key is its image's embedding alone)."""
    import subprocess

    (tmp_path / "worker.py").write_text(SHUFFLE_WORKER)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(tmp_path / "worker.py"), str(tmp_path)], check=True, capture_output=True, timeout=600)
    diffs = [json.loads((tmp_path / f"rank-{r}.json").read_text())["max_diff"] for r in (0, 1)]
    assert all(d < 1e-12 for d in diffs), diffs


def _tiny_supernet(**kw) -> SupernetConfig:
    return SupernetConfig(space="demo", epochs=0.2, batch_size=16, queue_size=32, projector_hidden=32,
                          feature_dim=16, base_batch=16, num_workers=0, device="cpu", checkpoint_every=100,
                          log_every=1, holdout=HOLDOUT, **kw)


SLURM_NODE = """
import json, sys
from pathlib import Path
from pinas.config import load_config
from pinas.stages.supernet import run_supernet
cfg = load_config(profile="demo", overrides=json.loads(sys.argv[1]))
assert (cfg.nodes.count, cfg.supernet.nodes, cfg.supernet.nproc) == (2, 2, 2), cfg.nodes
run_supernet(cfg.supernet, Path(sys.argv[2]), Path(sys.argv[3]), rendezvous=cfg.nodes)
"""


@pytest.mark.slow
def test_two_nodes_of_two_processes_under_slurm_compute_what_one_node_of_four_does(demo_imagenet, tmp_path):
    """Each node is started as ``srun`` would: the same command, Slurm's environment, no ``nodes`` in the config
    but its port; the node count, the rank and node 0's address come from Slurm."""
    train = demo_imagenet / "train"
    single = run_supernet(_tiny_supernet(nproc=4), train, tmp_path / "one-node")
    tiny = _tiny_supernet().model_dump(mode="json", exclude={"nproc", "nodes", "holdout"})
    overrides = {"devices": 2, "nodes": {"master_port": _free_port()}, "supernet": tiny,
                 "data": {"search_holdout": HOLDOUT.model_dump()}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    nodes = [subprocess.Popen([sys.executable, "-c", SLURM_NODE, json.dumps(overrides), str(train),
                               str(tmp_path / "two-nodes")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**env, "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": str(rank),
                                              "SLURM_JOB_NODELIST": "localhost,node-b"})
             for rank in (0, 1)]
    for rank, proc in enumerate(nodes):
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, (rank, output[-3000:])
    a, b = load_tensors(tmp_path / "one-node" / "supernet.pt"), load_tensors(tmp_path / "two-nodes" / "supernet.pt")
    assert single["metrics"]["steps"] > 1
    for part in ("student", "teacher"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert torch.equal(a["queue"], b["queue"])


def test_slurm_gives_the_nodes_and_the_config_wins(monkeypatch):
    assert first_slurm_host("gpu[07-09,12],cpu3") == "gpu07" and first_slurm_host("a1,b2") == "a1"
    assert first_slurm_host("rack2-n[001-004]x") == "rack2-n001x"
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "4")
    monkeypatch.setenv("SLURM_NODEID", "3")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-09,12]")
    config = load_config(profile="demo")
    assert (config.nodes.count, config.nodes.rank, config.nodes.master_addr) == (4, 3, "gpu07")
    assert config.supernet.nodes == config.retrain.nodes == 4
    given = load_config(profile="demo", overrides={"nodes": {"count": 2, "rank": 1, "master_addr": "10.0.0.1"}})
    assert (given.nodes.count, given.nodes.rank, given.nodes.master_addr) == (2, 1, "10.0.0.1")
    monkeypatch.delenv("SLURM_NODEID")
    assert load_config(profile="demo").nodes.count == 1  # not under srun: one node


def test_concurrent_transfers_get_disjoint_devices_and_never_oversubscribe():
    def run(pool: DevicePool, leases: dict[str, int]) -> list[tuple[str, list[int], float, float]]:
        seen, lock = [], threading.Lock()

        def job(name: str, count: int) -> None:
            with pool.lease(count) as ids:
                start = time.monotonic()
                time.sleep(0.2)
                with lock:
                    seen.append((name, ids, start, time.monotonic()))

        threads = [threading.Thread(target=job, args=item) for item in leases.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return seen

    def overlapping(a, b):
        return a[2] < b[3] and b[2] < a[3]

    transfer = TransferConfig()
    gpus = DevicePool(8, "cuda")
    placed = transfer.placed(gpus)
    assert {name: (task.nproc, lease) for name, (task, lease) in placed.items()} == {
        "coco": (2, 2), "ade20k": (2, 2), "cityscapes": (2, 2)}  # 8 GPUs split three ways
    seen = run(gpus, {name: lease for name, (_, lease) in placed.items()})
    assert len({d for _, ids, _, _ in seen for d in ids}) == 6  # disjoint: six different GPUs at the same time
    assert all(overlapping(a, b) for a in seen for b in seen)
    env = gpus.env(seen[0][1], 2)
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, seen[0][1]))

    sequential = TransferConfig(placement="sequential").placed(gpus)
    assert all(task.nproc == 8 and lease == 8 for task, lease in sequential.values())
    seen = run(gpus, {name: lease for name, (_, lease) in sequential.items()})
    assert all(ids == list(range(8)) for _, ids, _, _ in seen)
    assert not any(overlapping(a, b) for a in seen for b in seen if a is not b)  # one after another

    wide = TransferConfig(tasks={"coco": {"nproc": 4}, "ade20k": {"nproc": 4}, "cityscapes": {"nproc": 4}})
    seen = run(gpus, {name: lease for name, (_, lease) in wide.placed(gpus).items()})
    for a in seen:  # two fit at a time; the third waits: never more than 8 GPUs in use at any moment
        assert sum(len(b[1]) for b in seen if b[2] <= a[2] < b[3]) <= 8
    assert max(sum(b[2] <= a[2] < b[3] for b in seen) for a in seen) == 2
    with pytest.raises(ValueError, match="transfer.tasks.coco.nproc = 16 needs 16 devices, this node has 8"):
        TransferConfig(tasks={"coco": {"nproc": 16}}).placed(gpus)

    cores = DevicePool(2, "cpu")  # on a CPU the same logic shares the cores: one thread each, two at a time
    placed = TransferConfig().placed(cores)
    assert {name: (task.nproc, lease) for name, (task, lease) in placed.items()} == {
        "coco": (1, 1), "ade20k": (1, 1), "cityscapes": (1, 1)}
    # and hides the GPUs, so a transfer set to the CPU (transfer.device: cpu) stays there on a GPU machine
    assert cores.env([0], 1) == {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert share("sequential", 2, 3, "cpu") == (1, 2) and cores.env([0, 1], 1)["OMP_NUM_THREADS"] == "2"
