"""Supernet-Pi step throughput: pinas's step against a bare hand-written PyTorch loop doing the same work.

Both run the four passes of one iteration (two student forwards with backward, two teacher forwards), the InfoNCE
loss, an SGD step and a momentum update, on the same views and the same path pairs. The bare loop is what a person
would write without pinas (EMA over the whole teacher, no gradient pruning); the ratio shows what pinas's
bookkeeping (path-restricted EMA, off-path gradients set to None, the queue) costs or saves.

    python benchmarks/bench_supernet.py                         # demo preset on CPU
    python benchmarks/bench_supernet.py --space resnest50 --device cuda --batch 64 --amp --channels-last
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from pinas.data.transforms import MocoV2Views
from pinas.models.backbone import PiNASBackbone
from pinas.models.supernet_pi import SupernetPi, TwoPathStudent, info_nce
from pinas.space import get_space
from pinas.stages.supernet import four_views, pi_step


def build(space, args, device):
    torch.manual_seed(0)
    model = SupernetPi(PiNASBackbone(space), args.hidden, 128, args.batch * 8, 0.2, 0.999).to(device).train()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    space = get_space(args.space)
    side = round(space.input_size * 8 / 7)
    images = torch.randint(0, 255, (args.batch, 3, side, side), dtype=torch.uint8, device=device)
    views = four_views(MocoV2Views(space.input_size).to(device), images, args.channels_last)
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
    print(f"space {space.name}, batch {args.batch}, device {device}, amp {args.amp}, "
          f"channels_last {args.channels_last}, threads {torch.get_num_threads()}")
    for k, v in rates.items():
        print(f"  {k:6s} {med[k]:8.1f} images/s  (rounds: {', '.join(f'{r:.1f}' for r in v)})")
    print(f"  ratio pinas/bare = {med['pinas'] / med['bare']:.3f}  (goal >= 0.9)")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
