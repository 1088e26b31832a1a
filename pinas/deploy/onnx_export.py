"""ONNX export of a pinas network, checked the strict way before anything is trusted.

A model is exported with a dynamic batch axis, passes ``onnx.checker`` with ``full_check`` and strict shape
inference, and declares its input shape, so a consumer can validate inputs without running the model. The dynamo
exporter (torch 2.13's default, needs onnxscript) is tried first; the TorchScript exporter is a fallback with
``exporter="auto"``, and what was used (and why) is returned for the model card.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from pinas import __version__
from pinas.deploy.errors import ExportError
from pinas.io.artifacts import atomic_write_bytes
from pinas.models.backbone import PiNASBackbone

log = logging.getLogger("pinas")

INPUT_NAME = "image"
STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")


class StageFeatures(nn.Module):
    """The backbone as deployed downstream: image -> the four stage maps (strides 4, 8, 16, 32)."""

    def __init__(self, backbone: PiNASBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.backbone(x, return_stages=True)



@contextlib.contextmanager
def _quiet_exporter():
    """The exporters log about torchvision ops and warn about deprecated APIs; none of it concerns these models."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_proto(module: nn.Module, example: torch.Tensor, output_names: Sequence[str], opset: int,
                  exporter: str) -> onnx.ModelProto:
    with _quiet_exporter():
        if exporter == "dynamo":
            program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=list(output_names),
                                        dynamic_shapes=({0: "batch"},), verbose=False)
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=list(output_names),
                          dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)})
        return onnx.load_from_string(buf.getvalue())


def check_onnx(path: Path, input_size: int, output_names: Sequence[str]) -> onnx.ModelProto:
    """Full checker, strict shape inference, and the declared I/O: (batch, 3, S, S) in, dynamic batch out."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: fails the ONNX checker ({exc})") from exc

    def dims(value_info) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = [dims(v) for v in model.graph.input]
    if len(inputs) != 1 or not isinstance(inputs[0][0], str) or inputs[0][1:] != [3, input_size, input_size]:
        raise ExportError(f"{path}: input is {inputs}, expected one input [batch, 3, {input_size}, {input_size}]")
    outputs = {v.name: dims(v) for v in model.graph.output}
    if list(outputs) != list(output_names) or any(not d or not isinstance(d[0], str) for d in outputs.values()):
        raise ExportError(f"{path}: outputs {outputs}, expected {list(output_names)} with a dynamic batch axis")
    return model


def export_onnx(module: nn.Module, path: Path, input_size: int, output_names: Sequence[str], opset: int = 18,
                exporter: str = "auto", metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export ``module`` (eval mode) to ``path`` atomically and check it; returns exporter, opset, I/O shapes."""
    module.eval()
    example = torch.randn(2, 3, input_size, input_size)  # batch 2: torch.export specialises a size-1 axis
    info: dict[str, Any] = {"requested_opset": opset}
    if exporter in ("auto", "dynamo"):
        try:
            proto = _export_proto(module, example, output_names, opset, "dynamo")
            info["exporter"] = "dynamo"
        except Exception as exc:
            if exporter == "dynamo":
                raise ExportError(f"dynamo ONNX export of {path.name} failed: {exc}") from exc
            log.warning("dynamo export of %s failed (%s); falling back to the TorchScript exporter", path.name, exc)
            info["fallback_reason"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            exporter = "torchscript"
    if exporter == "torchscript":
        proto = _export_proto(module, example, output_names, min(opset, 20), "torchscript")
        info["exporter"] = "torchscript"
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "pinas", __version__
    atomic_write_bytes(path, proto.SerializeToString())
    checked = check_onnx(path, input_size, output_names)
    info["opset"] = next(o.version for o in checked.opset_import if o.domain in ("", "ai.onnx"))
    if info["opset"] != opset:
        log.warning("%s: asked for opset %d, the exporter produced opset %d", path.name, opset, info["opset"])
    info["input"] = {INPUT_NAME: ["batch", 3, input_size, input_size]}
    info["outputs"] = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                       for v in checked.graph.output}
    return info
