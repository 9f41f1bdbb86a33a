"""Training pairs without labels: pseudo-queries made from a corpus's own documents.

`titles`: a document's title is its query and its body the positive (the title is removed from the
positive, or the pair would be matched by copying words). `first_sentences`: the first sentence of
the body is the query and the rest of the document the positive. No judgement file is read; a BEIR
folder's real queries and qrels, when present, are only used to evaluate (held-out half, as
labelled runs are). Teacher-filtered mining (`mining.teacher_model`) and distillation
(`distillation:`) supply the teacher's labels: hard negatives by teacher score with its likely false
negatives dropped, and a graded in-batch distribution.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from training.data.beir import DatasetError, RetrievalDataset, _read_jsonl

PseudoQueries = Literal["titles", "first_sentences"]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_QUERY_WORDS, MIN_POSITIVE_WORDS = 3, 8


def first_sentence(text: str) -> tuple[str, str] | None:
    parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
    if len(parts) < 2:
        return None
    return parts[0].strip(), parts[1].strip()


def pseudo_query_dataset(corpus_file: Path, kind: PseudoQueries, limit: int | None = None) -> RetrievalDataset:
    """One pseudo-query per usable document (query id `pq-<doc id>`), judged relevant to it alone."""
    rows = _read_jsonl(corpus_file)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for row in rows:
        doc_id, title, body = str(row["_id"]), str(row.get("title") or "").strip(), str(row["text"]).strip()
        if kind == "titles":
            query, positive = title, {"title": "", "text": body}
        else:
            split = first_sentence(body)
            if split is None:
                continue
            query, rest = split
            positive = {"title": title, "text": rest}
        if len(query.split()) < MIN_QUERY_WORDS or len(positive["text"].split()) < MIN_POSITIVE_WORDS:
            continue
        corpus[doc_id] = positive
        queries[f"pq-{doc_id}"] = query
        qrels[f"pq-{doc_id}"] = {doc_id: 1}
        if limit is not None and len(queries) >= limit:
            break
    if not queries:
        what = "a title" if kind == "titles" else "a first sentence and more text after it"
        raise DatasetError(
            f"{corpus_file}: data.pseudo_queries {kind}: no document has {what} "
            f"(at least {MIN_QUERY_WORDS} words of query and {MIN_POSITIVE_WORDS} of positive)"
        )
    return RetrievalDataset(corpus, queries, qrels, corpus_file.parent.name)


def corpus_file(path: Path) -> Path:
    """`path` itself (a .jsonl) or the corpus.jsonl of a BEIR folder."""
    candidate = path / "corpus.jsonl" if path.is_dir() else path
    if not candidate.is_file():
        raise DatasetError(f"{candidate}: file not found (data.format corpus needs a corpus.jsonl)")
    return candidate
