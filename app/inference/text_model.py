"""A text embedding model loaded from a model folder: tokenizer + one inference session."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.backends import open_session
from app.backends.base import InferenceSession
from app.core.manifest import Backend, Manifest, OnnxIO, Precision, VariantParity
from app.inference.tokenizer import TextTokenizer, Tokenized


def open_variant(
    folder: Path,
    variant: VariantParity | None,
    backend: Backend | None,
    precision: Precision | None,
    threads: int,
    streams: int,
    default_file: str = "model.onnx",
) -> tuple[InferenceSession, Backend, Precision]:
    """Open `variant` (from the manifest) or an explicit backend/precision on the fp32 file."""
    onnx_file = variant.onnx_file if variant else default_file
    backend = variant.backend if variant else (backend or Backend.ONNXRUNTIME)
    precision = variant.precision if variant else (precision or Precision.FP32)
    return open_session(folder / onnx_file, backend, precision, threads, streams), backend, precision


class TextModel:
    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        variant: VariantParity | None = None,
        *,
        backend: Backend | None = None,
        precision: Precision | None = None,
        threads: int = 0,
        streams: int = 1,
        pad_to_multiple: int = 1,
        onnx_file: str | None = None,
        query_variant: VariantParity | None = None,
    ) -> None:
        """Run `variant` (from the manifest) or an explicit backend/precision on `onnx_file` (default:
        the tower's fp32 file). `pad_to_multiple`: the serving path's batch length rounding (offline
        `encode` pads exactly). `query_variant`: another variant for passes of one input alone
        (`choose_query_variant`), opened beside the first when it differs."""
        self.folder = folder
        self.manifest = manifest
        self.variant = variant
        tower = manifest.text_tower
        if tower.onnx is None:
            raise ValueError(f"model {manifest.name!r}: its text tower has no ONNX graph")
        self.graph: OnnxIO = tower.onnx
        self.tokenizer = TextTokenizer(folder / tower.tokenizer_file, tower.max_tokens)
        self.session, self.backend, self.precision = open_variant(
            folder, variant, backend, precision, threads, streams, default_file=onnx_file or tower.onnx_file
        )
        self.pad_to_multiple = pad_to_multiple
        self.query_variant = query_variant if query_variant not in (None, variant) else None
        self.query_session: InferenceSession | None = None
        if self.query_variant is not None:
            self.query_session, _, _ = open_variant(folder, self.query_variant, None, None, threads, streams)

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    def tokenize(self, texts: list[str], truncate: bool = True) -> list[Tokenized]:
        return self.tokenizer.encode(texts, truncate=truncate)

    @property
    def outputs(self) -> list[str]:
        """Graph outputs fetched per pass: the served vector, then the unnormalised one if any."""
        return self.graph.outputs

    def forward(self, sequences: list[np.ndarray]) -> np.ndarray:
        """One forward pass over unpadded id sequences -> (batch, outputs, dim); one sequence alone
        runs on the query session when there is one."""
        session = self.query_session if self.query_session is not None and len(sequences) == 1 else self.session
        feeds = self.tokenizer.pad(sequences, session.input_names, self.pad_to_multiple)
        return np.stack(session.run(feeds, self.outputs), axis=1)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Synchronous encoding for offline jobs: length-sorted batches, original order out."""
        tokens = self.tokenize(texts)
        order = np.argsort([len(t.ids) for t in tokens], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)  # (n, dim)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            feeds = self.tokenizer.pad([tokens[i].ids for i in rows], self.session.input_names)
            (out[rows],) = self.session.run(feeds, [self.graph.output])
        return out
