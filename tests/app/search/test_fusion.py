"""Rank fusion of dense and keyword lists, on hand-computed values."""

import pytest

from app.search.fusion import convex, reciprocal_rank


def test_reciprocal_rank_fusion_matches_the_formula() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    keyword = [(3, 12.0), (4, 7.0)]
    fused = reciprocal_rank(dense, keyword, dense_weight=0.5, k=60)
    scores = {f.key: f.score for f in fused}
    assert scores[1] == pytest.approx(1 / 61)
    assert scores[2] == pytest.approx(1 / 62)
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61)  # in both lists: first
    assert scores[4] == pytest.approx(1 / 62)
    assert [f.key for f in fused] == [3, 1, 2, 4]  # 2 and 4 tie: the dense-ranked one first
    by_key = {f.key: f for f in fused}
    assert (by_key[3].dense, by_key[3].keyword) == (0.1, 12.0) and by_key[4].dense is None


def test_dense_weight_shifts_rrf_towards_one_list() -> None:
    dense = [(1, 0.9), (2, 0.8)]
    keyword = [(2, 5.0), (1, 1.0)]
    assert reciprocal_rank(dense, keyword, dense_weight=0.9)[0].key == 1
    assert reciprocal_rank(dense, keyword, dense_weight=0.1)[0].key == 2
    only_dense = reciprocal_rank(dense, keyword, dense_weight=1.0)
    assert [f.key for f in only_dense] == [1, 2] and only_dense[0].score == pytest.approx(2 / 61)


def test_convex_fusion_scales_each_list_to_unit_range() -> None:
    dense = [(1, 0.9), (2, 0.5), (3, 0.1)]
    keyword = [(3, 20.0), (2, 10.0)]
    fused = {f.key: f.score for f in convex(dense, keyword, dense_weight=0.25)}
    assert fused[1] == pytest.approx(0.25 * 1.0)
    assert fused[2] == pytest.approx(0.25 * 0.5 + 0.75 * 0.0)
    assert fused[3] == pytest.approx(0.25 * 0.0 + 0.75 * 1.0)
    single = convex([(7, 0.3)], [], 0.5)  # one candidate: its scaled score is 1
    assert single[0].score == pytest.approx(0.5)


def test_empty_lists_fuse_to_nothing() -> None:
    assert reciprocal_rank([], []) == [] and convex([], []) == []
