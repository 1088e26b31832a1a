"""Supernet-Pi throughput: pinas's step against a bare PyTorch loop, the whole demo stage, and the crop loader.

Three sections (``--sections``, all by default):

* ``step``: pinas's step against a bare hand-written PyTorch loop doing the same work. Both run the four passes of
  one iteration (two student forwards with backward, two teacher forwards), the InfoNCE loss, an SGD step and a
  momentum update, on the same views and the same path pairs. The bare loop is what a person would write without
  pinas (EMA over the whole teacher, no gradient pruning, no shuffle-BN); the ratio shows what pinas's bookkeeping
  (path-restricted EMA, off-path gradients set to None, the queue, shuffle-BN) costs or saves.
* ``stage``: the supernet stage as it trains on the demo profile (loader, crops, colour ops, step, logging), images
  per second over ``--stage-steps`` steps after a warm-up, median of 3 rounds. Uses only ``train_supernet`` and the
  demo profile, so the same section runs on an older checkout (``PYTHONPATH=<checkout>``) for a before/after.
* ``loader``: one loader worker's images/s at ``--loader-size`` px with 4 views per image, cut from the full decoded
  image (:class:`pinas.data.images.TrainCrops`), against the old worker's job (decode to a 256 px square, the crops
  then cut on the device), on ImageNet-sized JPEGs (500 x 375, generated); and the number of workers a GPU's
  ResNeSt-50 Pi step needs, from a published training throughput (``--gpu-train-images-per-s``).

    python benchmarks/bench_supernet.py                         # demo preset on CPU
    python benchmarks/bench_supernet.py --sections step --space resnest50 --device cuda --batch 64 --amp
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi, TwoPathStudent, info_nce
from pinas.space import get_space

#: timm's published training throughput of ResNeSt-50d, AMP, NCHW, one RTX 3090 (pytorch-image-models
#: results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv at aa4b585): images/s of a plain forward + backward
TIMM_RESNEST50D_TRAIN_RTX3090 = 534.66
#: one Pi step per image: 2 student forward + backward passes (views 1 and 3) and 2 teacher forwards (views 2 and
#: 4), a forward costing about a third of a forward + backward
TRAIN_PASSES_PER_PI_IMAGE = 2 + 2 / 3


def build(space, args, device):
    torch.manual_seed(0)
    model = SupernetPi(PiNASBackbone(space), args.hidden, 128, args.batch * 8, 0.2, 0.999,
                       shuffle_bn_splits=args.shuffle_bn_splits).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.student.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    return model, opt


def bare_step(model, opt, scaler, x, alpha, beta, amp):
    """The same iteration written plainly."""
    s, t = model.student, model.teacher
    x1, x2, x3, x4 = x
    with torch.autocast(x1.device.type, enabled=amp):
        q_a = F.normalize(s.projector(s.backbone(x1, alpha)), dim=1)
        q_b = F.normalize(s.projector(s.backbone(x3, beta)), dim=1)
        with torch.no_grad():
            for pt, ps in zip(t.parameters(), s.parameters()):
                pt.mul_(0.999).add_(ps.detach(), alpha=0.001)
            k_a = F.normalize(t.projector(t.backbone(x2, alpha)), dim=1)
            k_b = F.normalize(t.projector(t.backbone(x4, beta)), dim=1)
    queue = model.queue.clone()
    loss = info_nce(q_a.float(), k_b.float(), queue, 0.2) + info_nce(q_b.float(), k_a.float(), queue, 0.2)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    with torch.no_grad():
        keys = ((k_a + k_b) / 2).float()
        ptr = int(model.queue_ptr)
        model.queue[:, ptr:ptr + keys.shape[0]] = keys.T
        model.queue_ptr.fill_((ptr + keys.shape[0]) % model.queue.shape[1])
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_step(args) -> None:
    from pinas.data.transforms import MocoV2Colour
    from pinas.stages.supernet import four_views, pi_step

    device = torch.device(args.device)
    space = get_space(args.space)
    size = space.input_size
    crops = torch.randint(0, 255, (args.batch, 4, 3, size, size), dtype=torch.uint8, device=device)
    views = four_views(MocoV2Colour(size).to(device), crops, args.channels_last)
    rng = np.random.default_rng(0)
    pairs = [space.sample_pair(rng) for _ in range(args.steps)]

    ours, ours_opt = build(space, args, device)
    student = TwoPathStudent(ours.student)
    bare, bare_opt = build(space, args, device)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")

    def run_ours():
        for a, b in pairs:
            pi_step(ours, student, ours_opt, scaler, views, a, b, amp=args.amp)

    def run_bare():
        for a, b in pairs:
            bare_step(bare, bare_opt, scaler, views, a, b, args.amp)

    rates = {"pinas": [], "bare": []}
    for fn in (run_ours, run_bare):  # warm-up
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.rounds):  # interleaved rounds, so drifting machine load hits both alike
        for name, fn in (("pinas", run_ours), ("bare", run_bare)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            rates[name].append(args.batch * args.steps / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"== step: space {space.name}, batch {args.batch}, device {device}, amp {args.amp}, "
          f"channels_last {args.channels_last}, shuffle-BN splits {args.shuffle_bn_splits}, "
          f"threads {torch.get_num_threads()}")
    for k, v in rates.items():
        print(f"  {k:6s} {med[k]:8.1f} images/s  (rounds: {', '.join(f'{r:.1f}' for r in v)})")
    print(f"  ratio pinas/bare = {med['pinas'] / med['bare']:.3f}  (goal >= 0.9)")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def bench_stage(args) -> None:
    """The demo profile's supernet stage, timed from its own steps: only APIs every checkout has."""
    from pinas.config import load_config
    from pinas.data.demo import DemoDataSpec, generate_imagenet
    from pinas.stages.supernet import train_supernet

    root = Path(tempfile.mkdtemp(prefix="bench-supernet-stage-"))
    data = generate_imagenet(root / "data", DemoDataSpec())
    cfg = load_config(profile="demo").supernet
    rates = []
    for r in range(3):
        out = root / f"run{r}"
        train_supernet(cfg, data / "train", out, stop_after=5)  # warm-up: model build, first batches
        t0 = time.perf_counter()
        train_supernet(cfg, data / "train", out, stop_after=args.stage_steps)
        rates.append(args.stage_steps * cfg.batch_size / (time.perf_counter() - t0))
    print(f"== stage: demo profile supernet (batch {cfg.batch_size}, {torch.get_num_threads()} threads, "
          f"{cfg.num_workers} loader workers), {args.stage_steps} steps after a resume, load "
          f"{os.getloadavg()[0]:.2f}")
    print(f"  {statistics.median(rates):.1f} images/s (rounds: {', '.join(f'{r:.1f}' for r in rates)})")


