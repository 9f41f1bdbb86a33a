"""Fixtures shared by the training tests: Cranfield in BEIR form and a small cut of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from training.data.beir import convert_cranfield, load_beir


@pytest.fixture(scope="session")
def cranfield(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_cranfield(SHARED_DATA / "cranfield", tmp_path_factory.mktemp("beir") / "cranfield")


@pytest.fixture(scope="session")
def small_beir(cranfield: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cranfield cut to 40 judged queries and the documents they judge (plus 100 others)."""
    dataset = load_beir(cranfield)
    queries = sorted(dataset.qrels, key=int)[:40]
    docs = {d for q in queries for d in dataset.qrels[q]} | set(list(dataset.corpus)[:100])
    out = tmp_path_factory.mktemp("small") / "cran-small"
    (out / "qrels").mkdir(parents=True)
    (out / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, **dataset.corpus[d]}) + "\n" for d in dataset.corpus if d in docs)
    )
    (out / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": dataset.queries[q]}) + "\n" for q in queries)
    )
    (out / "qrels" / "test.tsv").write_text(
        "".join(f"{q}\t{d}\t{g}\n" for q in queries for d, g in dataset.qrels[q].items())
    )
    return out
