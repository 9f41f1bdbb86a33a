"""Each loss against values computed by hand on 2-d unit vectors (τ = 1 unless stated)."""

import math

import pytest
import torch

from training.losses import (
    CoSENTLoss,
    CWCLLoss,
    DecoupledContrastiveLoss,
    InfoNCELoss,
    ListwiseDistillationLoss,
    ListwiseSoftmaxLoss,
    MannWhitneyLoss,
    MarginMSELoss,
    MatryoshkaLoss,
    SigLIPLoss,
    WassersteinListwiseLoss,
)
from training.losses.distillation import TeacherDistillationLoss

E = math.e
EYE = torch.eye(2)
# Positives for q0, q1, then one hard negative each (q0's is [0, 1], q1's is [1, 0]).
WITH_NEGATIVES = torch.tensor([[1.0, 0], [0, 1], [0, 1], [1, 0]])


def test_infonce() -> None:
    # row 0 logits [1, 0]: -log(e / (e + 1))
    assert InfoNCELoss(1.0)(EYE, EYE).item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)
    # row 0 logits [1, 0, 0, 1]: -log(e / (2e + 2))
    assert InfoNCELoss(1.0)(EYE, WITH_NEGATIVES).item() == pytest.approx(math.log(2 + 2 / E), abs=1e-6)
    # symmetric: the document -> query direction is the same here
    assert InfoNCELoss(1.0, symmetric=True)(EYE, EYE).item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)
    # τ = 0.5 doubles the logits
    assert InfoNCELoss(0.5)(EYE, EYE).item() == pytest.approx(math.log(1 + E**-2), abs=1e-6)


def test_learnable_temperature_gets_a_gradient() -> None:
    torch.manual_seed(0)
    loss = InfoNCELoss(0.05, learnable_temperature=True)
    loss(torch.randn(4, 8), torch.randn(8, 8)).backward()
    assert loss.temperature.log_value.grad is not None and loss.temperature.log_value.grad.abs() > 0


def test_siglip() -> None:
    # scale 1, bias 0, EYE: diagonal logits 1 (z = +1), off-diagonal 0 (z = -1), per query:
    # -log σ(1) - log σ(-0) = log(1 + 1/e) + log 2; the sum over 2 queries / 2
    fixed = SigLIPLoss(scale=1.0, bias=0.0, learnable=False)
    assert fixed(EYE, EYE).item() == pytest.approx(math.log(1 + 1 / E) + math.log(2), abs=1e-6)
    # scale 2, bias -1: positives 2*1 - 1 = 1, negatives 2*0 - 1 = -1 -> -log σ(1) - log σ(1)
    shifted = SigLIPLoss(scale=2.0, bias=-1.0, learnable=False)
    assert shifted(EYE, EYE).item() == pytest.approx(2 * math.log(1 + 1 / E), abs=1e-6)
    # hard-negative rows beyond the batch are ignored: only the b x b pairs count
    assert fixed(EYE, WITH_NEGATIVES).item() == pytest.approx(fixed(EYE, EYE).item(), abs=1e-6)
    learnable = SigLIPLoss()
    learnable(torch.randn(4, 8), torch.randn(4, 8)).backward()
    assert learnable.log_scale.grad is not None and learnable.bias.grad is not None


def test_decoupled_contrastive() -> None:
    # the positive leaves the denominator: -1 + log(e^0)
    assert DecoupledContrastiveLoss(1.0)(EYE, EYE).item() == pytest.approx(-1.0, abs=1e-6)
    # -1 + log(e^0 + e^0 + e^1)
    assert DecoupledContrastiveLoss(1.0)(EYE, WITH_NEGATIVES).item() == pytest.approx(-1 + math.log(2 + E), abs=1e-6)
    # symmetric: positive i -> query i over the b queries (hard negatives are not queries): -1 + log(e^0)
    symmetric = DecoupledContrastiveLoss(1.0, symmetric=True)(EYE, WITH_NEGATIVES).item()
    assert symmetric == pytest.approx((-1 + math.log(2 + E) - 1) / 2, abs=1e-6)
    # q0 = [1, 0], q1 = [0.6, 0.8] against positives d0 = [1, 0], d1 = [0, 1]: s = [[1, 0], [0.6, 0.8]]
    # forward rows: -1 + 0, -0.8 + 0.6; backward (d -> q) rows: -1 + 0.6, -0.8 + 0
    queries = torch.tensor([[1.0, 0], [0.6, 0.8]])
    both = DecoupledContrastiveLoss(1.0, symmetric=True)(queries, EYE, row_weights=torch.tensor([1.0, 3.0])).item()
    assert both == pytest.approx(((-1 + 3 * -0.2) / 4 + (-0.4 + 3 * -0.8) / 4) / 2, abs=1e-6)


