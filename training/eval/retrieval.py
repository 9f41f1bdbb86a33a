"""Evaluate an encoder: retrieval metrics (pytrec_eval), ROC-AUC, STS Spearman."""

from __future__ import annotations

from pathlib import Path

from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from training.data.beir import RetrievalDataset
from training.data.sts import read_sts
from training.eval.first_stage import CorpusIndex, corpus_of, encode, judged_queries
from training.eval.metrics import Qrels, Run, ir_metrics, per_query_metrics


def roc_auc(run: Run, qrels: Qrels) -> float:
    """AUC of judged positives vs retrieved non-relevant documents, pooled over queries: a
    threshold-free view of how well one score separates relevant from not (the MW paper's
    calibration diagnostic). Positives not retrieved count with the query's lowest retrieved score."""
    labels, scores = [], []
    for query_id, docs in run.items():
        relevant = qrels.get(query_id, {})
        if not relevant:
            continue
        floor = min(docs.values())
        for doc_id in relevant:
            labels.append(1)
            scores.append(docs.get(doc_id, floor))
        for doc_id, score in docs.items():
            if doc_id not in relevant:
                labels.append(0)
                scores.append(score)
    return float(roc_auc_score(labels, scores))


def _corpus_run(model, dataset: RetrievalDataset, k: int, corpus: CorpusIndex | None) -> Run:  # type: ignore[no-untyped-def]
    """The model's exact top-k over the whole corpus for each judged query of `dataset`; `corpus`:
    that corpus already encoded by the model in its present weights (encoded here if None)."""
    query_ids = judged_queries(dataset)
    corpus = corpus_of(model, dataset, corpus)
    return corpus.run(query_ids, [dataset.queries[q] for q in query_ids], k)


def evaluate_retrieval(  # type: ignore[no-untyped-def]
    model, dataset: RetrievalDataset, k: int = 100, corpus: CorpusIndex | None = None
) -> dict[str, float]:
    run = _corpus_run(model, dataset, k, corpus)
    return {**ir_metrics(run, dataset.qrels), "roc_auc": roc_auc(run, dataset.qrels)}


def retrieval_per_query(  # type: ignore[no-untyped-def]
    model, dataset: RetrievalDataset, k: int = 100, corpus: CorpusIndex | None = None
) -> dict[str, dict[str, float]]:
    """query id -> retrieval metrics over the whole corpus, for each judged query of `dataset`."""
    return per_query_metrics(_corpus_run(model, dataset, k, corpus), dataset.qrels)


def evaluate_sts(model, path: Path) -> float:  # type: ignore[no-untyped-def]
    """Spearman x 100 between cosine similarity and the gold scores."""
    pairs = read_sts(path)
    left = encode(model, [p.sentence1 for p in pairs])
    right = encode(model, [p.sentence2 for p in pairs])
    cosines = (left * right).sum(1)
    return float(spearmanr(cosines, [p.score for p in pairs]).statistic * 100)
