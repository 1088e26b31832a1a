"""Benchmark of the search stage on the demo preset: evaluator throughput, search speed, and the demo claim.

Prints, all measured in this run:

1. **Evaluator image throughput vs a bare forward.** Images pushed through a backbone path per second by the
   evaluator (BN recalibration forwards + proxy forwards, one architecture at a time), divided by the images per
   second of a plain eval-mode forward of the same architecture extracted as a standalone subnet
   (``pinas.models.backbone.extract_subnet``), on the same batches. Goal: >= 0.8, i.e. evaluation costs at most
   25 % more per image than inference; for the contrastive and the linear-probe proxies.
2. **Candidate evaluations per second** of a whole search (proposal, pricing, evaluation, state saving), with 1
   process and with ``--nproc`` processes (torchrun; gloo on CPU, NCCL on GPU): the scaling ratio.
3. **Demo claim**: the searched architecture's proxy score against an independent sample of random
   architectures scored by the same evaluator (median, max, and the searched one's percentile).

Usage::

    python benchmarks/bench_search.py [--threads 1] [--nproc 2] [--device cpu|cuda] [--supernet-dir DIR] [--quick]

Without ``--supernet-dir`` a demo supernet is trained first (``run_supernet``, a few epochs on the generated
data; reused from ``--workdir`` on the next run). CPU timings on shared machines are noisy: the ratio in (1) is
measured interleaved, architecture by architecture, to keep both sides under the same load.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pinas.data.demo import DemoDataSpec, generate_imagenet
from pinas.data.images import SearchHoldout
from pinas.io.stage_dirs import SupernetDir
from pinas.models.backbone import extract_subnet
from pinas.search.evaluation import EvaluatorConfig, build_evaluator
from pinas.search.proxies import Timings
from pinas.stages.search import SearchConfig, run_search, search_images
from pinas.stages.supernet import SupernetConfig, run_supernet

log = logging.getLogger("bench")
HOLDOUT = SearchHoldout(images=0.1)  # the demo profile's search holdout


def bare_images_per_s(model, arch, batches: list[torch.Tensor], channels_last: bool, repeats: int = 3) -> float:
    """Eval-mode forward of ``arch`` extracted as a standalone subnet, over ``batches``, in one memory layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    subnet = extract_subnet(model.student.backbone, arch).eval().to(memory_format=fmt)
    batches = [x.contiguous(memory_format=fmt) for x in batches]
    with torch.no_grad():
        subnet(batches[0])  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            for x in batches:
                subnet(x)
    return repeats * sum(len(x) for x in batches) / (time.perf_counter() - t0)


def bench_evaluator(model, data: Path, cfg: EvaluatorConfig, archs: list) -> dict:
    """Evaluator vs bare forward, interleaved architecture by architecture. The baseline is the faster of the
    NCHW and NHWC (channels-last) layouts for each architecture, so a layout trick cannot flatter the ratio."""
    probe = None
    if cfg.proxy == "linear_probe":  # throughput does not depend on the head's weights: an untrained head will do
        probe = (nn.Linear(model.student.backbone.feature_dim, 5), {"crop_min_scale": 0.08})
    evaluator = build_evaluator(cfg.model_copy(update={"prefix_sharing": False}), model,
                                *search_images(HOLDOUT, data / "train"), probe)
    evaluator(archs[0])  # decodes and caches the fixed batches; not timed
    proxy = evaluator.proxy
    proxy.timings = t = Timings()
    views = [x.chunk(4)[0] if cfg.proxy == "contrastive" else x for x, _ in proxy.heldout]
    wall, ratios, bare, bare_layouts = 0.0, [], [], []
    for arch in archs[1:]:
        images = t.images
        t0 = time.perf_counter()
        evaluator(arch)
        dt = time.perf_counter() - t0
        wall += dt
        layouts = [bare_images_per_s(model, arch, views, cl) for cl in (False, True)]
        bare_layouts.append(layouts)
        bare.append(max(layouts))
        ratios.append((t.images - images) / dt / bare[-1])
    return {"proxy": cfg.proxy, "evaluations_per_s": t.evaluations / wall,
            "images_per_evaluation": t.images / t.evaluations, "evaluator_images_per_s": t.images / wall,
            "bare_forward_images_per_s": statistics.median(bare),
            "bare_nchw_images_per_s": statistics.median(b[0] for b in bare_layouts),
            "bare_nhwc_images_per_s": statistics.median(b[1] for b in bare_layouts),
            "throughput_ratio": statistics.median(ratios), "throughput_ratio_min": min(ratios),
            "evaluator_share": t.seconds / wall}


