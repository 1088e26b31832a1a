"""Cost of the retraining recipe's on-device augmentation relative to the training step it feeds, same run.

Goal: the full paper augmentation (RandAugment(2, 12) in groups, bicubic random resized crop, flip, jitter,
lighting) costs at most 0.5x a forward/backward/SGD step of the demo network on CPU (on a GPU it is far smaller);
the demo profile's augmentation (crop + flip) at most 0.25x. Timings alternate over ``--rounds`` so background load
hits every variant; medians are reported.

    python benchmarks/bench_retrain.py [--batch 32] [--rounds 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pinas.models.backbone import Classifier, build_subnet  # noqa: E402
from pinas.space import get_space  # noqa: E402
from pinas.stages.retrain import DEMO_OVERRIDES, RetrainConfig, param_groups, training_augment  # noqa: E402

GOALS = {"paper_augment": 0.5, "demo_augment": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    demo = RetrainConfig(**DEMO_OVERRIDES)
    paper = RetrainConfig(**{**DEMO_OVERRIDES, **{k: v for k, v in RetrainConfig().model_dump().items()
                                                  if k in ("mixup", "randaug_m", "color_jitter", "lighting",
                                                           "crop_scale")}})
    images = torch.randint(0, 256, (args.batch, 3, demo.decode, demo.decode), dtype=torch.uint8)
    labels = torch.randint(0, 5, (args.batch,))
    model = Classifier(build_subnet(get_space("demo"), demo.arch), 5)
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9)
    augment = {"demo_augment": training_augment(demo), "paper_augment": training_augment(paper)}
    x = augment["demo_augment"](images)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    jobs = {"train_step": step, **{name: (lambda a=a: a(images)) for name, a in augment.items()}}
    for job in jobs.values():  # warm-up
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    report = {f"{name}_ms": round(1e3 * t, 2) for name, t in med.items()}
    report["train_images_per_s"] = round(args.batch / med["train_step"], 1)
    ok = True
    for name, goal in GOALS.items():
        ratio = med[name] / med["train_step"]
        report[f"{name}/train_step"] = round(ratio, 3)
        ok &= ratio <= goal
    report["goals"] = {f"{k}/train_step": f"<= {v}" for k, v in GOALS.items()}
    report["met"] = ok
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