def test_a_setting_the_loss_does_not_read_is_refused() -> None:
    from training.config import LossConfig
    from training.losses.registry import build_embedding_loss

    assert build_embedding_loss(LossConfig(name="dcl", symmetric=True)).symmetric
    with pytest.raises(ValueError, match="loss mw does not read symmetric"):
        LossConfig(name="mw", symmetric=True)
    with pytest.raises(ValueError, match="loss siglip does not read temperature, weight_temperature"):
        LossConfig(name="siglip", temperature=0.07, weight_temperature=0.2)
    with pytest.raises(ValueError, match="loss dcl does not read list_size"):
        LossConfig(name="dcl", list_size=4)
    # a field at its default says nothing either way; a loss's own fields are taken
    assert LossConfig(name="cosent", symmetric=False, temperature=0.05).name == "cosent"
    assert LossConfig(name="wasserstein", list_size=4, target_temperature=2.0).list_size == 4


def test_judged_documents_leave_the_row_of_the_query_they_are_judged_for() -> None:
    # WITH_NEGATIVES' column 2 ([0, 1], q0's hard negative) judged relevant to q0: out of row 0 only
    judged = torch.zeros(2, 4, dtype=torch.bool)
    judged[0, 2] = True
    # DCL row 0 without column 2: -1 + log(e^0 + e^1); row 1 as before: -1 + log(2 + e)
    dcl = DecoupledContrastiveLoss(1.0)(EYE, WITH_NEGATIVES, judged=judged).item()
    assert dcl == pytest.approx((-1 + math.log(1 + E) - 1 + math.log(2 + E)) / 2, abs=1e-6)
    # InfoNCE row 0 logits [1, 0, 1]: -log(e / (2e + 1)); row 1 as before: -log(e / (2e + 2))
    infonce = InfoNCELoss(1.0)(EYE, WITH_NEGATIVES, judged=judged).item()
    assert infonce == pytest.approx((math.log(2 + 1 / E) + math.log(2 + 2 / E)) / 2, abs=1e-6)
    # no judged cell: the plain loss; distillation passes the mask to its inner loss
    assert DecoupledContrastiveLoss(1.0)(EYE, WITH_NEGATIVES, judged=torch.zeros_like(judged)).item() == pytest.approx(
        -1 + math.log(2 + E), abs=1e-6
    )
    teacher = EYE @ WITH_NEGATIVES.T
    wrapped = TeacherDistillationLoss(DecoupledContrastiveLoss(1.0), weight=0.0)
    assert wrapped(EYE, WITH_NEGATIVES, teacher, judged=judged).item() == pytest.approx(dcl, abs=1e-6)


def test_row_weights_weigh_each_query_s_term_in_the_mean() -> None:
    # against WITH_NEGATIVES, q0 = [1, 0] scores [1, 0, 0, 1] and q1 = [0.6, 0.8] scores
    # [0.6, 0.8, 0.8, 0.6]; q1's positive is column 1 (0.8). DCL per row: -s_ii + log sum_{j != i} exp(s_ij)
    queries = torch.tensor([[1.0, 0], [0.6, 0.8]])
    row0 = -1 + math.log(2 + E)
    row1 = -0.8 + math.log(2 * math.exp(0.6) + math.exp(0.8))
    weights = torch.tensor([1.0, 3.0])
    dcl = DecoupledContrastiveLoss(1.0)
    assert dcl(queries, WITH_NEGATIVES).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert dcl(queries, WITH_NEGATIVES, row_weights=weights).item() == pytest.approx((row0 + 3 * row1) / 4, abs=1e-6)
    # equal weights are the plain mean, whatever their size
    assert dcl(queries, WITH_NEGATIVES, row_weights=torch.tensor([2.0, 2.0])).item() == pytest.approx(
        (row0 + row1) / 2, abs=1e-6
    )
    # InfoNCE: row i's cross-entropy -s_ii + log sum_j exp(s_ij)
    ce0 = -1 + math.log(E + 1 + 1 + E)
    ce1 = -0.8 + math.log(math.exp(0.6) + math.exp(0.8) + math.exp(0.8) + math.exp(0.6))
    infonce = InfoNCELoss(1.0)(queries, WITH_NEGATIVES, row_weights=weights).item()
    assert infonce == pytest.approx((ce0 + 3 * ce1) / 4, abs=1e-6)
    # symmetric: document i -> query i over the b positives, the same weights
    back0 = -1 + math.log(E + math.exp(0.6))  # document [1, 0] against queries: 1, 0.6
    back1 = -0.8 + math.log(1 + math.exp(0.8))  # document [0, 1]: 0, 0.8
    symmetric = InfoNCELoss(1.0, symmetric=True)(queries, WITH_NEGATIVES, row_weights=weights).item()
    assert symmetric == pytest.approx(((ce0 + 3 * ce1) / 4 + (back0 + 3 * back1) / 4) / 2, abs=1e-6)


