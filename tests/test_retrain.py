"""Retraining: learns the demo classes, resumes exactly, writes a model.pt the standalone network loads, and rejects
bad inputs before writing anything. Real torch and kornia on generated demo data, CPU only.

The learning test renders the demo generator's classification scenes with one polarity (shapes lighter than their
background; see :func:`consistent_contrast_imagenet` for why); everything else uses ``generate_imagenet`` as is.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from pinas.config import load_config
from pinas.data.demo import SHAPE_CLASSES
from pinas.data.images import DataError, ImageFolderDataset
from pinas.data.transforms import Normalize, center_crop
from pinas.io.artifacts import verify_manifest
from pinas.io.stage_dirs import RetrainDir
from pinas.models.backbone import Classifier, PiNASBackbone, build_subnet
from pinas.models.supernet_pi import SupernetPi
from pinas.space import DEMO
from pinas.stages.retrain import (
    OUTPUTS,
    RetrainConfig,
    evaluate,
    param_groups,
    run_retrain,
    supernet_backbone_state,
    train_retrain,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_OVERRIDES = load_config(profile="demo").retrain.model_dump()  # the demo profile's retrain section
DEMO_ARCH = "30-12-23-01"  # mixes all four candidates
#: A few steps with every random augmentation on (mixup, RandAugment, jitter, lighting), so exact resume is tested
#: on every RNG consumer; 40 images in batches of 8 -> 5 steps per epoch, 10 in all.
TINY = {**DEMO_OVERRIDES, "arch": DEMO_ARCH, "epochs": 2, "batch_size": 8, "base_batch": 8, "base_lr": 0.05,
        "warmup_epochs": 0.4, "mixup": 0.2, "randaug_m": 12, "color_jitter": 0.4, "lighting": 0.1,
        "crop_scale": (0.1, 1.0), "eval_every": 1, "checkpoint_every": 2, "checkpoint_unit": "steps",
        "log_every": 1}


@pytest.fixture(scope="module")
def retrain_data(demo_data) -> Path:
    return demo_data("imagenet")


@pytest.fixture(scope="module")
def tiny_data(demo_data) -> Path:
    return demo_data("imagenet", cls_train_per_class=8, cls_val_per_class=4)


@pytest.fixture(scope="module")
def demo_run(retrain_data, tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("demo_run") / "retrain"
    t0 = time.perf_counter()
    manifest = run_retrain(RetrainConfig(**DEMO_OVERRIDES), retrain_data, out)
    return out, manifest, time.perf_counter() - t0


@pytest.fixture(scope="module")
def tiny_reference(tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted run of the TINY config."""
    out = tmp_path_factory.mktemp("tiny_ref")
    run_retrain(RetrainConfig(**TINY), tiny_data, out)
    return out


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", map_location="cpu", weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]


# ------------------------------------------------------------------------------------------------ learning
def test_demo_retraining_beats_chance(demo_run):
    out, manifest, wall = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"demo retrain: top-1 {metrics['top1']:.1f}% top-5 {metrics['top5']:.1f}% in {wall:.1f} s "
          f"(history {[round(h['top1'], 1) for h in metrics['history']]})")
    # chance is 20 % on 5 balanced classes; 150 val images: 40 % is more than 6 binomial standard deviations above
    assert metrics["top1"] >= 40.0
    assert manifest["metrics"]["top1"] == metrics["top1"]
    assert [h["epoch"] for h in metrics["history"]] == list(range(DEMO_OVERRIDES["eval_every"],
                                                                    DEMO_OVERRIDES["epochs"] + 1,
                                                                    DEMO_OVERRIDES["eval_every"]))
    assert set(manifest["files"]) == set(OUTPUTS)
    verify_manifest(out)


