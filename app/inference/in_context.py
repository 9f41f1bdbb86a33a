"""A served BlockRank model (kind `blockrank`): one prompt per request holds the query and every
document, scored in one early-exit forward pass (app/inference/blockrank.py, PyTorch).

Prompts are not batched across requests: a prompt already holds up to `max_documents` documents
and its cost is linear in them. Forward passes run one at a time on a worker thread (torch uses
every intra-op thread it is given); admission is bounded like the batchers': at most `max_queue`
documents waiting, beyond that QueueFull (429).
torch is imported here only when such a model is loaded (`pip install 'tessera[blockrank]'`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.core import metrics
from app.core.config import Settings
from app.core.errors import InputTooLong, QueueFull, TooManyInputs
from app.core.manifest import Manifest
from app.inference.served import Capability, Scorer


class InContextReranker(Scorer):
    capabilities = frozenset({Capability.SCORE})

    def __init__(self, folder: Path, manifest: Manifest, settings: Settings) -> None:
        super().__init__(folder, manifest, None)  # no ONNX variant: PyTorch fp32
        try:
            import torch

            from app.inference.blockrank import BlockRankModel, load_backbone
        except ImportError as exc:  # the runtime image has no torch
            raise RuntimeError("a blockrank model needs torch: pip install 'tessera[blockrank]'") from exc
        spec = manifest.blockrank
        assert spec is not None  # the manifest validates it for this kind
        self.spec = spec
        if settings.threads:
            torch.set_num_threads(settings.threads)
        backbone, self.tokenizer = load_backbone(folder, spec.backbone)
        self.model = BlockRankModel(backbone, spec.backbone, spec.layer, spec.doc_tokens).eval()
        self._torch = torch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"blockrank-{manifest.name}")
        self._waiting = 0
        self._max_waiting = settings.max_queue
        self._tokens = metrics.TOKENS.labels(manifest.name)

    async def stop(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _check_lengths(self, documents: list[str], cap: int) -> None:
        """truncate=false: 413 for the first document whose block would be cut."""
        template = self.model.prompt.document
        for index, text in enumerate(documents):
            body = template.format(index=index + 1, text=text)
            length = len(self.tokenizer(body, add_special_tokens=False)["input_ids"])
            if self.model.kind == "encoder":
                length += 1  # [SEP]
            if length > cap:
                raise InputTooLong.document(index, length, cap)

    def _score(self, query: str, documents: list[str], cap: int) -> tuple[np.ndarray, int]:
        inputs = self.model.encode_prompt(self.tokenizer, query, documents, doc_tokens=cap)
        with self._torch.inference_mode():
            scores = self.model.forward_blocks(inputs)
        return scores.float().numpy(), inputs.tokens

    async def score(
        self, query: str, documents: list[str], max_tokens_per_doc: int | None = None, truncate: bool = True
    ) -> tuple[np.ndarray, int]:
        """(n,) the in-context relevance distribution over the documents (sums to 1), and tokens."""
        if len(documents) > self.spec.max_documents:
            raise TooManyInputs(
                f"{len(documents)} documents; this model ranks at most {self.spec.max_documents} at once"
            )
        cap = min(self.spec.doc_tokens, max_tokens_per_doc or self.spec.doc_tokens)
        if not truncate:
            self._check_lengths(documents, cap)
        if self._waiting + len(documents) > self._max_waiting:
            raise QueueFull(f"server busy: {self.name} queue is full ({self._waiting} documents waiting)")
        self._waiting += len(documents)
        try:
            loop = asyncio.get_running_loop()
            scores, tokens = await loop.run_in_executor(self._executor, self._score, query, documents, cap)
        finally:
            self._waiting -= len(documents)
        self._tokens.inc(tokens)
        return scores, tokens
