"""Training runs end to end on a tiny model and real data; bad configs and data stop early."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import training.trainer as trainer_module
from app.main import create_app
from tests.conftest import STS_DEV, LocalClient, make_tiny_sentence_transformer, settings_for
from tests.training.conftest import MinedCorpus, tiny_train_config
from training.cli import app as training_cli
from training.config import ConfigError, load_config
from training.data.beir import DatasetError, load_beir
from training.gradcache import gradcache_backward
from training.losses import InfoNCELoss
from training.trainer import make_embed, train

_config = tiny_train_config


def test_gradcache_gives_the_full_batch_gradients(tiny_model: Path) -> None:
    from training.sources import load_sentence_transformer

    texts_q = [f"query number {i} about wings" for i in range(6)]
    texts_d = [f"document {i} on supersonic flow and boundary layers" for i in range(12)]
    loss = InfoNCELoss(0.1)
    grads = []
    for chunk in (None, 4):
        model = load_sentence_transformer(str(tiny_model))
        model.train()  # dropout on: the cached RNG states must reproduce the masks
        torch.manual_seed(1)
        embed = make_embed(model)
        if chunk is None:
            # Reference: one graph over the same chunks in the same order (same dropout masks).
            q = torch.cat([embed(texts_q[i : i + 4]) for i in range(0, len(texts_q), 4)])
            d = torch.cat([embed(texts_d[i : i + 4]) for i in range(0, len(texts_d), 4)])
            value = loss(q, d)
            value.backward()
        else:
            value = gradcache_backward(embed, [texts_q, texts_d], loss, chunk)
        grads.append((float(value), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6), (grads[0][1] - grads[1][1]).abs().max()


@pytest.mark.parametrize("loss", ["infonce", "dcl", "mw", "cwcl", "listwise", "wasserstein"])
def test_each_retrieval_loss_trains(tmp_path: Path, tiny_model: Path, small_beir: Path, loss: str) -> None:
    config = _config(tmp_path, tiny_model, small_beir, **{"loss.name": loss, "name": f"run-{loss}", "eval_sts": None})
    result = train(config, show_progress=False)
    steps = [json.loads(line) for line in (result.run_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(s["loss"] == s["loss"] for s in steps)  # no NaN
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["eval_queries"] == 20 and 0 <= metrics["after"]["ndcg@10"] <= 1
    assert 0 <= metrics["after"]["roc_auc"] <= 1
    assert (result.run_dir / "model" / "modules.json").is_file()
    assert (result.run_dir / "plots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # loss, lr, rate, before/after


def test_cosent_on_sts(tmp_path: Path, tiny_model: Path) -> None:
    config = _config(
        tmp_path, tiny_model, STS_DEV, **{"data.format": "sts", "data.query_split": None, "loss.name": "cosent"}
    )
    result = train(config, show_progress=False)
    assert result.metrics["steps"] == 3 and "sts_spearman" in result.metrics["after"]


def test_train_with_gradcache_and_matryoshka_exports_a_model_the_service_loads(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    config = _config(
        tmp_path,
        tiny_model,
        small_beir,
        **{
            "mini_batch_size": 4,
            "hard_negatives": 2,
            "loss.matryoshka_dims": [32, 16],
            "export": {"name": "tiny-ft", "models_dir": str(tmp_path / "models"), "parity_data": str(STS_DEV)},
        },
    )
    result = train(config, show_progress=False)
    assert result.export_dir == tmp_path / "models" / "tiny-ft"
    with LocalClient(create_app(settings_for(tmp_path / "models", default_model="tiny-ft"))) as client:
        model = client.get("/v1/models").json()["data"][0]
        assert model["id"] == "tiny-ft" and model["dim"] == 32
        assert model["eval_scores"]["cran-small/ndcg@10"] == pytest.approx(result.metrics["after"]["ndcg@10"], abs=1e-5)
        vectors = client.post("/v1/embeddings", json={"input": "wing flutter", "dimensions": 16}).json()
        assert len(vectors["data"][0]["embedding"]) == 16


def test_hard_negative_mining_skips_positives_and_likely_false_negatives(minilm_small_corpus: MinedCorpus) -> None:
    from training.config import MiningConfig
    from training.eval.first_stage import encode
    from training.mine import mine_negatives

    model, dataset, corpus = minilm_small_corpus
    config = MiningConfig(rank_window=(0, 60), per_query=5, margin=0.9)
    mined = mine_negatives(model, dataset, config, corpus=corpus)
    docs = dict(zip(corpus.doc_ids, corpus.doc_vectors, strict=True))
    for query_id, negatives in mined.items():
        positives = dataset.qrels[query_id]
        assert len(negatives) <= 5 and not set(negatives) & set(positives)
        q = encode(model, [dataset.queries[query_id]])[0]
        lowest = min(float(docs[d] @ q) for d in positives)
        assert all(float(docs[d] @ q) <= 0.9 * lowest + 1e-5 for d in negatives)
    assert sum(map(len, mined.values())) > 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bad_configs_stop_with_one_line_naming_file_and_problem(tmp_path: Path, small_beir: Path) -> None:
    base = {"name": "x", "data": {"format": "beir", "path": str(small_beir)}}
    cases = [
        ({**base, "learning_rat": 1e-5}, "learning_rat: Extra inputs are not permitted"),
        ({**base, "batch_size": "big"}, "batch_size: Input should be a valid integer"),
        ({**base, "loss": {"name": "triplet"}}, "loss.name: Input should be"),
        ({**base, "loss": {"name": "cosent"}}, "loss cosent needs data.format sts"),
        ({"data": base["data"]}, "name: Field required"),
    ]
    for raw, message in cases:
        path = _write(tmp_path / "c.yaml", yaml.safe_dump(raw))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML \(expected ',' or '\]'.*, line 1\)"):
        load_config(_write(tmp_path / "bad.yaml", "name: [unclosed"))
    (tmp_path / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))  # not a UnicodeDecodeError
    with pytest.raises(ConfigError, match=r"latin1.yaml: not valid YAML \(not UTF-8 text: 0xe9 at byte 9\)"):
        load_config(tmp_path / "latin1.yaml")
    (tmp_path / "bom.yaml").write_text(yaml.safe_dump({"data": base["data"]}), encoding="utf-8-sig")
    with pytest.raises(ConfigError, match=r"bom\.yaml: name: Field required"):  # the mark is not part of a key
        load_config(tmp_path / "bom.yaml")


def test_a_beir_folder_saved_with_byte_order_marks_loads_with_clean_ids(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    for name, text in [
        ("corpus.jsonl", '{"_id": "d1", "text": "lift"}\n'),
        ("queries.jsonl", '{"_id": "q1", "text": "wing"}\n'),
        ("qrels/test.tsv", "q1\td1\t1\n"),
    ]:
        (tmp_path / name).write_text(text, encoding="utf-8-sig")  # as Windows tools save them
    dataset = load_beir(tmp_path)
    assert list(dataset.corpus) == ["d1"] and list(dataset.queries) == ["q1"] and dataset.qrels == {"q1": {"d1": 1}}


def test_bad_data_and_models_stop_before_training(tmp_path: Path, tiny_model: Path, small_beir: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "qrels").mkdir(parents=True)
    _write(broken / "corpus.jsonl", '{"_id": "d1", "text": "a"}\n')
    _write(broken / "queries.jsonl", '{"_id": "q1", "text": "b"}\n')
    _write(broken / "qrels" / "test.tsv", "q1\td1\t1\nq1\tmissing-doc\t1\n")
    empty = tmp_path / "empty"
    (empty / "qrels").mkdir(parents=True)
    _write(empty / "corpus.jsonl", "\n")
    pairs_bad = _write(tmp_path / "pairs.jsonl", '{"query": "q", "positive": "p"}\n{"query": "q2"\n')
    latin1 = tmp_path / "latin1"
    (latin1 / "qrels").mkdir(parents=True)
    latin1_corpus = '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "caf\u00e9"}\n'
    (latin1 / "corpus.jsonl").write_bytes(latin1_corpus.encode("latin-1"))
    runner = CliRunner()
    cases = [
        ({"data": {"format": "beir", "path": str(latin1)}}, "corpus.jsonl:2: not UTF-8 text"),
        ({"data": {"format": "beir", "path": str(broken)}}, "test.tsv:2: document 'missing-doc' is not in corpus"),
        ({"data": {"format": "beir", "path": str(empty)}}, "corpus.jsonl: no records"),
        ({"data": {"format": "pairs", "path": str(pairs_bad)}}, "pairs.jsonl:2: invalid JSON"),
        ({"data": {"format": "beir", "path": str(tmp_path / "nope")}}, "not a BEIR folder"),
        ({"base_model": str(tmp_path / "no-model")}, "no such folder"),
        ({"base_model": str(small_beir)}, "cannot load as a sentence-transformers model"),
    ]
    for overrides, message in cases:
        raw = {
            "name": "bad",
            "base_model": str(tiny_model),
            "data": {"format": "beir", "path": str(small_beir)},
            "runs_dir": str(tmp_path / "runs"),
            **overrides,
        }
        config = _write(tmp_path / "run.yaml", yaml.safe_dump(raw))
        result = runner.invoke(training_cli, ["train", "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") <= 2, result.output
        assert not (tmp_path / "runs" / "bad" / "steps.jsonl").exists()
    with pytest.raises(DatasetError):
        load_beir(broken)


def test_ir_metrics_agree_with_sentence_transformers_evaluator(cranfield: Path) -> None:
    """nDCG@10 and MRR@10 of the base model on 40 Cranfield eval-half queries over their judged
    documents and 300 others, binary relevance (the sentence-transformers evaluator's view), from
    both implementations. Both encode through the same model cut to 64 tokens: the check is of the
    metrics, and abstracts at full length made it the suite's slowest test (39 s; 110 s for the
    whole corpus)."""
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    from training.data.beir import RetrievalDataset
    from training.eval.retrieval import evaluate_retrieval
    from training.sources import DEFAULT_BASE_MODEL, load_sentence_transformer

    half = load_beir(cranfield).split_queries(0)[1]
    queries = {q: half.queries[q] for q in sorted(half.queries)[:40]}
    qrels = {q: dict.fromkeys(half.qrels[q], 1) for q in queries}
    kept = {d for docs in qrels.values() for d in docs} | set(sorted(half.corpus)[:300])
    held_out = RetrievalDataset({d: half.corpus[d] for d in sorted(kept)}, queries, qrels)
    model = load_sentence_transformer(DEFAULT_BASE_MODEL)
    model.max_seq_length = 64
    ours = evaluate_retrieval(model, held_out)
    assert 0.2 < ours["ndcg@10"] < 0.95  # not a degenerate ranking that any two implementations agree on
    evaluator = InformationRetrievalEvaluator(
        queries=held_out.queries,
        corpus={d: held_out.doc_text(d) for d in held_out.corpus},
        relevant_docs={q: set(docs) for q, docs in held_out.qrels.items()},
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[10],
        map_at_k=[100],
        show_progress_bar=False,
    )
    theirs = evaluator(model)
    key = next(k for k in theirs if k.endswith("ndcg@10"))
    assert ours["ndcg@10"] == pytest.approx(theirs[key], abs=1e-3)
    assert ours["mrr@10"] == pytest.approx(theirs[key.replace("ndcg@10", "mrr@10")], abs=1e-3)


def test_cross_encoder_trains_exports_and_serves(tmp_path: Path, tiny_model: Path, small_beir: Path) -> None:
    from tests.conftest import make_tiny_cross_encoder
    from training.config import CrossEncoderConfig
    from training.cross_encoder import train_cross_encoder

    source = make_tiny_cross_encoder(tmp_path / "ce-base")
    config = CrossEncoderConfig.model_validate(
        {
            "name": "tiny-ce-run",
            "base_model": str(source),
            "first_stage_model": str(tiny_model),
            "data": {"format": "beir", "path": str(small_beir)},
            "max_steps": 3,
            "max_seq_length": 64,
            "rerank_candidates": 10,
            "runs_dir": str(tmp_path / "runs"),
            "export": {"name": "tiny-ce-ft", "models_dir": str(tmp_path / "models")},
        }
    )
    metrics = train_cross_encoder(config, show_progress=False)
    assert metrics["steps"] == 3 and 0 <= metrics["reranked"]["ndcg@10"] <= 1
    with LocalClient(create_app(settings_for(tmp_path / "models", default_model="tiny-ce-ft"))) as client:
        model = client.get("/v1/models").json()["data"][0]
        assert model["kind"] == "cross-encoder"
        assert model["eval_scores"]["cran-small/rerank-ndcg@10"] == pytest.approx(
            metrics["reranked"]["ndcg@10"], abs=1e-5
        )
        body = client.post("/v1/rerank", json={"query": "wing flutter", "documents": ["flutter of wings", "heat"]})
        assert body.status_code == 200 and len(body.json()["results"]) == 2


def test_list_groups_grade_every_batch_document_for_every_query(cranfield: Path) -> None:
    import random

    from training.trainer import _list_groups

    dataset = load_beir(cranfield)
    # two queries that share a judged document: for each, the other's copy is graded, not a negative
    shared = next(
        (q1, q2, d)
        for q1 in sorted(dataset.qrels, key=int)
        for q2 in sorted(dataset.qrels, key=int)
        if q1 < q2
        for d in set(dataset.qrels[q1]) & set(dataset.qrels[q2])
    )
    q1, q2, _ = shared
    negatives = {q: [d for d in list(dataset.corpus)[:50] if d not in dataset.qrels[q]] for q in (q1, q2)}
    (queries, documents), grades = _list_groups([(q1, ""), (q2, "")], dataset, negatives, 8, random.Random(0))
    assert len(queries) == 2 and len(documents) == 16 and grades.shape == (2, 16)
    doc_ids = [next(i for i, v in dataset.corpus.items() if dataset.doc_text(i) == text) for text in documents]
    for row, query_id in enumerate((q1, q2)):
        seen: set[str] = set()
        for col, doc_id in enumerate(doc_ids):
            expected = -1 if doc_id in seen else dataset.qrels[query_id].get(doc_id, 0)
            seen.add(doc_id)
            assert grades[row, col].item() == expected
        assert (grades[row] > 0).any()


def test_judged_elsewhere_marks_other_queries_judged_documents_but_never_the_positive(cranfield: Path) -> None:
    from training.trainer import judged_elsewhere

    dataset = load_beir(cranfield)
    q1, q2, shared = next(
        (q1, q2, d)
        for q1 in sorted(dataset.qrels, key=int)
        for q2 in sorted(dataset.qrels, key=int)
        if q1 < q2
        for d in sorted(set(dataset.qrels[q1]) & set(dataset.qrels[q2]))
    )
    other = next(d for d in sorted(dataset.qrels[q2]) if d not in dataset.qrels[q1])
    unjudged = next(d for d in sorted(dataset.corpus) if d not in dataset.qrels[q1] and d not in dataset.qrels[q2])
    # q1's positive is the shared document, q2's another; then one hard negative each
    mask = judged_elsewhere(dataset, [q1, q2], [shared, other, unjudged, shared])
    assert mask.tolist() == [
        [False, False, False, True],  # q1: its own positive is not masked, its copy as q2's negative is
        [True, False, False, True],  # q2: q1's positive and the hard negative are judged for q2 too
    ]


def test_mask_judged_reaches_the_loss_and_only_a_loss_that_reads_it(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.losses.dcl import DecoupledContrastiveLoss

    masks: list[torch.Tensor] = []
    real_forward = DecoupledContrastiveLoss.forward

    def recording(self, queries, documents, judged=None):  # type: ignore[no-untyped-def]
        masks.append(judged)
        return real_forward(self, queries, documents, judged)

    monkeypatch.setattr(DecoupledContrastiveLoss, "forward", recording)
    config = _config(tmp_path, tiny_model, small_beir, **{"loss.name": "dcl", "mask_judged": True, "eval_sts": None})
    run_dir = train(config, show_progress=False).run_dir
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 3 and all(math.isfinite(s["loss"]) for s in steps)
    # one (b, n) mask per step: 8 queries, their positives and one hard negative each
    assert len(masks) == 3 and all(m is not None and m.shape == (8, 16) for m in masks)
    assert not any(m.diagonal().any() for m in masks)  # a query's own positive is never masked
    raw = {
        "name": "x",
        "data": {"format": "beir", "path": str(small_beir)},
        "loss": {"name": "mw"},
        "mask_judged": True,
    }
    path = _write(tmp_path / "mw.yaml", yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="mask_judged applies to loss infonce or dcl, not mw"):
        load_config(path)


def test_grade_weighted_gives_the_loss_each_positive_s_grade(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.losses.dcl import DecoupledContrastiveLoss

    weights: list[torch.Tensor] = []
    real_forward = DecoupledContrastiveLoss.forward

    def recording(self, queries, documents, judged=None, row_weights=None):  # type: ignore[no-untyped-def]
        weights.append(row_weights)
        return real_forward(self, queries, documents, judged, row_weights)

    monkeypatch.setattr(DecoupledContrastiveLoss, "forward", recording)
    config = _config(tmp_path, tiny_model, small_beir, **{"loss.name": "dcl", "grade_weighted": True, "eval_sts": None})
    run_dir = train(config, show_progress=False).run_dir
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 3 and all(math.isfinite(s["loss"]) for s in steps)
    dataset = load_beir(small_beir)
    grades = {g for judged in dataset.qrels.values() for g in judged.values()}
    assert len(weights) == 3 and all(w is not None and w.shape == (8,) for w in weights)
    assert {float(g) for w in weights for g in w.tolist()} <= {float(g) for g in grades}
    for raw, match in (
        ({"loss": {"name": "mw"}}, "grade_weighted applies to loss infonce or dcl on data.format beir"),
        ({"loss": {"name": "dcl"}, "distillation": {"weight": 1.0}}, "grade_weighted does not combine"),
    ):
        body = {"name": "x", "data": {"format": "beir", "path": str(small_beir)}, "grade_weighted": True, **raw}
        with pytest.raises(ConfigError, match=match):
            load_config(_write(tmp_path / "bad.yaml", yaml.safe_dump(body)))


def test_blockrank_trains_exports_and_serves(tmp_path: Path, tiny_model: Path, small_beir: Path) -> None:
    raw = {
        "name": "br-tiny",
        "backbone": "encoder",
        "base_model": str(tiny_model.parent / "hf"),
        "first_stage_model": str(tiny_model),
        "data": {"format": "beir", "path": str(small_beir)},
        "doc_tokens": 16,
        "candidates": 5,
        "list_size": 4,
        "steps": 8,
        # distillation from the first stage (reused, not reloaded) on judged and title pseudo-queries
        "teachers": [str(tiny_model)],
        "pseudo_queries": "titles",
        "runs_dir": str(tmp_path / "runs"),
        "export": {"name": "br-tiny", "models_dir": str(tmp_path / "models")},
    }
    config_path = tmp_path / "br.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(training_cli, ["train-blockrank", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "br-tiny" / "metrics.json").read_text())
    assert {"first_stage", "zero_shot", "trained"} <= set(metrics) and metrics["layer"] == 0
    steps = [json.loads(line) for line in (tmp_path / "runs" / "br-tiny" / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 8 and {s["pseudo"] for s in steps} == {0, 1}  # judged and pseudo-queries both drawn
    assert all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    manifest = json.loads((tmp_path / "models" / "br-tiny" / "manifest.json").read_text())
    assert manifest["kind"] == "blockrank" and "rerank-ndcg@10" in next(iter(manifest["eval_scores"]))
    settings = settings_for(tmp_path / "models", data_dir=tmp_path / "data", default_model="br-tiny")
    with LocalClient(create_app(settings)) as client:
        body = {"model": "br-tiny", "query": "lift", "documents": ["wings and lift", "a cake"]}
        response = client.post("/v1/rerank", json=body)
    assert response.status_code == 200 and len(response.json()["results"]) == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"answer_loss": True}, "answer_loss needs backbone causal-lm"),
        ({"pseudo_queries": "titles"}, "pseudo_queries need teachers"),
        ({"pseudo_queries": "abstracts", "teachers": ["x"]}, "pseudo_queries"),
    ],
)
def test_blockrank_bad_config_stops_before_training(tmp_path: Path, small_beir: Path, bad: dict, message: str) -> None:
    config_path = tmp_path / "br.yaml"
    raw = {"name": "x", "data": {"format": "beir", "path": str(small_beir)}, **bad}
    config_path.write_text(yaml.safe_dump({**raw, "runs_dir": str(tmp_path / "runs")}))
    result = CliRunner().invoke(training_cli, ["train-blockrank", "--config", str(config_path)])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "runs").exists()


def test_cross_encoder_groups_mix_mined_and_corpus_negatives(cranfield: Path) -> None:
    import random

    from training.cross_encoder import _groups

    dataset = load_beir(cranfield)
    train_set, _ = dataset.split_queries(0)
    corpus = list(train_set.corpus)
    mined = {q: [d for d in corpus[:40] if d not in train_set.qrels[q]][:10] for q in train_set.qrels}
    groups = _groups(train_set, mined, 5, random.Random(0))
    assert len(groups) == sum(len(docs) for docs in train_set.qrels.values())
    from_pool = from_corpus = 0
    for query_id, docs, targets in groups:
        assert len(docs) == 5 and targets[0] > 0 and targets[1:] == [0.0] * 4
        assert docs[0] in train_set.qrels[query_id] and not set(docs[1:]) & set(train_set.qrels[query_id])
        from_pool += sum(d in mined[query_id] for d in docs[1:])
        from_corpus += sum(d not in mined[query_id] for d in docs[1:])
    assert from_pool == from_corpus == 2 * len(groups)  # half mined, half from the whole corpus


def test_mining_rescored_by_a_cross_encoder_drops_what_it_scores_high(
    tmp_path: Path, minilm_small_corpus: MinedCorpus
) -> None:
    from tests.conftest import make_tiny_cross_encoder
    from training.config import MiningConfig
    from training.mine import mine_negatives
    from training.models.cross_encoder import load_classifier, mining_rescorer, score_pairs

    model, dataset, corpus = minilm_small_corpus
    ce = str(make_tiny_cross_encoder(tmp_path / "ce"))
    window = {"rank_window": (0, 30), "per_query": 30, "margin": 1.0}
    plain = mine_negatives(model, dataset, MiningConfig(**window), corpus=corpus)
    config = MiningConfig(**window, rescore_model=ce, rescore_margin=1.0)
    rescored = mine_negatives(model, dataset, config, rescorer=mining_rescorer(config), corpus=corpus)
    ce_model, tokenizer = load_classifier(ce, 128)
    dropped = 0
    for query_id, negatives in rescored.items():
        assert set(negatives) <= set(plain[query_id])  # the cross-encoder only removes
        positives = list(dataset.qrels[query_id])
        pairs = [(dataset.queries[query_id], dataset.doc_text(d)) for d in positives + plain[query_id]]
        relevance = 1 / (1 + np.exp(-score_pairs(ce_model, tokenizer, pairs)))
        lowest = relevance[: len(positives)].min()
        scores = dict(zip(plain[query_id], relevance[len(positives) :], strict=True))
        # (a tiny random head scores everything alike: compare with a tolerance for padding noise)
        assert all(scores[d] <= lowest + 1e-4 for d in negatives)
        assert all(scores[d] >= lowest - 1e-4 for d in set(plain[query_id]) - set(negatives))
        dropped += len(plain[query_id]) - len(negatives)
    assert dropped > 0  # a random cross-encoder scores some candidates above the weakest positive
    config = MiningConfig(**window, rescore_model=ce, rescore_margin=0.0)
    none_left = mine_negatives(model, dataset, config, rescorer=mining_rescorer(config), corpus=corpus)
    assert sum(map(len, none_left.values())) == 0


def test_teacher_filtered_mining_drops_what_the_teacher_scores_near_the_positives(
    minilm_small_corpus: MinedCorpus,
) -> None:
    from training.config import MiningConfig
    from training.mine import mine_negatives

    model, dataset, corpus = minilm_small_corpus
    window = {"rank_window": (0, 30), "per_query": 30, "margin": 1.0}
    plain = mine_negatives(model, dataset, MiningConfig(**window), corpus=corpus)
    flagged = {q: set(docs[::3]) for q, docs in plain.items()}  # the teacher calls every third a positive

    def teacher(pairs: list[tuple[str, str]]) -> np.ndarray:
        by_text = {(dataset.queries[q], dataset.doc_text(d)): q for q in plain for d in flagged[q]}
        positives = {(dataset.queries[q], dataset.doc_text(d)) for q in plain for d in dataset.qrels[q]}
        return np.array([0.9 if p in by_text else 0.8 if p in positives else 0.3 for p in pairs])

    config = MiningConfig(**window, teacher_margin=1.0)
    filtered = mine_negatives(model, dataset, config, teacher=teacher, corpus=corpus)
    for query_id, negatives in filtered.items():
        assert set(negatives) == set(plain[query_id]) - flagged[query_id]
    assert sum(map(len, flagged.values())) > 0


def test_a_teacher_that_cannot_be_loaded_stops_before_training(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    config = _config(tmp_path, tiny_model, small_beir, **{"mining.teacher_model": str(tmp_path / "no-teacher")})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = CliRunner().invoke(training_cli, ["train", "--config", str(path)])
    assert result.exit_code == 2 and "mining.teacher_model" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "tiny-run" / "steps.jsonl").exists()
    teacher = _config(tmp_path, tiny_model, small_beir, **{"mining.teacher_model": str(tiny_model), "eval_sts": None})
    assert train(teacher, show_progress=False).metrics["steps"] == 3  # a loadable teacher filters and trains


def test_distillation_from_a_teacher_trains_with_cached_vectors(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = make_tiny_sentence_transformer(tmp_path / "teacher")  # another random model: a different view
    cache = tmp_path / "cache"
    distil = {"teacher": str(teacher), "weight": 0.5, "cache_dir": str(cache)}
    config = _config(tmp_path, tiny_model, small_beir, distillation=distil, eval_sts=None)
    first = train(config, show_progress=False)
    assert first.metrics["steps"] == 3 and all(s["loss"] == s["loss"] for s in first.steps)
    cached = sorted(cache.glob("teacher-*/shard-*.npz"))
    assert len(cached) == 2  # the training queries' and the documents' vectors
    plain = train(_config(tmp_path, tiny_model, small_beir, name="plain", eval_sts=None), show_progress=False)
    assert plain.steps[0]["loss"] != first.steps[0]["loss"]  # the KL term is in the loss
    loads: list[str] = []
    load_teacher = trainer_module._load_teacher
    monkeypatch.setattr(trainer_module, "_load_teacher", lambda *a: loads.append(a[1]) or load_teacher(*a))
    again = train(config.model_copy(update={"name": "again"}), show_progress=False)
    assert loads == []  # every text was cached: the teacher model is never loaded
    assert sorted(cache.glob("teacher-*/shard-*.npz")) == cached  # nothing encoded again
    assert again.steps[0]["loss"] == pytest.approx(first.steps[0]["loss"])
    with pytest.raises(ConfigError, match=r"distillation\.teacher"):
        bad = {**distil, "teacher": str(tmp_path / "missing")}
        train(_config(tmp_path, tiny_model, small_beir, name="bad", distillation=bad), show_progress=False)
    assert not (tmp_path / "runs" / "bad" / "steps.jsonl").exists()
    with pytest.raises(ValueError, match="distillation wraps a pair loss"):
        _config(tmp_path, tiny_model, small_beir, distillation=distil, **{"loss.name": "cwcl"})


def test_a_teacher_that_filters_mining_and_distils_encodes_each_text_once(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    cache = tmp_path / "cache"
    both = {"mining.teacher_model": str(tiny_model), "mining.teacher_margin": 1.0, "eval_sts": None}
    distil = {"teacher": str(tiny_model), "cache_dir": str(cache)}
    assert train(_config(tmp_path, tiny_model, small_beir, distillation=distil, **both), show_progress=False).steps
    (folder,) = cache.glob("teacher-*")  # one teacher, shared by mining and distillation
    keys = [k for shard in folder.glob("shard-*.npz") for k in np.load(shard)["keys"].tolist()]
    assert len(keys) > 0 and len(keys) == len(set(keys))


def test_mine_uses_the_mining_teacher_only(tmp_path: Path, tiny_model: Path, small_beir: Path) -> None:
    """`training mine` loads `mining.teacher_model`; a distillation teacher has no part in mining."""
    from training.sources import DEFAULT_BASE_MODEL

    distil = {"teacher": str(tmp_path / "not-a-model"), "cache_dir": str(tmp_path / "cache")}
    mining = {"mining.teacher_model": str(tiny_model), "mining.teacher_margin": 1.0, "mining.margin": 1.0}
    window = {"mining.rank_window": [0, 30], "base_model": DEFAULT_BASE_MODEL}  # a random tiny model leaves no window
    config = _config(tmp_path, tiny_model, small_beir, distillation=distil, **mining, **window)
    path, out = tmp_path / "c.yaml", tmp_path / "negatives.jsonl"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = CliRunner().invoke(training_cli, ["mine", "--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and list((tmp_path / "cache").glob("teacher-*"))  # the mining teacher's vectors


def test_blockrank_distillation_moves_scores_towards_the_teacher(tiny_model: Path, small_beir: Path) -> None:
    from training.blockrank import train_blockrank
    from training.eval.first_stage import encode
    from training.models.blockrank import load_blockrank
    from training.rerank_lists import TrainingQuery, attach_teacher_scores
    from training.sources import load_sentence_transformer

    dataset = load_beir(small_beir)
    docs = list(dataset.corpus)[:4]
    doc_text = {d: dataset.doc_text(d) for d in docs}
    query = TrainingQuery("pressure distribution on a wing", docs)  # unjudged: distillation only
    teacher = load_sentence_transformer(str(tiny_model))
    attach_teacher_scores([query], doc_text, [teacher, teacher])  # the mean of one teacher twice is its cosine
    expected = encode(teacher, [doc_text[d] for d in docs]) @ encode(teacher, [query.text])[0]
    assert query.teacher is not None
    assert np.allclose([query.teacher[d] for d in docs], expected, atol=1e-5)
    # a teacher that prefers the document the untrained student ranks last
    model, tokenizer = load_blockrank(str(tiny_model.parent / "hf"), doc_tokens=16)
    with torch.no_grad():
        before = model.forward_blocks(model.encode_prompt(tokenizer, query.text, [doc_text[d] for d in docs]))
    favourite = docs[int(before.argmin())]
    query.teacher = {d: float(d == favourite) for d in docs}
    history = train_blockrank(model, tokenizer, [query], doc_text, steps=20, list_size=4, learning_rate=1e-3)
    with torch.no_grad():
        after = model.forward_blocks(model.encode_prompt(tokenizer, query.text, [doc_text[d] for d in docs]))
    assert all(h["pseudo"] == 1 for h in history) and history[-1]["loss"] < history[0]["loss"]
    assert docs[int(after.argmax())] == favourite and after[docs.index(favourite)] > before[docs.index(favourite)]