def demo_supernet(workdir: Path, data: Path, epochs: float) -> Path:
    """A demo supernet trained with run_supernet (reused when the folder already holds a finished one)."""
    out = workdir / f"supernet-{epochs:g}ep"
    if not (out / "manifest.json").is_file():
        cfg = SupernetConfig(space="demo", epochs=epochs, batch_size=16, queue_size=256, projector_hidden=128,
                             base_lr=1.0, ema_momentum=0.99, num_workers=0, device="cpu", log_every=20,
                             holdout=HOLDOUT)
        log.info("training a demo supernet (%g epochs) into %s", epochs, out)
        run_supernet(cfg, data / "train", out)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on 2 cores)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pinas-bench-search")
    parser.add_argument("--supernet-dir", type=Path, default=None, help="a finished supernet stage folder")
    parser.add_argument("--supernet-epochs", type=float, default=3.0)
    parser.add_argument("--archs", type=int, default=6, help="architectures timed per proxy")
    parser.add_argument("--random-archs", type=int, default=20, help="random sample for the demo claim")
    parser.add_argument("--quick", action="store_true", help="smaller everything (a smoke run)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the scaling run (1 skips it)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pinas").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.supernet_epochs, args.archs, args.random_archs = min(args.supernet_epochs, 0.5), 3, 6
    data = generate_imagenet(args.workdir / "data", DemoDataSpec(seed=0))
    supernet_dir = args.supernet_dir or demo_supernet(args.workdir, data, args.supernet_epochs)
    model = SupernetDir(supernet_dir).load()
    space = model.space
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(args.archs + 1)]
    ecfg = EvaluatorConfig(proxy="contrastive", batch_size=32, recal_batches=4, heldout_images=64,
                           device=args.device)
    report: dict = {"threads": args.threads, "space": space.name, "supernet_dir": str(supernet_dir),
                    "evaluator_config": ecfg.model_dump(include={"batch_size", "recal_batches", "heldout_images",
                                                                 "reference_squares"})}

    print(f"== evaluator vs bare forward (demo space, {args.threads} thread(s), batch {ecfg.batch_size}, "
          f"{ecfg.recal_batches} recal batches, {ecfg.heldout_images} held-out images, "
          f"{ecfg.reference_squares} Latin square(s) of reference paths)")
    for proxy in ("contrastive", "linear_probe"):
        r = bench_evaluator(model, data, ecfg.model_copy(update={"proxy": proxy}), archs)
        report[proxy] = r
        print(f"{proxy:>13}: {r['evaluations_per_s']:.2f} evaluations/s, {r['images_per_evaluation']:.0f} "
              f"images/evaluation, evaluator {r['evaluator_images_per_s']:.0f} img/s vs bare subnet forward "
              f"{r['bare_forward_images_per_s']:.0f} img/s (NCHW {r['bare_nchw_images_per_s']:.0f}, NHWC "
              f"{r['bare_nhwc_images_per_s']:.0f}) -> ratio {r['throughput_ratio']:.2f} (min "
              f"{r['throughput_ratio_min']:.2f}); {100 * r['evaluator_share']:.0f}% of the time in the path "
              "features")

    pop, gens = (6, 2) if args.quick else (12, 4)
    scfg = SearchConfig(evaluator=ecfg, holdout=HOLDOUT, population=pop, generations=gens, parents=pop // 3,
                        mutations=pop // 2, crossovers=pop // 2, top_k=5)
    searches = {}
    for nproc in sorted({1, args.nproc}):
        out = args.workdir / f"search-{supernet_dir.name}-{pop}x{gens}-{nproc}proc"
        shutil.rmtree(out, ignore_errors=True)  # time a whole search, not a no-op resume
        t0 = time.perf_counter()
        manifest = run_search(scfg.model_copy(update={"nproc": nproc}), supernet_dir, data / "train", out)
        elapsed = time.perf_counter() - t0
        evaluated = manifest["metrics"]["evaluated"]
        # the generations' own scoring time (rank 0's clock), without process start-up, loading and plots
        scoring = sum(h["seconds"] for h in json.loads((out / "search_state.json").read_text())["history"])
        searches[nproc] = {"population": pop, "generations": gens, "evaluated": evaluated, "seconds": elapsed,
                           "evaluations_per_s": evaluated / elapsed, "scoring_seconds": scoring,
                           "result": json.loads((out / "result.json").read_text())["best"]}
        print(f"== search, {nproc} process(es): {pop} x {gens} generations, {evaluated} candidates in "
              f"{elapsed:.1f} s -> {evaluated / elapsed:.2f} candidate evaluations/s (stage total: start-up, "
              f"loading, cost table, plots included); scoring the generations {scoring:.1f} s")
    report["search"] = searches
    if args.nproc > 1:
        ratio = searches[args.nproc]["evaluations_per_s"] / searches[1]["evaluations_per_s"]
        same = searches[args.nproc]["result"] == searches[1]["result"]
        print(f"== scaling: {args.nproc} processes / 1 process = {ratio:.2f}x candidate evaluations per second "
              f"(ideal {args.nproc}x; same best candidate: {same}); load {os.getloadavg()[0]:.2f}")
        scoring_ratio = searches[1]["scoring_seconds"] / searches[args.nproc]["scoring_seconds"]
        print(f"== scaling of the generations' scoring alone: {scoring_ratio:.2f}x")
        report["scaling_ratio"], report["scoring_scaling_ratio"] = ratio, scoring_ratio
    out = args.workdir / f"search-{supernet_dir.name}-{pop}x{gens}-1proc"

    result = json.loads((out / "result.json").read_text())
    evaluator = build_evaluator(ecfg, model, *search_images(HOLDOUT, data / "train"))
    rng = np.random.default_rng(2024)  # independent of the search's own random generation 0
    random_scores = np.array([evaluator(space.sample(rng)).score for _ in range(args.random_archs)])
    best = result["best"]
    assert evaluator(best["arch"]).score == best["score"], "evaluator is not deterministic"
    percentile = 100 * float((random_scores < best["score"]).mean())
    report["demo_claim"] = {"best_arch": best["arch"], "best_score": best["score"],
                            "random_median": float(np.median(random_scores)), "random_max": float(random_scores.max()),
                            "random_n": len(random_scores), "best_beats_percent_of_random": percentile}
    print(f"== demo claim (contrastive proxy, score = -loss): searched {best['arch']} scores {best['score']:.4f}; "
          f"{len(random_scores)} random architectures: median {np.median(random_scores):.4f}, max "
          f"{random_scores.max():.4f}; the searched one beats {percentile:.0f}% of them")
    print(json.dumps(report, default=str))
    return report


if __name__ == "__main__":
    main()
