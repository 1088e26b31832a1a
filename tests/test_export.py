"""Stage 5 (ONNX export) with the real torch exporters, onnx checker and onnxruntime on generated demo images.

One full ``run_export`` (int8 on, latency at batch 1 and 8 with few repeats) is shared by most tests; the
failure tests use the TorchScript exporter or no export at all to stay fast on two cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pinas.data import transforms as pinas_data
from pinas.data.images import ImageFolderDataset
from pinas.data.preprocess import EvalPreprocessing
from pinas.deploy.errors import ExportError, ParityError
from pinas.deploy.onnx_export import STAGE_NAMES, StageFeatures, export_onnx
from pinas.deploy.parity import check_parity, eval_dataset, iter_batches
from pinas.deploy.predict import OnnxClassifier
from pinas.io.artifacts import MANIFEST, sha256_file, verify_manifest
from pinas.io.stage_dirs import RetrainDir
from pinas.models.backbone import Classifier, PiNASBackbone, build_subnet
from pinas.space import get_space
from pinas.stages.export import ExportConfig, run_export

REPO = Path(__file__).resolve().parent.parent
ARCH = "10-23-31-02"  # every candidate appears, incl. the radix-2 / cardinality-2 split attention
SPEC = dict(cls_train_per_class=8, cls_val_per_class=6)  # 40 train / 30 val images of 72 px
PREPROCESSING = EvalPreprocessing(crop=64, resize=73)
TRANSFER = {"coco": {"bbox_mAP": 0.012}, "ade20k": {"mIoU": 0.2}}


def make_retrain_dir(folder: Path, classes: list[str], seed: int = 0) -> Path:
    """A retrain output folder per the stage contract, with a randomised but *non-trivial* network.

    Fresh init zeroes the last BN gamma of every block (so the residual branches are silent) and gives near-zero
    logits; randomising BN affine and running statistics makes every layer matter, like trained weights, so a
    broken export cannot pass parity by accident.
    """
    torch.manual_seed(seed)
    model = Classifier(build_subnet(get_space("demo"), ARCH), len(classes))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        model.fc.weight.mul_(20)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model_config.json").write_text(json.dumps(
        {"space": "demo", "arch": ARCH, "num_classes": len(classes), "classes": classes, "input_size": 64,
         "preprocessing": PREPROCESSING.to_dict()}))
    (folder / "metrics.json").write_text(json.dumps({"top1": 0.61, "top5": 1.0}))
    return folder


@pytest.fixture(scope="module")
def imagenet(demo_data) -> Path:
    return demo_data("imagenet", **SPEC)


@pytest.fixture(scope="module")
def retrain_dir(tmp_path_factory, imagenet) -> Path:
    classes = sorted(p.name for p in (imagenet / "val").iterdir())
    return make_retrain_dir(tmp_path_factory.mktemp("retrain"), classes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, retrain_dir, imagenet) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export")
    cfg = ExportConfig(int8=True, calibration_images=20, eval_images=30, parity_images=30, latency_batches=(1, 8),
                       warmup=1, repeats=3)
    manifest = run_export(cfg, retrain_dir, imagenet, out, transfer_metrics=TRANSFER)
    return out, manifest


@pytest.fixture(scope="module")
def torch_reference(retrain_dir, imagenet):
    """Validation images preprocessed the retrain way (torch), their paths, and torch eager logits."""
    model = RetrainDir(retrain_dir).load_classifier()
    dataset = eval_dataset(imagenet / "val", PREPROCESSING, None)
    images = torch.cat([x for x, _ in iter_batches(dataset, PREPROCESSING)])
    with torch.inference_mode():
        logits = model(images).numpy()
    return model, images, [str(p) for p, _ in dataset.samples], logits


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.slow
def test_export_checks_and_matches_torch(exported, torch_reference):
    out, manifest = exported
    model, images, _, logits = torch_reference
    assert verify_manifest(out)["files"] == manifest["files"]
    assert set(manifest["files"]) == {"model.onnx", "backbone.onnx", "model.int8.onnx", "model_card.json",
                                      "model_card.md"}
    for name in ("model.onnx", "backbone.onnx"):
        onnx.checker.check_model(str(out / name), full_check=True)
        graph = onnx.load(str(out / name)).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    # independent of the stage's own check: odd batch sizes through the dynamic axis, against torch eager
    x = images[:7].numpy()
    np.testing.assert_allclose(_ort(out / "model.onnx", x)[0], logits[:7], atol=1e-4, rtol=0)
    assert (_ort(out / "model.onnx", images.numpy())[0].argmax(1) == logits.argmax(1)).all()
    with torch.inference_mode():
        stages = StageFeatures(model.backbone)(images[:3])
    got = _ort(out / "backbone.onnx", images[:3].numpy())
    assert len(got) == 4
    for ref, have in zip(stages, got):
        assert have.shape == tuple(ref.shape)
        np.testing.assert_allclose(have, ref.numpy(), atol=1e-4, rtol=0)
    m = manifest["metrics"]
    assert m["parity_max_abs_diff"] < 1e-3 and m["backbone_parity_max_abs_diff"] < 1e-3
    assert m["top1_agreement"] == 1.0


@pytest.mark.slow
def test_model_card_and_latency(exported, retrain_dir):
    out, manifest = exported
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["arch"] == ARCH and card["model"]["space"] == "demo"
    assert card["model"]["params"] > 0 and card["model"]["macs"] > 0
    assert card["export"]["exporter"] in ("dynamo", "torchscript") and card["export"]["opset"] == 18
    assert card["retrain_metrics"] == {"top1": 0.61, "top5": 1.0}
    assert card["transfer_metrics"] == TRANSFER
    for name, entry in card["files"].items():
        assert entry["sha256"] == sha256_file(out / name) == manifest["files"][name]
    assert {"torch", "onnx", "onnxruntime"} <= set(card["versions"])
    assert "73 px" in card["preprocessing"]["description"]
    assert [o["stride"] for o in card["backbone"]["outputs"].values()] == [4, 8, 16, 32]
    for batch in ("1", "8"):
        entry = card["latency"]["batches"][batch]
        for backend in ("torch", "onnxruntime", "int8"):
            assert entry[backend]["median_ms"] > 0 and entry[backend]["p10_ms"] <= entry[backend]["p90_ms"]
        assert entry["ratio_onnxruntime"] == pytest.approx(
            entry["onnxruntime"]["median_ms"] / entry["torch"]["median_ms"], rel=1e-3)
        assert entry["onnxruntime"]["torch_loaded"] is False  # each backend really ran in its own process
    md = (out / "model_card.md").read_text()
    assert ARCH in md and card["files"]["model.onnx"]["sha256"] in md and "bbox_mAP" in md


@pytest.mark.slow
def test_int8_model_and_accuracy_delta(exported, torch_reference):
    out, manifest = exported
    onnx.checker.check_model(str(out / "model.int8.onnx"), full_check=True)
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size / 2
    q = json.loads((out / "model_card.json").read_text())["int8"]
    assert q["images"] == 30 and q["calibration_images"] == 20
    # measured here, independently of the stage: both models in plain onnxruntime on the 30 evenly spread
    # validation images, preprocessed the torch way, against the labels of their class folders
    _, images, paths, _ = torch_reference
    pick = np.linspace(0, len(paths) - 1, num=30).round().astype(int)
    classes = sorted({Path(p).parent.name for p in paths})
    labels = np.array([classes.index(Path(paths[i]).parent.name) for i in pick])
    x = images.numpy()[pick]
    for name, key in (("model.onnx", "top1_fp32"), ("model.int8.onnx", "top1_int8")):
        top1 = 100.0 * float((_ort(out / name, x)[0].argmax(1) == labels).mean())
        assert q[key] == pytest.approx(top1, abs=0.01), (name, q, top1)
    assert q["top1_delta"] == pytest.approx(q["top1_int8"] - q["top1_fp32"])
    assert manifest["metrics"]["top1_delta_int8"] == q["top1_delta"]
    assert OnnxClassifier(out / "model.int8.onnx").classes == OnnxClassifier(out / "model.onnx").classes


@pytest.mark.slow
def test_torch_free_runtime_gives_torch_top1(exported, torch_reference):
    out, _ = exported
    _, _, paths, logits = torch_reference
    script = (
        "import json, sys\n"
        "from pinas.deploy.predict import OnnxClassifier\n"
        "clf = OnnxClassifier(sys.argv[1])\n"
        "logits = clf.logits(sys.argv[2:])\n"
        "assert 'torch' not in sys.modules, 'pinas.deploy.predict pulled in torch'\n"
        "print(json.dumps({'logits': logits.tolist(), 'classes': clf.classes}))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out / "model.onnx"), *paths], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    got = np.array(result["logits"])
    assert (got.argmax(1) == logits.argmax(1)).all()
    np.testing.assert_allclose(got, logits, atol=1e-4)  # numpy/PIL preprocessing == the torch data pipeline
    # the CLI, too
    proc = subprocess.run([sys.executable, "-m", "pinas.deploy.predict", str(out / "model.onnx"), *paths[:4],
                           "--json", "--top", "2"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    labels = [json.loads(line)["top"][0]["label"] for line in proc.stdout.splitlines()]
    assert labels == [result["classes"][i] for i in logits[:4].argmax(1)]


def test_a_retrain_at_another_size_deploys_with_its_own_preprocessing(demo_data, tmp_path):
    """Retrained at 48 px crops evaluated from a 60 px short side (not the default 55), exported, and run by the
    torch-free predictor on image files: its top-1 is the retrain evaluation's, its logits torch's."""
    from pinas.config import load_config
    from pinas.stages.retrain import run_retrain

    data = demo_data("imagenet", cls_train_per_class=6, cls_val_per_class=4)
    cfg = load_config(profile="demo").retrain.model_copy(update={"epochs": 1, "input_size": 48, "decode_size": 60,
                                                                 "batch_size": 10})
    retrain = run_retrain(cfg, data, tmp_path / "retrain")
    run_export(ExportConfig(exporter="torchscript", latency_batches=(), parity_images=8), tmp_path / "retrain", data,
               tmp_path / "export")
    model = RetrainDir(tmp_path / "retrain").load_classifier()
    val = ImageFolderDataset(data / "val", 60)  # the evaluation written out: short side 60, centre 48
    x = torch.stack([val[i][0] for i in range(len(val))])[..., 6:54, 6:54]
    with torch.inference_mode():
        logits = model(pinas_data.Normalize()(x)).numpy()
    labels = np.array([label for _, label in val.samples])
    assert 100 * (logits.argmax(1) == labels).mean() == pytest.approx(retrain["metrics"]["top1"])
    script = ("import json, sys\n"
              "from pinas.deploy.predict import OnnxClassifier\n"
              "print(json.dumps(OnnxClassifier(sys.argv[1]).logits(sys.argv[2:]).tolist()))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "export" / "model.onnx"),
                           *[str(p) for p, _ in val.samples]], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    deployed = np.array(json.loads(proc.stdout))
    assert (deployed.argmax(1) == logits.argmax(1)).all()
    np.testing.assert_allclose(deployed, logits, atol=1e-4)


@pytest.mark.slow
def test_wrong_input_shape_is_a_clear_error(exported):
    out, _ = exported
    clf = OnnxClassifier(out / "model.onnx")
    assert clf.input_shape == (3, 64, 64)
    with pytest.raises(ValueError, match=r"expects \(N, 3, 64, 64\), got \(2, 1, 64, 64\).*axis 1"):
        clf.predict(np.zeros((2, 1, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"expects \(N, 3, 64, 64\), got \(1, 3, 32, 32\)"):
        clf.predict(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(3, 64, 64\)"):
        clf.predict(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="dtype uint8"):
        clf.predict(np.zeros((1, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="expects 64x64 input, input_size=224"):
        OnnxClassifier(out / "model.onnx", input_size=224)


@pytest.mark.slow
def test_corrupted_onnx_weight_fails_parity(exported, torch_reference, tmp_path):
    out, _ = exported
    model, images, _, _ = torch_reference
    images = images[:12]
    proto = onnx.load(str(out / "model.onnx"))
    weight = next(t for t in proto.graph.initializer if t.dims == [5, 512])  # the linear head
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr[0, :] += 0.05  # one class's row: small, but far outside any float round-off
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(proto, str(tmp_path / "corrupt.onnx"))
    check_parity(out / "model.onnx", model, images, 1e-3, 0.98)  # the intact file passes
    with pytest.raises(ParityError, match=r"output 'logits'.*exceeds tolerance_abs=0\.001"):
        check_parity(tmp_path / "corrupt.onnx", model, images, 1e-3, 0.98)


@pytest.mark.slow
def test_run_export_fails_when_tolerance_exceeded(retrain_dir, imagenet, tmp_path):
    # float round-off between runtimes is ~1e-7 here, so 1e-10 must fail; TorchScript exporter for speed
    cfg = ExportConfig(exporter="torchscript", tolerance_abs=1e-10, latency_batches=(), parity_images=10)
    with pytest.raises(ParityError, match="exceeds tolerance_abs"):
        run_export(cfg, retrain_dir, imagenet, tmp_path)
    assert not (tmp_path / MANIFEST).exists()  # a failed stage never looks complete


def test_inputs_are_validated_before_export(retrain_dir, imagenet, tmp_path):
    cfg = ExportConfig(latency_batches=())
    with pytest.raises(ExportError, match="model.pt: missing"):
        run_export(cfg, tmp_path, imagenet, tmp_path / "out")  # tmp_path exists but holds no model.pt
    (tmp_path / "model.pt").write_bytes((retrain_dir / "model.pt").read_bytes())
    with pytest.raises(ExportError, match="model_config.json: missing"):
        run_export(cfg, tmp_path, imagenet, tmp_path / "out")
    with pytest.raises(ExportError, match=r"val: validation folder not found"):
        run_export(cfg, retrain_dir, tmp_path / "nodata", tmp_path / "out")
    (tmp_path / "val").mkdir()
    with pytest.raises(ExportError, match="train: training folder not found"):
        run_export(ExportConfig(int8=True), retrain_dir, tmp_path, tmp_path / "out")
    bad = json.loads((retrain_dir / "model_config.json").read_text()) | {"arch": "10-23-31-0x"}
    (tmp_path / "model_config.json").write_text(json.dumps(bad))
    with pytest.raises(ExportError, match=r"model_config.json: .*'0x'|model_config.json: .*character"):
        run_export(cfg, tmp_path, imagenet, tmp_path / "out")
    shuffled = json.loads((retrain_dir / "model_config.json").read_text())
    shuffled["classes"] = shuffled["classes"][::-1]
    (tmp_path / "model_config.json").write_text(json.dumps(shuffled))
    with pytest.raises(ExportError, match="do not match the model's"):
        run_export(cfg, tmp_path, imagenet, tmp_path / "out")
    with pytest.raises(ValueError, match="(?i)extra"):
        ExportConfig(tolerance=1e-3)
    assert not (tmp_path / "out").exists()


def test_output_stride_8_backbone_exports_and_matches_torch(tmp_path):
    """The dilated backbone of the segmentation transfers (stride-1 avd pools, contracted dilations) in ONNX."""
    torch.manual_seed(0)
    backbone = PiNASBackbone(get_space("demo"), ARCH, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)).eval()
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 2.0)
    features = StageFeatures(backbone)
    info = export_onnx(features, tmp_path / "os8.onnx", 64, STAGE_NAMES)
    images = torch.randn(5, 3, 64, 64)
    report = check_parity(tmp_path / "os8.onnx", features, images, tolerance_abs=1e-3)
    assert report["max_abs_diff"] < 1e-3 and info["outputs"]["stage4"][1:] == [512, 8, 8]
