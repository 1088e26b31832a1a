"""The errors of the export stage (importable without the ONNX stack)."""


class ExportError(RuntimeError):
    """The export stage cannot run (bad inputs) or produced a model that fails its checks."""


class ParityError(ExportError):
    """onnxruntime's outputs differ from torch eager beyond the configured tolerance."""
