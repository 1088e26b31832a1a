"""Deployment: ONNX export and its checks, onnxruntime parity, int8 quantisation, latency in separate processes,
the model card, and torch-free inference (:mod:`pinas.deploy.predict`)."""
