"""One reader/writer per stage folder format: the only place that knows a stage's file names.

A stage writes its outputs through its folder class and a later stage (or the flow, ``status``, a benchmark) reads
them through the same class, so no stage imports another stage's code and no file name is spelled twice. Readers
that feed a model into a later stage check the manifest digests first (:meth:`StageDir.require`), so a corrupted
or unfinished upstream folder is an error naming the file, never a silently wrong input.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pinas.data.preprocess import EvalPreprocessing
from pinas.io.artifacts import (
    MANIFEST,
    ArtifactError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    read_json,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from pinas.models.backbone import Classifier, PiNASBackbone, build_subnet
from pinas.models.supernet_pi import SupernetPi
from pinas.space import get_space


class StageDir:
    """A stage's output folder: its files by name and its manifest (written last, so it means "finished")."""

    stage = "stage"
    #: the files a later stage reads; their content (not the manifest, which holds wall times) keys those stages
    HANDOFF: tuple[str, ...] = ()

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def finished(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def verify(self) -> dict[str, Any]:
        return verify_manifest(self.path)

    def require(self, what: str | None = None) -> dict[str, Any]:
        """The verified manifest of a finished folder, or :class:`ArtifactError` saying what is wrong."""
        what = what or f"{self.stage} folder"
        if not self.path.is_dir():
            raise ArtifactError(f"{what} {self.path} does not exist")
        return self.verify()

    def write_manifest(self, files: list[str], config: dict[str, Any], metrics: dict[str, Any] | None = None,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return write_manifest(self.path, self.stage, files, config, metrics, extra)

    def handoff_digest(self) -> str:
        """sha256 over the manifest's digests of the :attr:`HANDOFF` files: what a later stage's cache key hashes,
        so a stage rebuilt byte-identical (after a corrupted file, say) keeps every later stage cached."""
        files = self.manifest()["files"]
        missing = [name for name in self.HANDOFF if name not in files]
        if missing:
            raise ArtifactError(f"{self.path}: manifest lists no {', '.join(missing)}")
        payload = json.dumps({name: files[name] for name in self.HANDOFF}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- supernet
class SupernetDir(StageDir):
    """``supernet.pt`` (tensor-only student, teacher, queue), ``config.json``, ``metrics.jsonl``, ``checkpoints/``."""

    stage, ARTIFACT, CONFIG, STEP_LOG = "supernet", "supernet.pt", "config.json", "metrics.jsonl"
    OUTPUTS = [ARTIFACT, STEP_LOG, CONFIG]
    HANDOFF = (ARTIFACT, CONFIG)

    def write(self, model: SupernetPi, settings: dict[str, Any], train_dir: Path) -> None:
        atomic_torch_save(model.artifact_state(), self / self.ARTIFACT)
        atomic_write_json(self / self.CONFIG, {"supernet": settings, "train_dir": str(train_dir)})

    def settings(self) -> dict[str, Any]:
        """The settings it was trained with, from its hand-off ``config.json`` (after checking the folder's
        digests): the stage config's result settings, runtime fields left out."""
        manifest = self.require("supernet_dir")
        missing = [name for name in self.HANDOFF if name not in manifest["files"]]
        if missing:
            raise ArtifactError(f"supernet_dir {self.path}: manifest lists no {', '.join(missing)}")
        return read_json(self / self.CONFIG)["supernet"]

    def load(self, device: str | torch.device = "cpu") -> SupernetPi:
        """The trained supernet-Pi (student, teacher, queue), frozen and in eval mode."""
        cfg = self.settings()
        model = SupernetPi(PiNASBackbone(get_space(cfg["space"])), cfg["projector_hidden"], cfg["feature_dim"],
                           cfg["queue_size"], cfg["temperature"], cfg["ema_momentum"])
        model.load_artifact_state(load_tensors(self / self.ARTIFACT))
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model.to(device)

    def student_backbone_state(self) -> dict[str, torch.Tensor]:
        """The student backbone's weights (keys of :class:`~pinas.models.backbone.PiNASBackbone`)."""
        student = load_tensors(self / self.ARTIFACT).get("student", {})
        return {k[len("backbone."):]: v for k, v in student.items() if k.startswith("backbone.")}


# ------------------------------------------------------------------------------------------------ linear probe
class ProbeDir(StageDir):
    """``probe.pt`` (tensor-only ``{"weight", "bias"}``), ``probe.json`` (classes, feature dim, space), step log."""

    stage, ARTIFACT, INFO, STEP_LOG = "linear_probe", "probe.pt", "probe.json", "metrics.jsonl"
    OUTPUTS = [ARTIFACT, INFO, STEP_LOG]
    HANDOFF = (ARTIFACT, INFO)

    def write(self, head: nn.Linear, info: dict[str, Any]) -> None:
        atomic_torch_save({k: v.detach().cpu() for k, v in head.state_dict().items()}, self / self.ARTIFACT)
        atomic_write_json(self / self.INFO, info)

    def load(self, device: str | torch.device = "cpu", verify: bool = True) -> tuple[nn.Linear, dict[str, Any]]:
        """The trained head (eval mode) and its ``probe.json``; the digests are checked unless ``verify=False``."""
        if verify:
            self.require("probe_dir")
        state = load_tensors(self / self.ARTIFACT)
        head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
        return head.to(device).eval(), read_json(self / self.INFO)


# ------------------------------------------------------------------------------------------------------- study
class StudyDir(StageDir):
    """``study.json`` (architectures, top-1 per seed, proxy scores, correlations, seed noise) and
    ``scatter-<proxy>.png``."""

    stage, REPORT = "study", "study.json"
    HANDOFF = (REPORT,)

    @staticmethod
    def scatter(proxy: str) -> str:
        return f"scatter-{proxy}.png"

    def outputs(self, proxies: list[str]) -> list[str]:
        return [self.REPORT, *(self.scatter(p) for p in proxies)]

    def write(self, report: dict[str, Any]) -> None:
        atomic_write_json(self / self.REPORT, report)

    def report(self) -> dict[str, Any]:
        self.require("study folder")
        return read_json(self / self.REPORT)


# ------------------------------------------------------------------------------------------------------ search
class SearchDir(StageDir):
    """``search_state.json`` (resume), ``candidates.jsonl``, ``result.json``, ``fitness.png``, ``pareto.png``."""

    stage, STATE, CANDIDATES, RESULT = "search", "search_state.json", "candidates.jsonl", "result.json"
    FITNESS_PLOT, PARETO_PLOT = "fitness.png", "pareto.png"
    OUTPUTS = [RESULT, CANDIDATES, STATE, FITNESS_PLOT, PARETO_PLOT]
    HANDOFF = (RESULT,)

    def read_state(self) -> dict[str, Any] | None:
        path = self / self.STATE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: corrupted search state ({exc}); remove it to start over") from exc

    def write_state(self, state: dict[str, Any], candidates: list[dict]) -> None:
        self.write_candidates(candidates)
        atomic_write_json(self / self.STATE, state)

    def write_candidates(self, candidates: list[dict]) -> None:
        atomic_write_bytes(self / self.CANDIDATES, "".join(json.dumps(c) + "\n" for c in candidates).encode())

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self / self.RESULT, result)

    def result(self) -> dict[str, Any]:
        return read_json(self / self.RESULT)

    def candidates(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self / self.CANDIDATES).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------- retrain
class RetrainDir(StageDir):
    """``model.pt`` (tensor-only :class:`~pinas.models.backbone.Classifier` state dict, whose ``backbone.*`` keys
    the OpenMMLab backbone loads), ``model_config.json`` (what rebuilds the network), ``metrics.json``, step log."""

    stage, MODEL, MODEL_CONFIG, METRICS, STEP_LOG = "retrain", "model.pt", "model_config.json", "metrics.json", \
        "metrics.jsonl"
    OUTPUTS = [MODEL, MODEL_CONFIG, METRICS, STEP_LOG]
    HANDOFF = (MODEL, MODEL_CONFIG)  # metrics.json holds wall times; the same weights give the same metrics

    def write(self, model: nn.Module, model_config: dict[str, Any], metrics: dict[str, Any]) -> None:
        state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
                 for k, v in model.state_dict().items()}
        atomic_torch_save(state, self / self.MODEL)
        atomic_write_json(self / self.MODEL_CONFIG, model_config)
        atomic_write_json(self / self.METRICS, metrics)

    def model_config(self) -> dict[str, Any]:
        """``model_config.json``: space, arch, num_classes, classes, input_size, preprocessing (checked for
        completeness)."""
        if not self.path.is_dir():
            raise ArtifactError(f"retrain folder {self.path} does not exist")
        for name in (self.MODEL, self.MODEL_CONFIG):
            if not (self / name).is_file():
                raise ArtifactError(f"{self / name}: missing (the retrain stage writes {self.MODEL} and "
                                    f"{self.MODEL_CONFIG})")
        config = read_json(self / self.MODEL_CONFIG)
        missing = [k for k in ("space", "arch", "num_classes", "input_size", "preprocessing") if k not in config]
        if missing:
            raise ArtifactError(f"{self / self.MODEL_CONFIG}: missing field(s) {', '.join(missing)}")
        classes = config.get("classes")
        if classes is not None and len(classes) != int(config["num_classes"]):
            raise ArtifactError(f"{self / self.MODEL_CONFIG}: {len(classes)} classes listed but "
                                f"num_classes={config['num_classes']}")
        return config

    def preprocessing(self) -> EvalPreprocessing:
        """The evaluation preprocessing the network was retrained (and is deployed) with."""
        try:
            return EvalPreprocessing.from_dict(self.model_config()["preprocessing"], str(self / self.MODEL_CONFIG))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(str(exc)) from exc

    def metrics(self) -> dict[str, Any]:
        path = self / self.METRICS
        return read_json(path) if path.is_file() else {}

    def load_classifier(self, device: str | torch.device = "cpu") -> Classifier:
        """The retrained classifier in eval mode (tensor-only load); errors name the file and what is wrong."""
        config = self.model_config()
        try:
            model = Classifier(build_subnet(get_space(config["space"]), config["arch"]), int(config["num_classes"]))
        except ValueError as exc:
            raise ArtifactError(f"{self / self.MODEL_CONFIG}: {exc}") from exc
        try:
            model.load_state_dict(load_tensors(self / self.MODEL))
        except (ArtifactError, RuntimeError) as exc:
            raise ArtifactError(f"{self / self.MODEL}: does not load into {config['space']}:{config['arch']} "
                                f"({exc})") from exc
        return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------- transfer
class TransferDir(StageDir):
    """An MMEngine ``work_dir``: ``iter_*.pth`` / ``epoch_*.pth`` + ``last_checkpoint`` (MMEngine's own resume),
    ``transfer_run.json`` (what it trains, checked before resuming), ``metrics.json`` (the final validation) and
    ``transfer.log`` (the training process's whole output)."""

    stage, METRICS, RUN, LOG = "transfer", "metrics.json", "transfer_run.json", "transfer.log"
    HANDOFF = (METRICS,)

    def __init__(self, path: str | Path, task: str | None = None):
        super().__init__(path)
        if task is not None:
            self.stage = f"transfer-{task}"

    def last_checkpoint(self) -> Path | None:
        """The checkpoint MMEngine resumes from: the one its ``last_checkpoint`` file names, if any."""
        pointer = self / "last_checkpoint"
        return self.path / Path(pointer.read_text().strip()).name if pointer.is_file() else None

    def read_run(self) -> dict[str, Any] | None:
        path = self / self.RUN
        return json.loads(path.read_text()) if path.is_file() else None

    def write_run(self, identity: dict[str, Any]) -> None:
        atomic_write_json(self / self.RUN, identity)

    def write_metrics(self, result: dict[str, Any]) -> None:
        atomic_write_json(self / self.METRICS, result)

    def metrics(self) -> dict[str, Any]:
        return read_json(self / self.METRICS)


# ------------------------------------------------------------------------------------------------------ export
class ExportDir(StageDir):
    """``model.onnx`` (classifier), ``backbone.onnx`` (stage maps), optional ``model.int8.onnx``, the model card."""

    stage, MODEL, BACKBONE, INT8, CARD_JSON, CARD_MD = "export", "model.onnx", "backbone.onnx", "model.int8.onnx", \
        "model_card.json", "model_card.md"
    HANDOFF = (MODEL, BACKBONE)

    def card_markdown(self) -> str:
        return (self / self.CARD_MD).read_text()