def test_mann_whitney() -> None:
    # every positive (score 1) vs every negative (score 0): -log σ(1)
    assert MannWhitneyLoss(1.0)(EYE, EYE).item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)
    # cross-query pairs count: q0's positive at 0.6 vs q1's negative at 0.8 is a violation
    queries = torch.tensor([[1.0, 0], [0, 1]])
    docs = torch.tensor([[0.6, 0.8], [0.6, 0.8]])  # s00 = .6, s01 = .6, s10 = .8, s11 = .8
    expected = sum(math.log(1 + math.exp(-(p - n))) for p in (0.6, 0.8) for n in (0.6, 0.8)) / 4
    assert MannWhitneyLoss(1.0)(queries, docs).item() == pytest.approx(expected, abs=1e-5)
    per_query = (math.log(1 + math.exp(-(0.6 - 0.6))) + math.log(1 + math.exp(-(0.8 - 0.8)))) / 2
    assert MannWhitneyLoss(1.0, per_query=True)(queries, docs).item() == pytest.approx(per_query, abs=1e-5)


def test_cwcl() -> None:
    # paper's linear weights (τ_w = None). Positives orthogonal: off-diagonal weight (1 + 0) / 2 = 0.5;
    # log-softmax row [1, 0]
    lp = [-math.log(1 + 1 / E), -math.log(1 + E)]
    expected = -(1.0 * lp[0] + 0.5 * lp[1]) / 1.5
    assert CWCLLoss(1.0, weight_temperature=None)(EYE, EYE).item() == pytest.approx(expected, abs=1e-5)
    # identical positives: both columns are full positives -> -(lp0 + lp1) / 2 with logits [1, 1]
    same = torch.tensor([[1.0, 0], [1.0, 0]])
    assert CWCLLoss(1.0, weight_temperature=None)(EYE[:1].repeat(2, 1), same).item() == pytest.approx(
        math.log(2), abs=1e-5
    )


def test_cwcl_sharpened_weights() -> None:
    # τ_w = 0.5: orthogonal positives weigh exp((0 - 1) / 0.5) = e^-2 off the diagonal
    w = E**-2
    lp = [-math.log(1 + 1 / E), -math.log(1 + E)]
    expected = -(lp[0] + w * lp[1]) / (1 + w)
    assert CWCLLoss(1.0, weight_temperature=0.5)(EYE, EYE).item() == pytest.approx(expected, abs=1e-5)
    # identical positives still weigh 1 (cos = 1), whatever τ_w
    same = torch.tensor([[1.0, 0], [1.0, 0]])
    assert CWCLLoss(1.0, weight_temperature=0.05)(EYE[:1].repeat(2, 1), same).item() == pytest.approx(
        math.log(2), abs=1e-5
    )
    # near-uniform similarities no longer give near-uniform targets
    positives = torch.tensor([[1.0, 0.0], [0.8, 0.6]])  # cos 0.8
    assert CWCLLoss(weight_temperature=None).soft_targets(positives)[0, 1].item() == pytest.approx(0.9)
    assert CWCLLoss(weight_temperature=0.1).soft_targets(positives)[0, 1].item() == pytest.approx(E**-2, abs=1e-6)