def imagenet_sized_jpegs(folder: Path, count: int, width: int = 500, height: int = 375) -> list[Path]:
    """JPEGs of ImageNet's typical size and compression: smooth colour fields with texture, quality 90."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    for i in range(count):
        a, b, c = rng.uniform(2, 12, 3)
        base = np.stack([np.sin(a * xx + b * yy + k) for k in range(3)], -1) * 90 + 128
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / "a" / f"{i:04d}.JPEG")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def bench_loader(args) -> None:
    from pinas.data.images import CropSpec, TrainCrops, decode_square

    folder = Path(tempfile.mkdtemp(prefix="bench-supernet-loader-"))
    paths = imagenet_sized_jpegs(folder, args.loader_images)
    size = args.loader_size
    crops = TrainCrops(folder, CropSpec(size, scale=(0.2, 1.0), views=4), seed=0)
    old_side = round(size * 8 / 7)

    def per_s(fn) -> float:
        t0 = time.perf_counter()
        for i in range(len(paths)):
            fn(i)
        return len(paths) / (time.perf_counter() - t0)

    rates = {"full-image crops (4 views)": [], "old: decode to a square": []}
    for r in range(3):  # interleaved
        rates["full-image crops (4 views)"].append(per_s(lambda i, step=r: crops[step, i]))
        rates["old: decode to a square"].append(per_s(lambda i: decode_square(paths[i], old_side)))
    med = {k: statistics.median(v) for k, v in rates.items()}
    new = med["full-image crops (4 views)"]
    need = TIMM_RESNEST50D_TRAIN_RTX3090 / TRAIN_PASSES_PER_PI_IMAGE
    print(f"== loader: one worker (one thread), {len(paths)} JPEGs of 500x375, {size} px views, load "
          f"{os.getloadavg()[0]:.2f}")
    for k, v in med.items():
        print(f"  {k:28s} {v:7.1f} images/s per worker")
    print(f"  full-image crops / old square decode = {new / med['old: decode to a square']:.2f} (the old pipeline "
          "then cut the 4 crops on the device)")
    published = TIMM_RESNEST50D_TRAIN_RTX3090
    print(f"  a ResNeSt-50 Pi step on one RTX 3090 consumes about {need:.0f} images/s (timm's {published} train "
          f"images/s / {TRAIN_PASSES_PER_PI_IMAGE:.2f} passes): {need / new:.1f} workers of this CPU keep it fed; "
          "scale by the card's speed (measure with --sections step on the GPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="step,stage,loader")
    parser.add_argument("--space", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--shuffle-bn-splits", type=int, default=4, help="one process: teacher BN sub-batches")
    parser.add_argument("--stage-steps", type=int, default=40)
    parser.add_argument("--loader-images", type=int, default=64)
    parser.add_argument("--loader-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = {"step": bench_step, "stage": bench_stage, "loader": bench_loader}
    for name in args.sections.split(","):
        sections[name.strip()](args)


if __name__ == "__main__":
    main()
