"""Cost of the retraining recipe's augmentation relative to the training step it feeds, same run.

The loader cuts each view from the full image (RandAugment(2, 12) on the full image, bicubic random resized crop,
flip; :class:`pinas.data.images.TrainCrops`); the device then applies colour jitter and PCA lighting
(:class:`pinas.data.transforms.RecipeColour`). Both are timed per batch against a forward/backward/SGD step of the
demo network on CPU (on a GPU the step is far faster and the loader runs in parallel workers: the ratio says how
many workers a step needs). The demo profile's augmentation is the crop and flip alone. Timings alternate over
``--rounds`` so background load hits every variant; medians are reported.

    python benchmarks/bench_retrain.py [--batch 32] [--rounds 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pinas.config import load_config
from pinas.data.demo import DemoDataSpec, generate_imagenet
from pinas.data.images import TrainCrops
from pinas.models.backbone import Classifier, build_subnet
from pinas.space import get_space
from pinas.stages.retrain import RetrainConfig, param_groups, training_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = generate_imagenet(Path(tempfile.gettempdir()) / "pinas-bench-retrain", DemoDataSpec())
    demo = load_config(profile="demo").retrain
    recipe = RetrainConfig().model_dump(include={"mixup", "randaug_m", "color_jitter", "lighting", "crop_scale"})
    paper = demo.model_copy(update=recipe)
    views = {"demo": training_views(demo), "paper": training_views(paper)}
    crops = {name: TrainCrops(data / "train", v.crops, seed=0) for name, v in views.items()}
    labels = torch.randint(0, 5, (args.batch,))
    model = Classifier(build_subnet(get_space("demo"), demo.arch), 5)
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9)
    batch = torch.stack([crops["demo"][0, i][0] for i in range(args.batch)])
    x = views["demo"].device(batch)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def loader(name: str):
        return lambda: [crops[name][1, i] for i in range(args.batch)]

    jobs = {"train_step": step, "demo_loader": loader("demo"), "paper_loader": loader("paper"),
            "paper_device": lambda: views["paper"].device(batch)}
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
    for name in ("demo_loader", "paper_loader", "paper_device"):
        report[f"{name}/train_step"] = round(med[name] / med["train_step"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