def test_listwise_softmax() -> None:
    query = torch.tensor([[1.0, 0]])
    docs = torch.tensor([[1.0, 0], [0, 1]])
    # one relevant document takes all the target mass: -log softmax([1, 0])[0]
    assert ListwiseSoftmaxLoss(1.0)(query, docs, torch.tensor([[1, 0]])).item() == pytest.approx(
        math.log(1 + 1 / E), abs=1e-5
    )
    # two grades: targets softmax([2, 1]) over the relevant documents only
    targets = [E / (E + 1), 1 / (E + 1)]
    expected = targets[0] * math.log(1 + 1 / E) + targets[1] * math.log(1 + E)
    assert ListwiseSoftmaxLoss(1.0)(query, docs, torch.tensor([[2, 1]])).item() == pytest.approx(expected, abs=1e-5)
    # an ignored slot (-1) leaves the softmax: one candidate left -> loss 0
    assert ListwiseSoftmaxLoss(1.0)(query, docs, torch.tensor([[2, -1]])).item() == pytest.approx(0.0, abs=1e-6)
    # two queries over the batch's documents: q1's only relevant document is d1; d0 is its in-batch negative
    queries = torch.tensor([[1.0, 0], [0, 1]])
    grades = torch.tensor([[1, 0], [0, 3]])
    assert ListwiseSoftmaxLoss(1.0)(queries, docs, grades).item() == pytest.approx(math.log(1 + 1 / E), abs=1e-5)
    # a row with no relevant document is left out of the mean
    assert ListwiseSoftmaxLoss(1.0)(queries, docs, torch.tensor([[1, 0], [0, 0]])).item() == pytest.approx(
        math.log(1 + 1 / E), abs=1e-5
    )


