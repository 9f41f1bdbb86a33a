"""A cross-encoder reranker loaded from a model folder (kind `cross-encoder`): scores (query,
document) pairs with one forward pass per pair, batched across requests by the same batcher.

Pairs are built as `[CLS] query [SEP] document [SEP]` from separately tokenised texts, so the
document alone is truncated (to the model's limit or the request's `max_tokens_per_doc`). The
segment ids the graph needs are derived from the ids (1 after the first [SEP]), which keeps each
pair a single id sequence for the batcher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from app.core.errors import InputTooLong
from app.core.manifest import Backend, Manifest, Precision, VariantParity
from app.inference.text_model import open_variant

SCORE_OUTPUT = "score"


class CrossEncoderModel:
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
    ) -> None:
        self.manifest = manifest
        self.session, self.backend, self.precision = open_variant(folder, variant, backend, precision, threads, streams)
        self.tokenizer = Tokenizer.from_file(str(folder / manifest.text_tower.tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.cls_id = self._special("[CLS]")
        self.sep_id = self._special("[SEP]")
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad

    def _special(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.manifest.name}: tokenizer has no {token} token")
        return token_id

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def pairs(
        self, query: str, documents: list[str], max_tokens_per_doc: int | None = None, truncate: bool = True
    ) -> list[np.ndarray]:
        """One id sequence per (query, document); returns them unpadded. With `truncate=False` a
        document longer than its room (the model's limit or `max_tokens_per_doc`) raises InputTooLong."""
        limit = self.manifest.text_tower.max_tokens
        query_ids = self._ids([query])[0][: limit // 2]  # a long query leaves room for the document
        room = limit - len(query_ids) - 3
        if max_tokens_per_doc is not None:
            room = min(room, max_tokens_per_doc)
        head = [self.cls_id, *query_ids, self.sep_id]
        docs = self._ids(documents)
        if not truncate:
            for index, doc in enumerate(docs):
                if len(doc) > room:
                    raise InputTooLong.document(index, len(doc), room)
        return [np.asarray([*head, *doc[:room], self.sep_id], dtype=np.int64) for doc in docs]

    def forward(self, sequences: list[np.ndarray]) -> np.ndarray:
        """(batch, 1, 1) relevance logits for unpadded pair sequences."""
        length = max(len(s) for s in sequences)
        ids = np.full((len(sequences), length), self.pad_id, dtype=np.int64)  # (batch, seq)
        mask = np.zeros_like(ids)
        segments = np.zeros_like(ids)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
            first_sep = int(np.argmax(seq == self.sep_id))
            segments[row, first_sep + 1 : len(seq)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.session.input_names:
            feeds["token_type_ids"] = segments
        (scores,) = self.session.run(feeds, [SCORE_OUTPUT])  # (batch, 1)
        return scores.reshape(len(sequences), 1, 1)

    def score(self, query: str, documents: list[str], batch_size: int = 32) -> np.ndarray:
        """Synchronous scoring (export parity, offline use): (n,) logits."""
        sequences = self.pairs(query, documents)
        out = [self.forward(sequences[i : i + batch_size])[:, 0, 0] for i in range(0, len(sequences), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
