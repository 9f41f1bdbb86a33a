"""A teacher's vectors by text: each text encoded once, shared by mining and distillation, read
back from disk by a later run without loading the teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import make_tiny_sentence_transformer
from training import teacher
from training.sources import load_sentence_transformer
from training.teacher import TeacherEncoder


class CountingModel:
    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.model, self.encoded = model, []

    def encode(self, texts: list[str], **kwargs):  # type: ignore[no-untyped-def]
        self.encoded += texts
        return self.model.encode(texts, **kwargs)


def test_each_text_is_encoded_once_and_read_back_by_a_later_run(tmp_path: Path) -> None:
    model = load_sentence_transformer(str(make_tiny_sentence_transformer(tmp_path / "teacher")))
    counting = CountingModel(model)
    encoder = TeacherEncoder(lambda: counting, "teacher-a", tmp_path / "cache")
    first = encoder.encode(["wing flutter", "boundary layer", "wing flutter"])
    again = encoder.encode(["boundary layer", "shock waves"])
    assert counting.encoded == ["wing flutter", "boundary layer", "shock waves"]  # once each, across calls
    expected = model.encode(["wing flutter", "boundary layer", "shock waves"], normalize_embeddings=True)
    assert np.allclose(first, expected[[0, 1, 0]], atol=2e-3) and np.allclose(again, expected[[1, 2]], atol=2e-3)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=2e-3)

    def must_not_load():  # type: ignore[no-untyped-def]
        raise AssertionError("every text is cached: the teacher must not load")

    later = TeacherEncoder(must_not_load, "teacher-a", tmp_path / "cache")
    assert np.array_equal(later.encode(["shock waves", "wing flutter"]), np.concatenate([again[1:], first[:1]]))
    other = TeacherEncoder(lambda: counting, "teacher-b", tmp_path / "cache")  # another teacher, its own vectors
    other.encode(["wing flutter"])
    assert counting.encoded[-1] == "wing flutter" and len(list((tmp_path / "cache").glob("teacher-*"))) == 2
    assert not list((tmp_path / "cache").rglob("partial-*"))


def test_shards_past_the_limit_are_merged_and_nothing_is_lost(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(teacher, "MAX_SHARDS", 2)
    model = CountingModel(load_sentence_transformer(str(make_tiny_sentence_transformer(tmp_path / "teacher"))))
    encoder = TeacherEncoder(lambda: model, "t", tmp_path / "cache")
    texts = [f"query {i} about wings" for i in range(7)]
    vectors = np.concatenate([encoder.encode([t]) for t in texts])  # one shard each, as mining writes them
    shards = list(encoder.folder.glob("shard-*.npz"))
    assert 1 <= len(shards) <= 2 and not list(encoder.folder.glob("partial-*"))

    def must_not_load():  # type: ignore[no-untyped-def]
        raise AssertionError("every text is cached: the teacher must not load")

    assert np.array_equal(TeacherEncoder(must_not_load, "t", tmp_path / "cache").encode(texts), vectors)
