"""Tessera serving: embeddings, search and reranking on ONNX Runtime / OpenVINO (no torch)."""

__version__ = "0.1.0"
