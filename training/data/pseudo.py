"""Training pairs without labels: pseudo-queries made from a corpus's own documents.

`titles`: a document's title is its query and its body the positive (the title is removed from the
positive, or the pair would be matched by copying words). `first_sentences`: the first sentence of
the body is the query and the rest of the document the positive. `generated`: a question a causal LM
wrote for the document (training/query_generation.py) is the query and the document its positive
(without its title when `titles` is also asked for, so both kinds share one positive). Kinds may be
combined (a list); `first_sentences` stands alone, since its positive is cut differently. No
judgement file is read; a BEIR folder's real queries and qrels, when present, are only used to
evaluate (held-out half, as labelled runs are). Teacher-filtered mining (`mining.teacher_model`) and
distillation (`distillation:`) supply the teacher's labels: hard negatives by teacher score with its
likely false negatives dropped, and a graded in-batch distribution.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from training.data.beir import DatasetError, RetrievalDataset, _read_jsonl

PseudoQueries = Literal["titles", "first_sentences", "generated"]
QUERY_ID_PREFIX: dict[str, str] = {"titles": "pq", "first_sentences": "pq", "generated": "gq"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_QUERY_WORDS, MIN_POSITIVE_WORDS = 3, 8


def first_sentence(text: str) -> tuple[str, str] | None:
    parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
    if len(parts) < 2:
        return None
    return parts[0].strip(), parts[1].strip()


def as_kinds(kinds: PseudoQueries | Sequence[PseudoQueries]) -> list[PseudoQueries]:
    return [kinds] if isinstance(kinds, str) else list(kinds)


def corpus_documents(corpus_file: Path) -> dict[str, tuple[str, str]]:
    """Every document's (title, body) by id, in file order, for a query writer to read."""
    return {str(row["_id"]): _title_and_body(row) for row in _read_jsonl(corpus_file)}


def _title_and_body(row: dict[str, Any]) -> tuple[str, str]:
    return str(row.get("title") or "").strip(), str(row["text"]).strip()


def _pairs(
    doc_id: str, title: str, body: str, kinds: list[PseudoQueries], generated: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]] | None:
    """(positive, {query id: query}) for one document, or None when it gives no usable pair."""
    if kinds == ["first_sentences"]:
        split = first_sentence(body)
        if split is None:
            return None
        query, rest = split
        candidates, positive = {"first_sentences": query}, {"title": title, "text": rest}
    else:
        candidates = {"titles": title} if "titles" in kinds else {}
        if "generated" in kinds and doc_id in generated:
            candidates["generated"] = generated[doc_id]
        positive = {"title": "" if "titles" in kinds else title, "text": body}
    if len(positive["text"].split()) < MIN_POSITIVE_WORDS:
        return None
    queries = {
        f"{QUERY_ID_PREFIX[kind]}-{doc_id}": query
        for kind, query in candidates.items()
        if len(query.split()) >= MIN_QUERY_WORDS
    }
    return (positive, queries) if queries else None


def pseudo_query_dataset(
    corpus_file: Path,
    kinds: PseudoQueries | Sequence[PseudoQueries],
    limit: int | None = None,
    generated: Mapping[str, str] | None = None,
) -> RetrievalDataset:
    """Pseudo-queries (ids `pq-<doc id>`; `gq-<doc id>` for generated ones), each judged relevant to
    its own document alone. `generated` maps a document id to its written question; `limit` caps the
    number of queries."""
    wanted = as_kinds(kinds)
    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for row in _read_jsonl(corpus_file):
        doc_id = str(row["_id"])
        pairs = _pairs(doc_id, *_title_and_body(row), wanted, generated or {})
        if pairs is None:
            continue
        corpus[doc_id] = pairs[0]
        for query_id, query in pairs[1].items():
            queries[query_id] = query
            qrels[query_id] = {doc_id: 1}
        if limit is not None and len(queries) >= limit:
            break
    if not queries:
        what = {"titles": "a title", "first_sentences": "a first sentence and more text after it"}
        found = " or ".join(what.get(kind, "a generated question") for kind in wanted)
        raise DatasetError(
            f"{corpus_file}: data.pseudo_queries {', '.join(wanted)}: no document has {found} "
            f"(at least {MIN_QUERY_WORDS} words of query and {MIN_POSITIVE_WORDS} of positive)"
        )
    return RetrievalDataset(corpus, queries, qrels, corpus_file.parent.name)


def corpus_file(path: Path) -> Path:
    """`path` itself (a .jsonl) or the corpus.jsonl of a BEIR folder."""
    candidate = path / "corpus.jsonl" if path.is_dir() else path
    if not candidate.is_file():
        raise DatasetError(f"{candidate}: file not found (data.format corpus needs a corpus.jsonl)")
    return candidate