def test_wasserstein_listwise_is_the_cdf_gap_along_the_grades() -> None:
    query = torch.tensor([[1.0, 0]])
    docs = torch.tensor([[1.0, 0], [0, 1], [-1.0, 0]])  # cosines 1, 0, -1
    z = E + 1 + 1 / E
    p = [E / z, 1 / z, (1 / E) / z]  # model softmax at τ = 1
    q1 = 1 / (E + 1)  # target softmax([2, 1]) over the relevant documents: grade-1 share
    # levels 0 < 1 < 2: |F_p(0) - F_q(0)| + |F_p(1) - F_q(1)|, unit gaps
    expected = abs(p[2] - 0) + abs(p[1] + p[2] - q1)
    loss = WassersteinListwiseLoss(1.0)(query, docs, torch.tensor([[2, 1, 0]]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # an ignored document leaves both distributions; the gap 0 -> 2 costs 2 per unit of misplaced mass
    p_kept = (1 / E) / (E + 1 / E)
    loss = WassersteinListwiseLoss(1.0)(query, docs, torch.tensor([[2, -1, 0]]))
    assert loss.item() == pytest.approx(2 * p_kept, abs=1e-6)
    # documents of one grade are interchangeable: swapping two equal grades changes nothing
    same = WassersteinListwiseLoss(1.0)(query, docs, torch.tensor([[1, 1, 0]])).item()
    assert same == pytest.approx(abs(p[2] - 0), abs=1e-6)
    # rows without a relevant document are skipped; none at all gives 0 with a graph
    two = torch.tensor([[1.0, 0], [0, 1]])
    both = WassersteinListwiseLoss(1.0)(two, docs, torch.tensor([[2, 1, 0], [0, 0, 0]])).item()
    assert both == pytest.approx(expected, abs=1e-6)
    nothing = WassersteinListwiseLoss(1.0)(query.requires_grad_(), docs, torch.tensor([[0, 0, -1]]))
    assert nothing.item() == 0.0 and nothing.requires_grad
    # its gradient pulls the query towards the highest grade
    moving = torch.tensor([[0.6, 0.8]], requires_grad=True)
    WassersteinListwiseLoss(0.1)(moving, docs, torch.tensor([[2, 1, 0]])).backward()
    assert moving.grad[0, 0] < 0  # increasing the first coordinate (towards the grade-2 document) lowers it


def test_teacher_distillation_adds_the_kl_to_the_teacher_s_in_batch_distribution() -> None:
    queries = torch.tensor([[1.0, 0], [0, 1]])
    docs = torch.tensor([[1.0, 0], [0.6, 0.8]])  # the two positives (PAIRS layout, no hard negatives)
    inner = InfoNCELoss(0.5)
    student = (queries @ docs.T) / 0.5
    # a teacher that agrees with the student (same cosines, same temperature): KL 0, the inner loss alone
    agreeing = TeacherDistillationLoss(inner, weight=3.0, temperature=0.5, teacher_temperature=0.5)
    value = agreeing(queries, docs, queries @ docs.T).item()
    assert value == pytest.approx(inner(queries, docs).item(), abs=1e-6)
    # a flat teacher: KL(uniform || softmax(student)) per row = -log 2 - mean(log softmax(row)), weighted
    flat = TeacherDistillationLoss(inner, weight=2.0, temperature=0.5, teacher_temperature=1.0)
    log_probs = torch.log_softmax(student, dim=1)
    kl = (-math.log(2) - log_probs.mean(dim=1)).mean().item()
    value = flat(queries, docs, torch.zeros(2, 2)).item()
    assert value == pytest.approx(inner(queries, docs).item() + 2.0 * kl, abs=1e-6)
    with pytest.raises(ValueError, match="wraps a pair loss"):
        TeacherDistillationLoss(ListwiseSoftmaxLoss(), 1.0)


def test_cosent() -> None:
    left = torch.tensor([[1.0, 0], [1.0, 0]])
    right = torch.tensor([[1.0, 0], [0, 1]])
    # cos = [1, 0], gold [1, 0]: one ordered pair, log(1 + e^(0 - 1))
    assert CoSENTLoss(1.0)(left, right, torch.tensor([1.0, 0.0])).item() == pytest.approx(math.log(1 + 1 / E))
    # gold reversed: log(1 + e^(1 - 0))
    assert CoSENTLoss(1.0)(left, right, torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log(1 + E))


def test_matryoshka_sums_the_inner_loss_over_prefixes() -> None:
    torch.manual_seed(0)
    queries, docs = torch.randn(4, 8), torch.randn(4, 8)
    inner = InfoNCELoss(0.1)
    expected = inner(queries, docs) + inner(queries[:, :4], docs[:, :4]) + inner(queries[:, :2], docs[:, :2])
    assert MatryoshkaLoss(inner, [8, 4, 2])(queries, docs).item() == pytest.approx(expected.item(), abs=1e-6)


def test_margin_mse() -> None:
    q, p, n = torch.tensor([[1.0, 0]]), torch.tensor([[1.0, 0]]), torch.tensor([[0.0, 1]])
    # student margin 1 - 0 = 1, teacher 0.5 -> 0.25
    assert MarginMSELoss()(q, p, n, torch.tensor([0.5])).item() == pytest.approx(0.25)


def test_listwise_distillation() -> None:
    # teacher [1, 0] at τ_t = 1 -> p = [e, 1] / (e + 1); student logits equal to it: KL = 0
    teacher = torch.tensor([1.0, 0.0])
    assert ListwiseDistillationLoss(1.0)(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    # uniform student: KL = Σ p log(2p)
    p = torch.tensor([E, 1.0]) / (E + 1)
    expected = float((p * torch.log(2 * p)).sum())
    assert ListwiseDistillationLoss(1.0)(torch.zeros(2), teacher).item() == pytest.approx(expected, abs=1e-6)
    # only the teacher's gaps matter, not its offset; τ_t sharpens the target
    assert ListwiseDistillationLoss(1.0)(torch.zeros(2), teacher + 5).item() == pytest.approx(expected, abs=1e-6)
    sharp = ListwiseDistillationLoss(0.01)(torch.zeros(2), teacher).item()
    assert sharp == pytest.approx(math.log(2), abs=1e-6)  # target one-hot: KL = log 2 against uniform


def test_the_registry_builds_every_configured_loss_and_each_has_a_batch_builder() -> None:
    import typing

    from training.config import LossConfig, LossName
    from training.losses.layouts import BatchLayout
    from training.losses.registry import CROSS_ENCODER_LOSSES, EMBEDDING_LOSSES, build_embedding_loss, layout_of
    from training.trainer import BATCH_BUILDERS

    assert set(typing.get_args(LossName)) == set(EMBEDDING_LOSSES)
    for name in EMBEDDING_LOSSES:
        loss = build_embedding_loss(LossConfig(name=name))
        assert layout_of(loss) in BATCH_BUILDERS, name
        wrapped = build_embedding_loss(LossConfig(name=name, matryoshka_dims=[8, 4]))
        assert layout_of(wrapped) == layout_of(loss)
    for build in CROSS_ENCODER_LOSSES.values():
        assert build().layout == BatchLayout.SCORED_GROUPS


def test_cross_encoder_losses_on_hand_computed_values() -> None:
    from training.losses.group_softmax import GroupSoftmaxLoss
    from training.losses.pointwise_bce import PointwiseBCELoss

    logits = torch.tensor([[2.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    # softmax CE: -log(e^2 / (e^2 + 2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert GroupSoftmaxLoss()(logits, targets).item() == pytest.approx(expected, abs=1e-6)
    # BCE: mean of softplus(-2), softplus(0), softplus(0)
    bce = (math.log1p(math.exp(-2)) + 2 * math.log(2)) / 3
    assert PointwiseBCELoss()(logits, targets).item() == pytest.approx(bce, abs=1e-6)
