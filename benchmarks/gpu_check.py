"""One short check of what only a GPU can show: throughput, memory and memory format of every GPU-heavy step.

For ResNeSt-50 at 224 px on the first CUDA device (a few minutes on one H100 / H200 that has only PyTorch and
pinas's light dependencies installed; MMCV / MMDetection are not needed), under bf16 autocast:

* ``supernet``: the supernet-Pi step (2 paths x 2 views, the momentum teacher, the queue) in images/s and peak
  memory, in NCHW and in channels-last, each next to a bare hand-written loop of the same two subnets
  (``bench_supernet.bare_step``) and their ratio;
* ``search``: candidate evaluations per second (BN recalibration + the contrastive proxy) with and without prefix
  sharing, on one SPOS generation;
* ``retrain``: the stand-alone network's training step in images/s;
* ``probe``: the linear probe's step (frozen supernet path forward, linear head backward) in images/s;

and for each the achieved TFLOP/s (from the cost model's MACs of the paths run, the 1000-class head included)
against the card's dense bf16 peak.
It ends with the memory format the measurements favour. ``--toy`` runs the same code at toy size on the CPU (the
demo space, tiny batches): the test suite does, so the check cannot rot before a GPU is at hand.

    python benchmarks/gpu_check.py --json gpu_check.json        # on the GPU machine
    python benchmarks/gpu_check.py --toy                          # anywhere
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from bench_prefix_sharing import RandomImages, generations
from bench_supernet import bare_step, build, sync

from pinas.data.transforms import MocoV2Colour
from pinas.models.backbone import Classifier, PiNASBackbone, build_subnet
from pinas.models.cost import CostModel
from pinas.models.supernet_pi import SupernetPi, TwoPathStudent
from pinas.search.proxies import ContrastiveProxy
from pinas.search.recalibration import FixedBatches
from pinas.space import get_space
from pinas.stages.supernet import four_views, pi_step

#: dense bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets (the sparse figures are twice these)
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.05}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def timed(fn: Callable[[], None], device: torch.device, rounds: int) -> float:
    """Median seconds of ``fn`` over ``rounds`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rate(images: int, seconds: float, flops: float, peak: float | None) -> dict[str, float | None]:
    tflops = flops / seconds / 1e12
    return {"images_per_s": round(images / seconds, 2), "tflops": round(tflops, 4),
            "share_of_peak": None if peak is None else round(tflops / peak, 4)}


def check_supernet(space, args, device, peak, macs) -> dict:
    """The Pi step and the bare loop, NCHW and channels-last."""
    rng = np.random.default_rng(0)
    pairs = [space.sample_pair(rng) for _ in range(args.steps)]
    # per image: two student passes forward + backward (3x a forward) and two teacher forwards, 2 FLOPs per MAC
    flops = sum(2 * 4 * (macs(a) + macs(b)) for a, b in pairs) * args.batch
    return {layout: supernet_layout(space, args, device, peak, pairs, flops, layout == "channels_last")
            for layout in ("nchw", "channels_last")}


def supernet_layout(space, args, device, peak, pairs, flops, channels_last: bool) -> dict:
    size, amp = space.input_size, device.type == "cuda"
    cfg = SimpleNamespace(hidden=args.hidden, batch=args.batch, shuffle_bn_splits=4, channels_last=channels_last)
    crops = torch.randint(0, 255, (args.batch, 4, 3, size, size), dtype=torch.uint8, device=device)
    views = four_views(MocoV2Colour(size).to(device), crops, channels_last)
    ours, ours_opt = build(space, cfg, device)
    student = TwoPathStudent(ours.student)
    bare, bare_opt = build(space, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pinas_s = timed(lambda: [pi_step(ours, student, ours_opt, scaler, views, a, b, amp=amp) for a, b in pairs],
                    device, args.rounds)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    bare_s = timed(lambda: [bare_step(bare, bare_opt, scaler, views, a, b, amp) for a, b in pairs], device,
                   args.rounds)
    return {"pinas": rate(args.batch * args.steps, pinas_s, flops, peak),
            "bare": rate(args.batch * args.steps, bare_s, flops, peak),
            "ratio_pinas_over_bare": round(bare_s / pinas_s, 3),
            "peak_memory_gib": None if memory is None else round(memory, 2)}


def check_search(space, args, device, peak, macs) -> dict:
    """One SPOS generation scored by the contrastive proxy after BN recalibration, with and without sharing."""
    size, b = space.input_size, args.search_batch
    torch.manual_seed(0)
    model = SupernetPi(PiNASBackbone(space), args.hidden, 128, 4 * b, 0.2, 0.999).to(device).eval()
    colour = MocoV2Colour(size).to(device)
    recal_idx = [list(range(i * b, (i + 1) * b)) for i in range(args.recal_batches)]
    recal = FixedBatches(RandomImages(b * args.recal_batches, size, 1), recal_idx, colour, device, 3,
                         cache_bytes=1 << 33)
    heldout = FixedBatches(RandomImages(b, size, 2, views=4), [list(range(b))], colour, device, 4,
                           cache_bytes=1 << 33)
    (archs,) = list(generations(space, np.random.default_rng(0), 1, {}, population=args.population))
    out = {}
    for sharing in (False, True):
        proxy = ContrastiveProxy(model, recal, heldout, 1, prefix_sharing=sharing)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            seconds = timed(lambda proxy=proxy: proxy.score_many(archs), device, 1)
        # per candidate, without sharing: recalibration forwards, then the held-out views through it and its
        # reference paths; the FLOPs are counted that way for both, so sharing shows as more "achieved" TFLOP/s
        refs = space.num_choices - 1
        flops = sum(2 * macs(a) * (b * args.recal_batches + 4 * b * (1 + refs)) for a in archs)
        entry = rate(len(archs), seconds, flops, peak)
        out["prefix_sharing" if sharing else "per_candidate"] = {
            "evaluations_per_s": entry.pop("images_per_s"), **entry}
    out["speed-up"] = round(out["prefix_sharing"]["evaluations_per_s"] / out["per_candidate"]["evaluations_per_s"], 3)
    out["candidates"] = len(archs)
    return out


def check_retrain_and_probe(space, args, device, peak, macs) -> dict:
    arch = space.default_arch()
    x = torch.randn(args.batch, 3, space.input_size, space.input_size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    model = Classifier(build_subnet(space, space.format(arch)), 1000).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    amp = device.type == "cuda"

    def retrain_step():
        for _ in range(args.steps):
            with torch.autocast(device.type, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    backbone = PiNASBackbone(space).to(device).eval().requires_grad_(False)
    head = torch.nn.Linear(backbone.feature_dim, 1000).to(device)
    head_opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)

    def probe_step():
        for _ in range(args.steps):
            with torch.autocast(device.type, enabled=amp):
                with torch.no_grad():
                    features = backbone(x, arch)
                loss = F.cross_entropy(head(features.float()), y)
            head_opt.zero_grad(set_to_none=True)
            loss.backward()
            head_opt.step()

    images = args.batch * args.steps
    return {"retrain": rate(images, timed(retrain_step, device, args.rounds), 2 * 3 * macs(arch) * images, peak),
            "probe": rate(images, timed(probe_step, device, args.rounds), 2 * macs(arch) * images, peak)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="the demo space at toy size on the CPU")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    toy = dict(space="demo", batch=8, steps=2, rounds=1, hidden=64, search_batch=4, recal_batches=1, population=4)
    full = dict(space="resnest50", batch=64, steps=10, rounds=3, hidden=2048, search_batch=64, recal_batches=4,
                population=50)
    for key, value in (toy if args.toy else full).items():
        setattr(args, key, value)
    device = torch.device("cpu" if args.toy or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_autocast_dtype("cuda", torch.bfloat16)  # every autocast in the stages' code runs in bf16
    space, peak = get_space(args.space), peak_tflops(device)
    cost = CostModel(space, space.input_size, 1000)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "toy": args.toy,
              "torch": torch.__version__, "space": space.name, "input_size": space.input_size, "batch": args.batch,
              "bf16_peak_tflops": peak}
    started = time.perf_counter()
    for name, check in (("supernet", check_supernet), ("search", check_search)):
        report[name] = check(space, args, device, peak, lambda arch: cost(arch).macs)
        print(name, json.dumps(report[name]), flush=True)
    report.update(check_retrain_and_probe(space, args, device, peak, lambda arch: cost(arch).macs))
    print("retrain", json.dumps(report["retrain"]), "\nprobe", json.dumps(report["probe"]))
    layouts = report["supernet"]
    faster = max(layouts, key=lambda k: layouts[k]["pinas"]["images_per_s"])
    report["faster_memory_format"] = faster
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"memory format for the supernet step: {faster} "
          f"({layouts['channels_last']['pinas']['images_per_s'] / layouts['nchw']['pinas']['images_per_s']:.2f}x "
          f"channels-last / NCHW); {report['seconds']} s in all on {report['device']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
