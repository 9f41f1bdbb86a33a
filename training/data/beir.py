"""BEIR-layout retrieval datasets: read them, and convert Cranfield (SMART format) into one.

BEIR layout: `corpus.jsonl` ({"_id", "title", "text"}), `queries.jsonl` ({"_id", "text"}) and
`qrels/<split>.tsv` (query-id, corpus-id, graded score; header row optional). JSONL files are split
on "\\n" only: some passages hold U+2028-style separators that `str.splitlines()` would break on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file and the problem."""


@dataclass
class RetrievalDataset:
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade > 0}
    name: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def doc_text(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]

    def split_queries(self, seed: int = 0, fraction: float = 0.5) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Split by query (judged queries only), same corpus; deterministic for a seed."""
        ids = sorted(q for q in self.queries if self.qrels.get(q))
        random.Random(seed).shuffle(ids)
        cut = int(len(ids) * fraction)
        parts = []
        for chosen in (ids[:cut], ids[cut:]):
            keep = set(chosen)
            parts.append(
                RetrievalDataset(
                    self.corpus,
                    {q: t for q, t in self.queries.items() if q in keep},
                    {q: r for q, r in self.qrels.items() if q in keep},
                    self.name,
                )
            )
        return parts[0], parts[1]


def read_dataset_text(path: Path) -> str:
    """A dataset file's text: UTF-8, a leading byte-order mark dropped (files saved by Windows tools
    have one; it would begin the first id), anything else not UTF-8 a DatasetError with its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line_no}: not UTF-8 text ({exc.reason})") from exc


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; split on "\n" only."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    for line_no, line in enumerate(read_dataset_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from exc


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict) or "_id" not in row or "text" not in row:
            raise DatasetError(f"{path}:{line_no}: expected an object with '_id' and 'text'")
        rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: no records")
    return rows


def load_beir(folder: Path, split: str = "test") -> RetrievalDataset:
    corpus = {
        str(r["_id"]): {"title": str(r.get("title") or ""), "text": str(r["text"])}
        for r in _read_jsonl(folder / "corpus.jsonl")
    }
    queries = {str(r["_id"]): str(r["text"]) for r in _read_jsonl(folder / "queries.jsonl")}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DatasetError(f"{qrels_path}: file not found")
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in enumerate(read_dataset_text(qrels_path).split("\n"), 1):
        parts = line.strip().split("\t")
        if not line.strip() or (line_no == 1 and not parts[-1].lstrip("-").isdigit()):
            continue  # blank, or a header row
        if len(parts) < 3 or not parts[-1].lstrip("-").isdigit():
            raise DatasetError(f"{qrels_path}:{line_no}: expected query-id<TAB>corpus-id<TAB>score")
        query_id, doc_id, grade = parts[0], parts[-2], int(parts[-1])
        if doc_id not in corpus:
            raise DatasetError(f"{qrels_path}:{line_no}: document {doc_id!r} is not in corpus.jsonl")
        if query_id not in queries:
            raise DatasetError(f"{qrels_path}:{line_no}: query {query_id!r} is not in queries.jsonl")
        if grade > 0:
            qrels.setdefault(query_id, {})[doc_id] = grade
    if not qrels:
        raise DatasetError(f"{qrels_path}: no positive judgements")
    return RetrievalDataset(corpus, queries, qrels, folder.name)


def _smart_records(path: Path) -> list[dict[str, str]]:
    """Parse SMART tagged text (.I id / .T / .A / .B / .W) into {"I", "T", "W", ...} records."""
    records: list[dict[str, str]] = []
    tag = ""
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        if line.startswith(".I "):
            records.append({"I": line[3:].strip()})
            tag = ""
        elif len(line) == 2 and line.startswith(".") and records:
            tag = line[1]
            records[-1][tag] = ""
        elif tag and records:
            records[-1][tag] = (records[-1][tag] + " " + line.strip()).strip()
    return records


def convert_cranfield(source: Path, out: Path) -> Path:
    """Cranfield -> BEIR layout in `out`. Queries are renumbered 1..225 in file order, because
    cranqrel numbers them sequentially, not by their .I tags (see its SOURCE.txt). Grade mapping:
    cranqrel 1 (complete answer) .. 4 (minimum interest) -> 4..1; -1 (unassessed) -> 1."""
    docs = _smart_records(source / "cran.all.1400")
    queries = _smart_records(source / "cran.qry")
    if len(docs) != 1400 or len(queries) != 225:
        raise DatasetError(f"{source}: expected 1400 documents and 225 queries, got {len(docs)} and {len(queries)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc in docs:
            title = doc.get("T", "").rstrip(" .")
            text = doc.get("W", "")
            # Cranfield abstracts usually repeat the title as their first sentence.
            if title and text.startswith(title):
                text = text[len(title) :].lstrip(" .")
            handle.write(json.dumps({"_id": doc["I"], "title": title, "text": text}) + "\n")
    with (out / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for number, query in enumerate(queries, 1):
            handle.write(json.dumps({"_id": str(number), "text": query.get("W", "")}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    for row in (source / "cranqrel").read_text().split("\n"):
        parts = row.split()
        if len(parts) >= 3:
            code = int(parts[2])
            grade = 5 - code if 1 <= code <= 4 else 1
            lines.append(f"{int(parts[0])}\t{int(parts[1])}\t{grade}")
    (out / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return out
