"""Training examples from every supported layout, validated before any training starts.

Retrieval layouts become a `RetrievalDataset` (corpus, queries, graded qrels with any number of
positives per query): BEIR folders directly; pairs / triplets JSONL (`{"query", "positive" |
"positives", "negative"? | "negatives"?}`) through a synthetic corpus keyed by text. STS CSV gives
scored sentence pairs for CoSENT.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from training.data.beir import DatasetError, RetrievalDataset, iter_jsonl, load_beir
from training.data.sts import StsPair, read_sts


def _doc_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_pairs(path: Path) -> tuple[RetrievalDataset, dict[str, list[str]]]:
    """Pairs/triplets JSONL -> (dataset, given hard negatives per query id)."""
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negatives: dict[str, list[str]] = {}
    for line_no, row in iter_jsonl(path):
        query = row.get("query", row.get("anchor")) if isinstance(row, dict) else None
        positives = row.get("positives", [row["positive"]] if "positive" in row else []) if query else []
        if not isinstance(query, str) or not query.strip() or not positives:
            raise DatasetError(f"{path}:{line_no}: expected {{'query', 'positive' or 'positives'}}")
        query_id = _doc_id(query)
        queries[query_id] = query
        for text in positives:
            corpus.setdefault(_doc_id(text), {"title": "", "text": text})
            qrels.setdefault(query_id, {})[_doc_id(text)] = 1
        for text in row.get("negatives", [row["negative"]] if "negative" in row else []):
            corpus.setdefault(_doc_id(text), {"title": "", "text": text})
            negatives.setdefault(query_id, []).append(_doc_id(text))
    if not queries:
        raise DatasetError(f"{path}: no examples")
    return RetrievalDataset(corpus, queries, qrels, path.stem), negatives


def load_retrieval(format: str, path: Path, qrels_split: str = "test") -> tuple[RetrievalDataset, dict[str, list[str]]]:
    if format == "beir":
        if not path.is_dir():
            raise DatasetError(f"{path}: not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
        return load_beir(path, qrels_split), {}
    return load_pairs(path)


def load_sts(path: Path) -> list[StsPair]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return read_sts(path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc
