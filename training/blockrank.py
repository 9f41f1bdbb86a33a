"""Train BlockRank (`app.inference.blockrank`, either backbone) on a BEIR train split.

Each step is one prompt: a training query, one positive (drawn by grade) and `list_size - 1` hard
negatives from the first-stage retriever, shuffled; the loss is the auxiliary multi-positive InfoNCE
on BlockRank's attention-derived relevance at layer l* (τ = 0.05). Without the answer loss only
layers up to l* get gradients: the forward pass stops there. The causal LM can add the official
recipe's next-token loss on the answer (the positive's ID) with weight λ on the auxiliary term
(loss = answer + λ · InfoNCE); every layer then runs. An encoder has no answer to decode.

`run_blockrank` is the whole run behind `python -m training train-blockrank`: first-stage
candidates from the bi-encoder, zero-shot evaluation, training, evaluation, export.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from app.inference.blockrank import BlockRankModel
from training.config import BlockRankConfig
from training.data.beir import RetrievalDataset
from training.losses.blockrank_infonce import blockrank_loss
from training.losses.listwise_distillation import ListwiseDistillationLoss
from training.models.blockrank import answer_ids, dropout_off, forward_with_answer, trainable_parameters
from training.rerank_lists import (
    QueryMixture,
    TrainingQuery,
    attach_teacher_scores,
    draw_list,
    labelled_queries,
    title_queries,
)
from training.run import RunFolder, seed_everything, step_history

if TYPE_CHECKING:
    from training.eval.first_stage import CorpusIndex


def rerank_with_blockrank(
    model: BlockRankModel,
    tokenizer,
    dataset: RetrievalDataset,
    first_stage: dict[str, list[str]],  # type: ignore[no-untyped-def]
) -> dict[str, dict[str, float]]:
    model.eval()
    run = {}
    with torch.no_grad():
        for query_id, candidates in first_stage.items():
            inputs = model.encode_prompt(
                tokenizer, dataset.queries[query_id], [dataset.doc_text(d) for d in candidates]
            )
            scores = model.forward_blocks(inputs).numpy()
            run[query_id] = {d: float(s) for d, s in zip(candidates, scores, strict=True)}
    return run


def train_blockrank(
    model: BlockRankModel,
    tokenizer,  # type: ignore[no-untyped-def]
    queries: list[TrainingQuery] | QueryMixture,
    doc_text: dict[str, str],
    steps: int,
    list_size: int = 16,
    learning_rate: float = 3e-5,
    temperature: float = 0.05,
    seed: int = 0,
    log_path: Path | None = None,
    answer_loss: bool = False,
    aux_weight: float = 0.1,
    distill_weight: float = 1.0,
    distill_temperature: float = 0.02,
    pseudo_fraction: float = 0.5,
) -> list[dict[str, float]]:
    """Train on `queries`: judged ones with the label loss (+ distillation where they carry teacher
    scores), unjudged ones with distillation only. A list of queries draws the unjudged ones with
    probability `pseudo_fraction`; a `QueryMixture` draws by its own weights."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    dropout_off(model)  # one prompt per step: dropout noise would dominate the small batch
    model.train()
    parameters = list(model.parameters()) if answer_loss else trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    distill = ListwiseDistillationLoss(distill_temperature)
    if isinstance(queries, QueryMixture):
        mixture = queries
    else:
        mixture = QueryMixture.judged_and_pseudo(queries, pseudo_fraction, rng)
    with step_history(log_path) as history:
        for step in range(steps):
            source, query = mixture.next()
            chosen, target = draw_list(query, list_size, rng)
            inputs = model.encode_prompt(tokenizer, query.text, [doc_text[d] for d in chosen])
            if answer_loss and target is not None:
                scores, answer = forward_with_answer(model, inputs, answer_ids(tokenizer, target + 1))
                loss = answer + aux_weight * blockrank_loss(scores, [target], temperature)
            else:
                scores = model.forward_blocks(inputs)
                loss = blockrank_loss(scores, [target], temperature) if target is not None else scores.new_zeros(())
            if query.teacher is not None and distill_weight > 0:
                teacher = torch.tensor([query.teacher[d] for d in chosen], dtype=scores.dtype)  # (N,)
                student = torch.log(scores.clamp_min(1e-12)) / temperature  # (N,) the InfoNCE's logits
                loss = loss + distill_weight * distill(student, teacher)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.add(step=step + 1, loss=round(loss.item(), 5), pseudo=int(target is None), source=source)
    model.eval()
    return history.records


def run_blockrank(config: BlockRankConfig, show_progress: bool = True) -> dict:
    """Candidates, zero-shot eval, training, eval, run folder and (if asked) export; returns metrics."""
    from training.data.beir import load_beir
    from training.eval.first_stage import CorpusIndex, judged_queries
    from training.eval.metrics import ir_metrics, ranked_run
    from training.models.blockrank import load_blockrank
    from training.sources import load_sentence_transformer, resolve_source

    seed_everything(config.seed)
    dataset = load_beir(config.data.path)
    split = config.data.query_split
    assert split is not None  # the config validates it
    train_set, eval_set = dataset.split_queries(split.seed, split.train_fraction)
    source = resolve_source(config.base_model)  # fails early, before the bi-encoder runs
    bi_encoder = load_sentence_transformer(config.first_stage_model)
    corpus = CorpusIndex.build(bi_encoder, dataset)

    def candidates(split_set: RetrievalDataset, k: int) -> dict[str, list[str]]:
        ids = judged_queries(split_set)
        return corpus.top_k(ids, [split_set.queries[q] for q in ids], k)

    eval_candidates = candidates(eval_set, config.candidates)
    pool = max(config.candidates, 3 * config.list_size)
    queries = labelled_queries(train_set, candidates(train_set, pool))
    doc_text = {d: dataset.doc_text(d) for d in corpus.doc_ids}
    queries += _pseudo_queries(config, dataset, corpus, pool)
    if config.teachers:
        _attach_teachers(config, queries, doc_text, bi_encoder, corpus)
    model, tokenizer = load_blockrank(source, config.layer, config.doc_tokens, kind=config.backbone)
    metrics: dict = {
        "name": config.name,
        "backbone": config.backbone,
        "layer": model.layer,
        "first_stage": ir_metrics(ranked_run(eval_candidates), eval_set.qrels),
    }
    if config.eval_before:
        zero_shot = rerank_with_blockrank(model, tokenizer, eval_set, eval_candidates)
        metrics["zero_shot"] = ir_metrics(zero_shot, eval_set.qrels)
    run = RunFolder(config.runs_dir, config.name)
    run.write_config(config)
    started = time.perf_counter()
    train_blockrank(
        model,
        tokenizer,
        queries,
        doc_text,
        steps=config.steps,
        list_size=config.list_size,
        learning_rate=config.learning_rate,
        temperature=config.temperature,
        seed=config.seed,
        log_path=run.steps_path,
        answer_loss=config.answer_loss,
        aux_weight=config.aux_weight,
        distill_weight=config.distill_weight,
        distill_temperature=config.distill_temperature,
        pseudo_fraction=config.pseudo_fraction,
    )
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)
    metrics["steps"] = config.steps
    metrics["trained"] = ir_metrics(rerank_with_blockrank(model, tokenizer, eval_set, eval_candidates), eval_set.qrels)
    run.write_metrics(metrics)
    if config.export is not None:
        _export(config, model, tokenizer, eval_set, eval_candidates, metrics["trained"]["ndcg@10"], dataset.name)
    return metrics


def _pseudo_queries(
    config: BlockRankConfig, dataset: RetrievalDataset, corpus: CorpusIndex, pool: int
) -> list[TrainingQuery]:
    """Titles as queries (`pseudo_queries: titles`), each with the first stage's top `pool` documents."""
    if config.pseudo_queries != "titles":
        return []
    titles = title_queries(dataset)
    title_candidates = corpus.top_k(list(titles), list(titles.values()), pool)
    return [TrainingQuery(titles[q], title_candidates[q]) for q in titles]


def _attach_teachers(
    config: BlockRankConfig,
    queries: list[TrainingQuery],
    doc_text: dict[str, str],
    bi_encoder: Any,
    corpus: CorpusIndex,
) -> None:
    """The teachers' scores on every query's candidates; the first stage's own corpus vectors are
    reused when it is one of the teachers."""
    from training.sources import load_sentence_transformer

    teachers = [
        bi_encoder if source == config.first_stage_model else load_sentence_transformer(source)
        for source in config.teachers
    ]
    reused = {t: corpus.vectors_by_id() for t, teacher in enumerate(teachers) if teacher is bi_encoder}
    attach_teacher_scores(queries, doc_text, teachers, reused)


def _export(
    config: BlockRankConfig,
    model: Any,
    tokenizer: Any,
    eval_set: RetrievalDataset,
    eval_candidates: dict[str, list[str]],
    ndcg: float,
    dataset_name: str,
) -> None:
    """The trained model as a served folder; its parity is checked on one held-out query's top 8."""
    from training.export.blockrank import export_blockrank

    assert config.export is not None
    query_id, docs = next(iter(eval_candidates.items()))
    export_blockrank(
        model,
        tokenizer,
        config.export.models_dir / config.export.name,
        config.export.name,
        config.base_model,
        (eval_set.queries[query_id], [eval_set.doc_text(d) for d in docs[:8]]),
        eval_scores={f"{dataset_name}/rerank-ndcg@10": round(ndcg, 5)},
    )