def test_model_pt_loads_standalone_and_reproduces_top1(demo_run, retrain_data):
    out, manifest, _ = demo_run
    meta = json.loads((out / "model_config.json").read_text())
    assert meta == {"space": "demo", "arch": DEMO_OVERRIDES["arch"], "num_classes": 5,
                    "classes": sorted(SHAPE_CLASSES), "input_size": 64,
                    "preprocessing": {"crop": 64, "resize": 73, "mean": [0.485, 0.456, 0.406],
                                      "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}}
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert {k.split(".")[0] for k in state} == {"backbone", "fc"}
    model = Classifier(build_subnet(DEMO, meta["arch"]), meta["num_classes"])
    model.load_state_dict(state, strict=True)
    model.eval()
    # the evaluation protocol written out independently: decode at 8/7 of the input size, centre crop, normalise
    val = ImageFolderDataset(retrain_data / "val", round(meta["input_size"] * 8 / 7))
    assert val.classes == meta["classes"]
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        logits = torch.cat([model(Normalize()(center_crop(chunk, meta["input_size"])))
                            for chunk in images.split(50)])
    top1 = 100.0 * (logits.argmax(1) == labels).sum().item() / len(labels)
    assert top1 == pytest.approx(manifest["metrics"]["top1"], abs=1e-9)


def test_finished_run_is_a_no_op(demo_run, retrain_data):
    out, manifest, _ = demo_run
    before = {p: (out / p).stat().st_mtime_ns for p in OUTPUTS}
    again = run_retrain(RetrainConfig(**DEMO_OVERRIDES), retrain_data, out)
    assert again == manifest
    assert before == {p: (out / p).stat().st_mtime_ns for p in OUTPUTS}
    with pytest.raises(ValueError, match="seed"):
        run_retrain(RetrainConfig(**{**DEMO_OVERRIDES, "seed": 1}), retrain_data, out)


# -------------------------------------------------------------------------------------------------- resume
def test_resume_after_stops_matches_uninterrupted(tiny_data, tiny_reference, tmp_path):
    cfg = RetrainConfig(**TINY)
    out = tmp_path / "stopped"
    assert train_retrain(cfg, tiny_data, out, stop_after=3) == {"stopped_at": 3}  # mid-epoch
    assert train_retrain(cfg, tiny_data, out, stop_after=4) == {"stopped_at": 7}  # after an epoch-end eval
    assert not (out / "model.pt").exists()
    manifest = run_retrain(cfg, tiny_data, out)
    _assert_same_weights(out, tiny_reference)
    ref = json.loads((tiny_reference / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["history"] == ref["history"]
    assert manifest["files"]["model.pt"] == json.loads((tiny_reference / "manifest.json").read_text())[
        "files"]["model.pt"]
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 11))  # the step log has each step once, none lost or repeated


def test_sigkilled_cli_run_resumes_exactly(tiny_data, tiny_reference, tmp_path):
    """The torchrun entry point, killed with SIGKILL once its first checkpoint exists, then resumed in-process."""
    out = tmp_path / "killed"
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(RetrainConfig(**TINY).model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pinas.stages.rank", "retrain", "--config", str(cfg_path),
                             "--paths", json.dumps({"data_dir": str(tiny_data)}), "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("checkpoint-*.pt")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "model.pt").exists()
    run_retrain(RetrainConfig(**TINY), tiny_data, out)
    _assert_same_weights(out, tiny_reference)


@pytest.mark.slow
def test_two_process_torchrun_run_reports_what_one_process_measures(tiny_data, tmp_path):
    """nproc=2 (torchrun, gloo): the global batch is shared by the processes and the lr follows it; sharded
    evaluation sums to the single-process top-1 of the saved weights."""
    cfg = RetrainConfig(**{**TINY, "batch_size": 4, "nproc": 2, "warmup_epochs": 0})
    manifest = run_retrain(cfg, tiny_data, tmp_path / "ddp")
    steps = [r for r in map(json.loads, (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    # 40 training images in global batches of 4 (2 per process) for 2 epochs; lr 0.05 at 8 images -> 0.025 at 4
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert steps[0]["lr"] == pytest.approx(0.025)
    model = RetrainDir(tmp_path / "ddp").load_classifier()
    val = ImageFolderDataset(tiny_data / "val", cfg.preprocessing.resize)
    single = evaluate(model, val, cfg.preprocessing, torch.device("cpu"), batch_size=7)
    assert single["images"] == len(val) == 20
    assert single["top1"] == pytest.approx(manifest["metrics"]["top1"], abs=1e-9)
    assert single["top5"] == pytest.approx(json.loads((tmp_path / "ddp" / "metrics.json").read_text())["top5"])


# ------------------------------------------------------------------------------------------- optimizer
def test_no_weight_decay_on_bn_and_biases(tiny_reference):
    model = Classifier(build_subnet(DEMO, DEMO_ARCH), 5)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            exempt = isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or pname == "bias"
            assert (id(p) in ids) == exempt, f"{name}.{pname}"
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    # and the optimizer that trained is built that way (its saved groups)
    ckpt = torch.load(sorted((tiny_reference / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [TINY.get("weight_decay", 1e-4), 0.0]
    assert [len(g["params"]) for g in groups] == [len(decay["params"]), len(no_decay["params"])]


def test_config_defaults_are_the_recipe():
    cfg = RetrainConfig()
    assert (cfg.epochs, cfg.warmup_epochs, cfg.momentum, cfg.weight_decay) == (270, 5, 0.9, 1e-4)
    assert (cfg.label_smoothing, cfg.mixup, cfg.randaug_n, cfg.randaug_m) == (0.1, 0.2, 2, 12)
    assert cfg.crop_scale == (0.1, 1.0) and cfg.no_bn_bias_decay and not cfg.init_from_supernet
    assert cfg.arch == "301-3231-203213-032"  # "pinas-cls", stored in the canonical stage-grouped form
    assert (cfg.preprocessing.crop, cfg.preprocessing.resize) == (224, 256)


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_arch_names_the_field():
    with pytest.raises(ValidationError) as err:
        RetrainConfig(space="demo", arch="11-11-11-14")
    assert err.value.errors()[0]["loc"] == ("arch",)
    assert "11-11-11-14" in str(err.value)
    with pytest.raises(ValidationError, match="unknown_key"):
        RetrainConfig(space="demo", arch="11-11-11-11", unknown_key=1)


def test_bad_data_is_reported_before_anything_is_written(tiny_data, tmp_path):
    import shutil

    cfg = RetrainConfig(**TINY)
    missing_val = tmp_path / "no_val"
    shutil.copytree(tiny_data / "train", missing_val / "train")
    with pytest.raises(DataError, match="val/"):
        run_retrain(cfg, missing_val, tmp_path / "out1")
    assert not (tmp_path / "out1").exists()

    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_data, mismatch)
    (mismatch / "val" / "ring").rename(mismatch / "val" / "donut")
    with pytest.raises(DataError, match=r"only in train/: \['ring'\], only in val/: \['donut'\]"):
        run_retrain(cfg, mismatch, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()

    with pytest.raises(ValueError, match="no supernet"):
        run_retrain(RetrainConfig(**{**TINY, "init_from_supernet": True}), tiny_data, tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


# ------------------------------------------------------------------------------------------- supernet init
def test_init_from_supernet_takes_the_path_weights(tiny_data, tmp_path):
    torch.manual_seed(1)
    supernet = SupernetPi(PiNASBackbone(DEMO), 64, 16, 32, 0.2, 0.99)
    for p in supernet.student.parameters():  # move off the initial values so a copy is distinguishable
        p.data.add_(torch.randn_like(p) * 0.1)
    torch.save(supernet.artifact_state(), tmp_path / "supernet.pt")
    cfg = RetrainConfig(**{**TINY, "init_from_supernet": True})
    path_state = supernet_backbone_state(cfg, tmp_path)
    expected = supernet.student.backbone.state_dict()
    assert path_state.keys() == build_subnet(DEMO, DEMO_ARCH).state_dict().keys()
    assert all(torch.equal(v, expected[k]) for k, v in path_state.items())
    out = tmp_path / "out"
    train_retrain(cfg, tiny_data, out, supernet=tmp_path / "supernet.pt", stop_after=0)
    ckpt = torch.load(next((out / "checkpoints").glob("*.pt")), weights_only=True)
    assert all(torch.equal(ckpt["model"]["backbone." + k], v) for k, v in path_state.items())
