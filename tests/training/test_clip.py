"""The image-text head (ConSE + bounded learned map), its training loop, OpenClipart captions and the
image-text metrics, on hand-made values and small real pieces (the ImageNet MobileNetV2 classifier)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from training.cli import app as training_cli
from training.clip_training import (
    ClipData,
    EvalSet,
    TrainSet,
    _alias_choices,
    _batches,
    build_head,
    class_prompt_vectors,
    evaluate,
    fit,
    fit_members,
    imagenet_class_names,
    member_seed,
    softmax_temperature,
    subsample_groups,
    with_views,
)
from training.config import ClipTrainConfig, LossConfig
from training.data.clipart import caption_of, prepare_openclipart, read_metadata, split_clips, write_demo
from training.eval.clip import retrieval_recall, zero_shot_accuracy
from training.losses import InfoNCELoss, SigLIPLoss
from training.models.clip import (
    CONFIG_FILE,
    ClipImageConfig,
    ClipImageEncoder,
    ClipImageHead,
    _classifier,
    spherical_kmeans,
)
from training.models.image_towers import load_tower
from training.models.saved_config import SavedConfigError
from training.run import RunFolder, seed_everything

DIM = 16


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Linear:
    return _classifier(load_tower("mobilenet_v2"))


def class_vectors(seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(1000, DIM, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_conse_is_the_top_k_softmax_average_of_class_vectors(classifier: torch.nn.Linear) -> None:
    classes = class_vectors()
    head = ClipImageHead(ClipImageConfig(dim=DIM, residual="none", top_k=3, conse_temperature=2.0), classifier, classes)
    pooled = torch.rand(4, 1280) * 3
    with torch.no_grad():
        probs = torch.softmax(classifier(pooled) / 2.0, dim=-1).numpy()
        got = head(pooled).numpy()
    for row in range(4):
        top = np.argsort(-probs[row])[:3]
        expected = (probs[row, top][:, None] * classes.numpy()[top]).sum(0)
        np.testing.assert_allclose(got[row], expected / np.linalg.norm(expected), atol=1e-5)


def test_the_learned_map_turns_conse_by_exactly_its_bounded_length(classifier: torch.nn.Linear) -> None:
    head = ClipImageHead(ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32), classifier, class_vectors())
    pooled = torch.rand(8, 1280)
    with torch.no_grad():
        shift = head(pooled) - head.conse(pooled)
    np.testing.assert_allclose(shift.norm(dim=-1).numpy(), 0.6, atol=1e-5)


def test_the_uncertainty_gate_shrinks_the_turn_by_the_towers_top_probability(classifier: torch.nn.Linear) -> None:
    config = ClipImageConfig(
        dim=DIM, residual="mlp", residual_hidden=32, residual_scale=1.0, residual_gate="uncertainty"
    )
    head = ClipImageHead(config, classifier, class_vectors())
    # One confident input (its features along the top class's weights) and flat ones.
    confident = classifier.weight[7].clamp_min(0) * 40
    pooled = torch.cat([confident[None], torch.rand(3, 1280) * 0.01])
    with torch.no_grad():
        shift = (head(pooled) - head.conse(pooled)).norm(dim=-1)
        top = torch.softmax(classifier(pooled), dim=-1).max(dim=-1).values
    torch.testing.assert_close(shift, 1.0 - top)
    assert top[0] > 0.9 and shift[0] < 0.1  # a named image keeps ConSE's direction
    assert (shift[1:] > 0.9).all()  # an unnamed one is turned by (almost) the full bound


def _clustered_features(n_per: int = 40, clusters: int = 4, seed: int = 0) -> torch.Tensor:
    """(n_per * clusters, 1280) non-negative features around `clusters` directions (like a tower's
    ReLU6-pooled features of a few kinds of drawing)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.zeros(clusters, 1280)
    for c in range(clusters):
        centres[c, c * 300 : c * 300 + 200] = 1.0  # disjoint supports: orthogonal directions
    noise = 0.1 * torch.rand(n_per * clusters, 1280, generator=gen)
    return centres.repeat_interleave(n_per, dim=0) + noise


def test_spherical_kmeans_finds_the_clusters() -> None:
    points = F.normalize(_clustered_features(), dim=-1)
    centroids = spherical_kmeans(points, 4, seed=0)
    assert centroids.shape == (4, 1280)
    torch.testing.assert_close(centroids.norm(dim=-1), torch.ones(4))
    best = (points @ centroids.T).max(dim=-1).values
    assert best.min() > 0.95  # every point is close to one centroid: no cluster was merged or missed


def test_the_familiarity_gate_turns_training_like_images_and_spares_others(classifier: torch.nn.Linear) -> None:
    config = ClipImageConfig(
        dim=DIM, residual="mlp", residual_hidden=32, residual_gate="familiarity", familiarity_centroids=8
    )
    head = ClipImageHead(config, classifier, class_vectors())
    train = _clustered_features()
    head.fit_familiarity(train)
    closed, opened = head.familiarity_ramp.tolist()
    assert opened - closed == pytest.approx(0.15)
    unseen_kind = torch.zeros(3, 1280)
    unseen_kind[:, 1250:] = 1.0  # a direction no training image has: a "photo"
    fresh_drawings = _clustered_features(n_per=5, seed=1)  # new images of the training kinds
    with torch.no_grad():
        far = (head(unseen_kind) - head.conse(unseen_kind)).norm(dim=-1)
        near = (head(fresh_drawings) - head.conse(fresh_drawings)).norm(dim=-1)
    torch.testing.assert_close(far, torch.zeros(3))  # keeps ConSE exactly
    assert (near > 0.59).all() and (near <= 0.6 + 1e-5).all()  # turned by (almost) the full bound


def test_the_familiarity_gate_is_saved_with_the_head(tmp_path: Path, classifier: torch.nn.Linear) -> None:
    config = ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32, residual_gate="familiarity")
    head = ClipImageHead(config, classifier, class_vectors())
    head.fit_familiarity(_clustered_features(n_per=20))  # 80 images for 256 centroids: repeated
    head.save(tmp_path / "head")
    encoder = ClipImageEncoder.load(tmp_path / "head")
    torch.testing.assert_close(encoder.head.centroids, head.centroids)
    torch.testing.assert_close(encoder.head.familiarity_ramp, head.familiarity_ramp)


def test_the_familiarity_gate_exports_to_onnx(tmp_path: Path, classifier: torch.nn.Linear) -> None:
    ort = pytest.importorskip("onnxruntime")
    config = ClipImageConfig(
        dim=DIM, residual="mlp", residual_hidden=32, residual_gate="familiarity", familiarity_centroids=8
    )
    head = ClipImageHead(config, classifier, class_vectors()).eval()
    head.fit_familiarity(_clustered_features())
    unseen_kind = torch.zeros(2, 1280)
    unseen_kind[:, 1250:] = 1.0
    pooled = torch.cat([_clustered_features(n_per=2, seed=2), unseen_kind])  # open and shut gates
    torch.onnx.export(head, (pooled,), tmp_path / "head.onnx", input_names=["pooled"], dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pooled": pooled.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, head(pooled).numpy(), atol=1e-5)


def test_an_unknown_gate_is_refused(classifier: torch.nn.Linear) -> None:
    with pytest.raises(ValueError, match="residual_gate"):
        ClipImageHead(ClipImageConfig(dim=DIM, residual_gate="entropy"), classifier, class_vectors())


def test_an_unbounded_map_starts_as_conse_exactly(classifier: torch.nn.Linear) -> None:
    config = ClipImageConfig(dim=DIM, residual="linear", residual_scale=None)
    head = ClipImageHead(config, classifier, class_vectors())
    pooled = torch.rand(3, 1280)
    with torch.no_grad():
        torch.testing.assert_close(head(pooled), head.conse(pooled))


@pytest.mark.parametrize("gate", ["none", "uncertainty"])
def test_the_vector_is_conse_plus_the_turn(classifier: torch.nn.Linear, gate: str) -> None:
    config = ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32, residual_scale=1.0, residual_gate=gate)
    head = ClipImageHead(config, classifier, class_vectors())
    pooled = torch.rand(3, 1280)
    with torch.no_grad():
        turn = head.turn(pooled)
        torch.testing.assert_close(head(pooled), head.conse(pooled) + turn)
    lengths = turn.norm(dim=-1)
    assert torch.all(lengths <= 1.0 + 1e-5) and (gate == "uncertainty" or torch.allclose(lengths, torch.ones(3)))
    with pytest.raises(ValueError, match="no learned map"):
        ClipImageHead(ClipImageConfig(dim=DIM, residual="none"), classifier, class_vectors()).turn(pooled)


def test_a_saved_head_loads_into_the_same_encoder(tmp_path: Path, classifier: torch.nn.Linear) -> None:
    head = ClipImageHead(ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32), classifier, class_vectors())
    head.save(tmp_path / "head")
    encoder = ClipImageEncoder.load(tmp_path / "head")
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled = encoder.tower.pooled(pixels)
        normalised, raw = encoder(pixels)
        torch.testing.assert_close(raw, head(pooled))
    torch.testing.assert_close(normalised.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"residual_members": "5"}, "field 'residual_members' must be an integer, not '5'"),
        ({"residual_members": True}, "field 'residual_members' must be an integer, not True"),
        ({"residual_scale": "1.0"}, "field 'residual_scale' must be a number or null, not '1.0'"),
        ({"conse": 1}, "field 'conse' must be a boolean, not 1"),
        ({"residul": "mlp"}, "unknown field(s) residul for ClipImageConfig"),
        ({"residual_hidden": -1}, "ClipImageConfig.residual_hidden must be > 0, not -1"),
        ({"dim": 0}, "ClipImageConfig.dim must be > 0, not 0"),
        ({"top_k": -3}, "ClipImageConfig.top_k must be within [0, 1000], not -3"),
        ({"residual_members": 0}, "ClipImageConfig.residual_members must be within [1, 16], not 0"),
        ({"residual": "tree"}, "ClipImageConfig.residual must be one of mlp, linear, none, not 'tree'"),
    ],
)
def test_a_hand_edited_head_config_fails_naming_the_field(
    tmp_path: Path, classifier: torch.nn.Linear, edit: dict, message: str
) -> None:
    head = ClipImageHead(ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32), classifier, class_vectors())
    head.save(tmp_path / "head")
    config_file = tmp_path / "head" / CONFIG_FILE
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **edit}))
    with pytest.raises(SavedConfigError) as caught:
        ClipImageEncoder.load(tmp_path / "head")
    assert str(caught.value) == f"{config_file}: {message}"


def test_export_clip_reports_a_broken_head_config_in_one_line(
    tmp_path: Path, classifier: torch.nn.Linear, default_models_dir: Path
) -> None:
    head = ClipImageHead(ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32), classifier, class_vectors())
    head.save(tmp_path / "head")
    nested, not_a_number = "[" * 100_000, '{"residual_scale": NaN}'  # json.loads reads NaN
    for broken in ("{not json", "[1, 2]", json.dumps({"residual_members": 2.5}), nested, not_a_number):
        (tmp_path / "head" / CONFIG_FILE).write_text(broken)
        result = CliRunner().invoke(
            training_cli,
            [
                "export-clip",
                "--head",
                str(tmp_path / "head"),
                "--text-model",
                str(default_models_dir / "minilm-l6"),
                "--out",
                str(tmp_path / "out"),
            ],
        )
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {tmp_path / 'head' / CONFIG_FILE}: ")
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


def test_a_head_config_that_no_longer_fits_its_weights_fails_naming_the_folder(
    tmp_path: Path, classifier: torch.nn.Linear
) -> None:
    head = ClipImageHead(ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32), classifier, class_vectors())
    head.save(tmp_path / "head")
    config_file = tmp_path / "head" / CONFIG_FILE
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "residual_hidden": 64}))
    with pytest.raises(ValueError, match="head state does not match its config") as caught:
        ClipImageEncoder.load(tmp_path / "head")
    assert str(caught.value).startswith(f"{tmp_path / 'head'}: ") and "\n" not in str(caught.value)  # one CLI line


def _synthetic_data(classifier: torch.nn.Linear, n: int = 256) -> ClipData:
    """Images whose pooled features carry their caption through a fixed random linear map, which the
    head can learn and ConSE (random class vectors here) cannot."""
    gen = torch.Generator().manual_seed(1)
    captions = F.normalize(torch.randn(n, DIM, generator=gen), dim=-1)
    mixing = torch.randn(DIM, 1280, generator=gen)
    pooled = (captions @ mixing).relu() + 0.05 * torch.rand(n, 1280, generator=gen)
    train = TrainSet(pooled[:192].half(), captions[:192], np.arange(192), [[i] for i in range(192)])
    held_out = EvalSet(
        "held-out", pooled[192:].half(), captions[192:], [{i} for i in range(64)], [{i} for i in range(64)]
    )
    return ClipData(train, [held_out], None, {}, class_vectors())


def test_fit_learns_captions_that_conse_cannot_reach(tmp_path: Path, classifier: torch.nn.Linear) -> None:
    data = _synthetic_data(classifier)
    config = ClipTrainConfig(
        name="t", epochs=40, batch_size=64, learning_rate=3e-3, runs_dir=tmp_path, residual_hidden=64
    )
    head = ClipImageHead(
        ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=64, residual_scale=None),
        classifier,
        data.class_vectors,
    )
    before = evaluate(head, data)["held-out text->image recall@1"]
    loss = fit(head, data, config, random.Random(0), RunFolder(tmp_path, "t"))
    after = evaluate(head, data)["held-out text->image recall@1"]
    assert before < 0.1 and after > 0.5, (before, after)
    assert 0.01 <= softmax_temperature(loss) <= 1.0
    assert (tmp_path / "t" / "steps.jsonl").read_text().strip()


def _members(classifier: torch.nn.Linear, count: int, **config: object) -> list[ClipImageHead]:
    heads = []
    for seed in range(count):
        torch.manual_seed(seed)
        heads.append(
            ClipImageHead(
                ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32, **config), classifier, class_vectors()
            )
        )
    return heads


def test_an_ensemble_turns_conse_by_the_bounded_mean_of_its_members_unit_maps(
    tmp_path: Path, classifier: torch.nn.Linear
) -> None:
    heads = _members(classifier, 3, residual_scale=0.6)
    merged = ClipImageHead.from_members(heads).eval()
    assert merged.config.residual_members == 3
    pooled = torch.rand(5, 1280)
    with torch.no_grad():
        units = [F.normalize(h(pooled) - h.conse(pooled), dim=-1) for h in heads]  # each member's turn, as a unit
        expected = merged.conse(pooled) + 0.6 * F.normalize(sum(units), dim=-1)
        torch.testing.assert_close(merged(pooled), expected)
    merged.save(tmp_path / "head")  # and it loads back into an encoder computing the same
    encoder = ClipImageEncoder.load(tmp_path / "head")
    with torch.no_grad():
        torch.testing.assert_close(encoder.head(pooled), merged(pooled))


def test_an_unbounded_ensemble_is_the_mean_of_its_members(classifier: torch.nn.Linear) -> None:
    heads = _members(classifier, 2, residual_scale=None)
    for head in heads:  # move each off its zero start (the unbounded map starts as ConSE exactly)
        torch.nn.init.normal_(head.residual[-1].weight, std=0.1)
    merged = ClipImageHead.from_members(heads)
    pooled = torch.rand(4, 1280)
    with torch.no_grad():
        torch.testing.assert_close(merged(pooled), (heads[0](pooled) + heads[1](pooled)) / 2)


def test_only_heads_of_one_config_merge(classifier: torch.nn.Linear) -> None:
    bounded, unbounded = _members(classifier, 1, residual_scale=0.6)[0], _members(classifier, 1, residual_scale=None)[0]
    with pytest.raises(ValueError, match="one config"):
        ClipImageHead.from_members([bounded, unbounded])


def test_fit_members_trains_the_first_member_as_a_single_map_and_the_rest_from_their_own_seeds(
    tmp_path: Path, classifier: torch.nn.Linear
) -> None:
    data = _synthetic_data(classifier)
    config = ClipTrainConfig(
        name="t", epochs=5, batch_size=64, runs_dir=tmp_path, residual_hidden=32, residual_members=2, seed=3
    )
    merged, losses = fit_members(config, data, RunFolder(tmp_path, "t"))
    assert merged.config.residual_members == 2 and len(losses) == 2
    first, second = merged.residual.members
    assert not torch.equal(first[0].weight, second[0].weight)
    single_config = config.model_copy(update={"residual_members": 1})
    rng = seed_everything(member_seed(config.seed, 0))
    alone = build_head(single_config, data.class_vectors)
    fit(alone, data, single_config, rng, RunFolder(tmp_path, "alone"))
    torch.testing.assert_close(first[0].weight, alone.residual[0].weight)
    assert (tmp_path / "t" / "member-1" / "steps.jsonl").is_file()


def test_each_member_of_a_subsampled_ensemble_trains_on_its_own_share_of_the_groups(
    tmp_path: Path, classifier: torch.nn.Linear
) -> None:
    data = _synthetic_data(classifier)
    assert subsample_groups(data, 1.0, 0) is data
    first, second = (subsample_groups(data, 0.6, member_seed(3, m)) for m in (0, 1))
    for part in (first, second):  # 60% of the 192 groups, each one of the originals; features untouched
        assert len(part.train.groups) == 115 and all(g in data.train.groups for g in part.train.groups)
        assert part.train.pooled is data.train.pooled and part.evals is data.evals
    assert first.train.groups != second.train.groups
    config = ClipTrainConfig(
        name="t", epochs=2, batch_size=64, runs_dir=tmp_path, residual_hidden=32, residual_members=2, seed=3,
        member_subsample=0.6, residual_gate="familiarity", familiarity_centroids=8,
    )  # fmt: skip
    merged, _ = fit_members(config, data, RunFolder(tmp_path, "t"))
    assert [len(b) for b in _batches(first.train, 64, random.Random(0))] == [64, 51]  # 115 groups, not 192
    single_config = config.model_copy(update={"residual_members": 1})
    rng = seed_everything(member_seed(config.seed, 0))  # the first member is a single map on its share
    alone = build_head(single_config, data.class_vectors)
    fit(alone, first, single_config, rng, RunFolder(tmp_path, "alone"))
    torch.testing.assert_close(merged.residual.members[0][0].weight, alone.residual[0].weight)
    # the gate fits on every training image, so both members (and the merged head) share it
    whole = build_head(config.model_copy(update={"residual_members": 1}), data.class_vectors)
    whole.fit_familiarity(data.train.pooled, seed=config.seed)
    some = data.train.pooled[:8].float()
    torch.testing.assert_close(merged.familiarity(some), whole.familiarity(some))


def test_each_member_trains_with_its_own_loss_where_member_losses_name_them(
    tmp_path: Path, classifier: torch.nn.Linear
) -> None:
    data = _synthetic_data(classifier)
    dcl = LossConfig(name="dcl", temperature=0.05, learnable_temperature=True, symmetric=True)
    config = ClipTrainConfig(
        name="t", epochs=3, batch_size=64, runs_dir=tmp_path, residual_hidden=32, residual_members=2, seed=3,
        member_losses=[ClipTrainConfig.model_fields["loss"].default, dcl],
    )  # fmt: skip
    merged, losses = fit_members(config, data, RunFolder(tmp_path, "t"))
    assert [type(loss).__name__ for loss in losses] == ["InfoNCELoss", "DecoupledContrastiveLoss"]
    # member 1 is what a single DCL map from member 1's seed trains to; member 0 is the InfoNCE map
    for member, loss in enumerate(config.member_losses):
        single = config.model_copy(update={"residual_members": 1, "member_losses": [], "loss": loss})
        rng = seed_everything(member_seed(config.seed, member))
        alone = build_head(single, data.class_vectors)
        fit(alone, data, single, rng, RunFolder(tmp_path, f"alone-{member}"))
        torch.testing.assert_close(merged.residual.members[member][0].weight, alone.residual[0].weight)


def test_clip_config_refuses_member_losses_that_do_not_match_the_members() -> None:
    dcl = LossConfig(name="dcl", temperature=0.05, learnable_temperature=True, symmetric=True)
    with pytest.raises(ValueError, match="one loss per member: 1 given for residual_members: 2"):
        ClipTrainConfig(name="t", residual_members=2, member_losses=[dcl])
    with pytest.raises(ValueError, match=r"member_losses\[1\]: clip training takes .* not mw"):
        ClipTrainConfig(name="t", residual_members=2, member_losses=[dcl, LossConfig(name="mw")])
    with pytest.raises(ValueError, match="leave loss out"):
        ClipTrainConfig(name="t", residual_members=2, member_losses=[dcl, dcl], loss=dcl)


def test_clip_config_refuses_members_with_what_cannot_be_averaged() -> None:
    with pytest.raises(ValueError, match="text_projection"):
        ClipTrainConfig(name="t", residual_members=2, text_projection=True)
    with pytest.raises(ValueError, match="residual"):
        ClipTrainConfig(name="t", residual_members=2, residual="none")


class _HashedTexts:
    """A text tower stand-in: each string's own random unit vector (the same string, the same vector)."""

    def texts(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(hash(t) % 2**31)) for t in texts]
        return F.normalize(torch.stack(rows), dim=-1)


def test_class_prompts_average_each_class_over_the_templates() -> None:
    source = _HashedTexts()
    one = class_prompt_vectors(source, ["a photo of a {}"])  # type: ignore[arg-type]
    assert one.shape == (1000, DIM)
    name = imagenet_class_names()[1]
    photo, drawing = source.texts([f"a photo of a {name}", f"a drawing of a {name}"])
    torch.testing.assert_close(one[1], photo)  # one template: its vectors unchanged
    both = class_prompt_vectors(source, ["a photo of a {}", "a drawing of a {}"])  # type: ignore[arg-type]
    torch.testing.assert_close(both[1], F.normalize(photo + drawing, dim=-1))
    torch.testing.assert_close(both.norm(dim=-1), torch.ones(1000))


def test_clip_config_refuses_a_class_prompt_without_one_slot_for_the_name() -> None:
    for templates in (["a photo"], ["{} and {}"], []):
        with pytest.raises(ValueError, match="class_prompts"):
            ClipTrainConfig(name="t", class_prompts=templates)
    assert ClipTrainConfig(name="t").class_prompts == ["a photo of a {}"]


def test_batches_by_source_keep_clip_art_and_emoji_apart() -> None:
    """10 clip-art images, then 7 emoji codepoints in two styles (rows 10-23, one group each): an
    epoch draws every group once, and by source no batch mixes the two."""
    groups = [[i] for i in range(10)] + [[10 + k, 17 + k] for k in range(7)]
    train = TrainSet(torch.zeros(24, 4), torch.zeros(17, 4), np.arange(24), groups, emoji_start=10)
    mixed = _batches(train, 4, random.Random(0))
    assert any(min(b) < 10 <= max(b) for b in mixed)  # the default mixes them
    by_source = _batches(train, 4, random.Random(0), by_source=True)
    assert sorted(i if i < 17 else i - 7 for batch in by_source for i in batch) == list(range(17))
    assert all(max(b) < 10 or min(b) >= 10 for b in by_source)
    assert any(min(b) >= 10 for b in by_source) and any(max(b) < 10 for b in by_source)


def test_augmented_copies_take_their_images_caption_group_and_source() -> None:
    """Two clip-art images, then one emoji in two styles (rows 2-3, one group), two copies each:
    copy c of image i is row i + 4c, with its image's caption, caption choices and group."""
    text_of, groups, choices = with_views([0, 1, 2, 2], [[0], [1], [2, 3]], {2: [2, 5], 3: [2, 5]}, 2)
    assert text_of == [0, 1, 2, 2] * 3
    assert groups == [[0, 4, 8], [1, 5, 9], [2, 3, 6, 7, 10, 11]]
    assert choices == {i: [2, 5] for i in (2, 3, 6, 7, 10, 11)}
    assert with_views([0, 1], [[0], [1]], {}, 0) == ([0, 1], [[0], [1]], {})
    train = TrainSet(torch.zeros(12, 4), torch.zeros(6, 4), np.array(text_of), groups, emoji_start=2, originals=4)
    for seed in range(5):  # a copy of a clip-art image never joins an emoji batch, and the reverse
        for batch in _batches(train, 2, random.Random(seed), by_source=True):
            assert len({i % 4 < 2 for i in batch}) == 1, batch


def test_the_gate_and_the_hubness_banks_leave_augmented_copies_out(
    tmp_path: Path, classifier: torch.nn.Linear, default_models_dir: Path
) -> None:
    """Copies are training rows, but the familiarity gate, the caption bank's centring and the image
    bank are the training images' own: the same with copies as without them."""
    from training.clip_training import conse_head, hub_correction, image_hub_correction

    gen = torch.Generator().manual_seed(4)
    captions = F.normalize(torch.randn(6, 384, generator=gen), dim=-1)
    images, copies = torch.rand(12, 1280, generator=gen), 3 * torch.rand(12, 1280, generator=gen)
    groups = [[i, i + 1] for i in range(0, 12, 2)]
    plain = TrainSet(images.half(), captions, np.arange(12) // 2, groups)
    text_of, with_copies, _ = with_views(list(np.arange(12) // 2), groups, {}, 1)
    augmented = TrainSet(torch.cat([images, copies]).half(), captions, np.array(text_of), with_copies, originals=12)
    config = ClipTrainConfig(name="t", hubness_neighbours=3)
    head = conse_head(default_models_dir / "minilm-l6")
    for correction in (hub_correction, image_hub_correction):
        ours, theirs = correction(head, augmented, config), correction(head, plain, config)
        np.testing.assert_array_equal(ours.bank, theirs.bank)
        assert ours.mean == pytest.approx(theirs.mean, abs=1e-6)
    gates = []
    short = F.normalize(captions[:, :DIM], dim=-1)  # the gate's head works in DIM dimensions
    for train in (plain, augmented):
        data = ClipData(replace(train, texts=short), [], None, {}, class_vectors())
        gated = ClipImageConfig(
            dim=DIM, residual="mlp", residual_hidden=8, residual_gate="familiarity", familiarity_centroids=4
        )
        head = ClipImageHead(gated, classifier, data.class_vectors)
        fit(head, data, ClipTrainConfig(name="t", epochs=1, batch_size=4, runs_dir=tmp_path), random.Random(0), None)
        gates.append((head.centroids.clone(), head.familiarity_ramp.clone()))
    torch.testing.assert_close(gates[0], gates[1])


def test_an_augmented_copy_is_drawn_from_the_file_and_its_view_alone(tmp_path: Path, default_models_dir: Path) -> None:
    """The copy of a transparent drawing is cut to the drawing first (as the tower would), opaque,
    the same every time it is drawn, and another copy for another view."""
    from training.clip_training import FeatureSource

    (tmp_path / "wide.png").write_bytes(_drawing(90))
    text_model = default_models_dir / "minilm-l6"
    config = ClipTrainConfig(
        name="t", tower="mobilenet_v2", text_model=text_model, trim_transparent=0.04, augment_views=2
    )
    source = FeatureSource(config)
    path = tmp_path / "wide.png"
    assert source._decode(path, None).size == (244, 244)
    first, again, other = source._decode(path, 0), source._decode(path, 0), source._decode(path, 1)
    assert first.mode == "RGB" and max(first.size) <= 70  # trimmed to the 64-pixel drawing before the crop
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first.resize((32, 32))), np.asarray(other.resize((32, 32))))
    untrimmed = FeatureSource(config.model_copy(update={"trim_transparent": None}))
    assert max(untrimmed._decode(path, 0).size) > 140


def test_cached_copies_are_redrawn_when_the_augmentation_code_changes_version(
    tmp_path: Path, default_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.clip_training as clip_training

    (tmp_path / "wide.png").write_bytes(_drawing(90))
    config = ClipTrainConfig(
        name="t", tower="mobilenet_v2", text_model=default_models_dir / "minilm-l6", augment_views=1,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    drawn: list[int] = []
    real = clip_training.augment_view
    monkeypatch.setattr(clip_training, "augment_view", lambda *a, **k: drawn.append(1) or real(*a, **k))
    files = [tmp_path / "wide.png"]
    first = clip_training.FeatureSource(config).images("k", files, view=0)
    clip_training.FeatureSource(config).images("k", files, view=0)
    assert len(drawn) == 1  # the second source read the cached copy
    monkeypatch.setattr(clip_training, "AUGMENT_VERSION", clip_training.AUGMENT_VERSION + 1)
    again = clip_training.FeatureSource(config).images("k", files, view=0)
    assert len(drawn) == 2 and torch.equal(first, again)  # drawn anew under the new version's key


def test_clip_config_refuses_an_augmentation_kind_without_copies() -> None:
    with pytest.raises(ValueError, match="augment_views"):
        ClipTrainConfig(name="t", augment="geometry")
    assert ClipTrainConfig(name="t", augment="geometry", augment_views=1).augment == "geometry"


def _annotations(tmp_path: Path) -> Path:
    """emojibase-data's data.json shape: the grinning face's CLDR name is its Unicode name, the
    heart's is not (and emojibase drops FE0F), the rocket's is another caption already trained on."""
    path = tmp_path / "data.json"
    records = [
        {"label": "Grinning face", "hexcode": "1F600", "tags": ["face", "grin"]},
        {"label": "red heart", "hexcode": "2764", "tags": ["heart"]},
        {"label": "clip caption", "hexcode": "1F680"},
        {"label": "no such emoji", "hexcode": "1F9FF", "tags": ["x"]},
    ]
    path.write_text(json.dumps(records))
    return path


def test_emoji_aliases_become_caption_choices_of_the_training_emoji_rows(tmp_path: Path) -> None:
    """Rows 1-5: three training emoji in two styles after one clip-art image. An alias equal to the
    emoji's own name adds nothing, one equal to another caption reuses its row, new ones are appended."""
    from training.data.images import Identity

    grin = Identity("1F600", "grinning face", "c", ("google", "twitter"))
    heart = Identity("2764-FE0F", "heavy black heart", "c", ("google", "twitter"))
    rocket = Identity("1F680", "rocket", "c", ("google", "twitter"))
    rows = [grin, heart, rocket, grin, heart]
    config = ClipTrainConfig(name="t", emoji_annotations=_annotations(tmp_path), emoji_aliases="labels_and_tags")
    captions = ["clip caption", "grinning face", "heavy black heart", "rocket"]
    text_of = [0, 1, 2, 3, 1, 2]
    choices = _alias_choices(config, rows, 1, text_of, captions)
    assert captions[4:] == ["grinning face, face, grin", "red heart", "red heart, heart"]
    assert choices == {1: [1, 4], 2: [2, 5, 6], 3: [3, 0], 4: [1, 4], 5: [2, 5, 6]}

    captions = ["clip caption", "grinning face", "heavy black heart", "rocket"]
    labels = config.model_copy(update={"emoji_aliases": "labels"})
    assert _alias_choices(labels, rows, 1, text_of, captions) == {2: [2, 4], 3: [3, 0], 5: [2, 4]}
    assert captions[4:] == ["red heart"]
    none = config.model_copy(update={"emoji_aliases": "none", "emoji_annotations": tmp_path / "missing.json"})
    assert _alias_choices(none, rows, 1, text_of, captions) == {}  # the file is not even read


def test_caption_rows_draw_among_choices_and_draw_nothing_without_them() -> None:
    train = TrainSet(torch.zeros(4, 4), torch.zeros(6, 4), np.array([0, 1, 2, 3]), [[i] for i in range(4)])
    rng, twin = random.Random(5), random.Random(5)
    assert train.caption_rows([3, 1], rng).tolist() == [3, 1]
    assert rng.random() == twin.random()  # no draw: a run without aliases trains as it always did
    train = replace(train, choices={1: [1, 4, 5]})
    drawn = [train.caption_rows([0, 1, 3], rng).tolist() for _ in range(200)]
    assert {d[0] for d in drawn} == {0} and {d[2] for d in drawn} == {3}
    assert {d[1] for d in drawn} == {1, 4, 5}


def test_softmax_temperature_of_each_loss() -> None:
    assert softmax_temperature(InfoNCELoss(0.07)) == pytest.approx(0.07)
    assert softmax_temperature(SigLIPLoss(scale=10.0)) == pytest.approx(0.1)


def test_clip_config_refuses_a_pair_loss_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="infonce, dcl, cwcl or siglip"):
        ClipTrainConfig(name="t", loss=LossConfig(name="cosent"))
    with pytest.raises(ValueError, match="no path"):
        ClipTrainConfig(name="t", conse=False, residual="none")


def test_retrieval_recall_counts_any_relevant_item() -> None:
    queries = np.array([[1.0, 0], [0, 1], [1, 1]])
    gallery = np.array([[1.0, 0], [0.9, 0.1], [0, 1]])
    # q0 -> row 0 first; q1 -> row 2 first; q2's relevant row 2 ranks after rows 1 and 0? scores: .707,.78,.707
    got = retrieval_recall(queries, gallery, [{1}, {2}, {2}], ks=(1, 2))
    assert got == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(2 / 3)}
    assert retrieval_recall(queries, gallery, [{0, 1}, {2}, {1}], ks=(1,))["recall@1"] == 1.0


def test_zero_shot_accuracy() -> None:
    prompts = np.array([[1.0, 0], [0, 1]])
    images = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert zero_shot_accuracy(images, prompts, np.array([0, 1, 1])) == pytest.approx(2 / 3)


SVG = """<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF><cc:Work rdf:about="">
<dc:title>Red &amp; green apple</dc:title><dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li>hash</rdf:li>
<rdf:li></rdf:li><rdf:li>0x851ce54</rdf:li><rdf:li>Food_Item</rdf:li><rdf:li>fruit</rdf:li></rdf:Bag></dc:subject>
<dc:publisher><cc:Agent><dc:title>Someone Else</dc:title></cc:Agent></dc:publisher></cc:Work>
</rdf:RDF></metadata></svg>"""


def test_openclipart_metadata_keeps_the_work_title_and_real_keywords(tmp_path: Path) -> None:
    (tmp_path / "a.svg").write_text(SVG)
    title, keywords = read_metadata(tmp_path / "a.svg")
    assert title == "Red & green apple"
    assert keywords == ["fruit", "food item"]  # boilerplate, hex ids, blanks and repeats dropped
    assert caption_of(title, keywords, "food") == "Red & green apple, fruit food item"
    assert caption_of("", [], "signs_and_symbols") == "signs and symbols"


def test_prepare_openclipart_pairs_png_with_svg_and_survives_a_bad_file(tmp_path: Path) -> None:
    from PIL import Image

    png_root, svg_root = tmp_path / "png" / "food", tmp_path / "svg" / "food"
    png_root.mkdir(parents=True)
    svg_root.mkdir(parents=True)
    Image.new("RGBA", (600, 300), (255, 0, 0, 128)).save(png_root / "apple.v2_01.png")  # a dot in the stem
    (svg_root / "apple.v2_01.svg").write_text(SVG)
    (png_root / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    assert prepare_openclipart(tmp_path / "png", tmp_path / "svg", out, max_side=128) == 1
    with Image.open(out / "images" / "food" / "apple.v2_01.png") as shrunk:
        assert shrunk.size == (128, 64) and shrunk.mode == "RGBA"
    from training.data.clipart import load_clips

    (clip,) = load_clips(out)
    assert clip.id == "food/apple.v2_01" and clip.category == "food" and clip.title == "Red & green apple"
    train, test = split_clips([clip] * 5, 2, seed=0)
    assert len(train) == 3 and len(test) == 2
    demo = tmp_path / "demo"
    assert write_demo(out, demo, count=10) == 1
    assert (demo / "food__apple.v2_01.png").is_file() and "caption" in (demo / "metadata.jsonl").read_text()


def _drawing(border: int) -> bytes:
    """A transparent PNG: the same opaque drawing inside `border` pixels of empty canvas."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (64 + 2 * border, 64 + 2 * border), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((border, border, border + 63, border + 63), fill=(230, 180, 20, 255))
    draw.rectangle((border + 20, border + 24, border + 28, border + 40), fill=(40, 20, 10, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_head_trained_on_trimmed_drawings_exports_and_serves_the_trim(
    tmp_path: Path, default_models_dir: Path
) -> None:
    """The trim the head was trained behind reaches the manifest, so the served model sees one
    drawing at one scale whatever its empty border (without it, the border changes the vector)."""
    from app.core.manifest import Manifest
    from app.inference.image_model import ImageModel
    from app.inference.images import ImageLimits
    from training.clip_training import conse_head
    from training.export.clip import export_clip_model

    drawings = tmp_path / "drawings"
    drawings.mkdir()
    for border in (0, 8, 40, 90):
        (drawings / f"b{border}.png").write_bytes(_drawing(border))
    served = {}
    for trim in (None, 0.04):
        head = conse_head(default_models_dir / "minilm-l6")
        head.config.trim_transparent = trim
        head.save(tmp_path / f"head-{trim}")
        assert ClipImageEncoder.load(tmp_path / f"head-{trim}").head.config.trim_transparent == trim
        out = tmp_path / f"clip-{trim}"
        manifest = export_clip_model(
            tmp_path / f"head-{trim}", default_models_dir / "minilm-l6", out, "c", [drawings], min_images=4
        )
        assert manifest.image is not None and manifest.image.trim_transparent == trim
        model = ImageModel(out, Manifest.load(out))
        pixels = np.stack([model.pixels(_drawing(b), ImageLimits()) for b in (0, 90)])
        tight, wide = model.encode(pixels)
        served[trim] = float(tight @ wide / np.linalg.norm(tight) / np.linalg.norm(wide))
    assert served[0.04] > 0.999 > served[None], served


def _sided_data(classifier: torch.nn.Linear, pairs: int = 128, held_out: int = 32) -> ClipData:
    """Image pairs whose pooled features are identical (one pattern, at the left or the right of a
    7x7 map) and whose captions differ by a fixed 'side' direction: only where the pattern lies
    tells a pair's images apart."""
    gen = torch.Generator().manual_seed(3)
    side = F.normalize(torch.randn(DIM, generator=gen), dim=0)
    topics = F.normalize(torch.randn(pairs, DIM, generator=gen), dim=-1)
    patterns = (topics @ torch.randn(DIM, 1280, generator=gen)).relu() + 0.05  # (pairs, 1280)
    maps = torch.zeros(2 * pairs, 1280, 7, 7)
    maps[0::2, :, 3, 1] = patterns  # left
    maps[1::2, :, 3, 5] = patterns  # right
    captions = torch.empty(2 * pairs, DIM)
    captions[0::2], captions[1::2] = F.normalize(topics + side, dim=-1), F.normalize(topics - side, dim=-1)
    cut = 2 * (pairs - held_out)
    train = TrainSet(maps[:cut].half(), captions[:cut], np.arange(cut), [[i] for i in range(cut)])
    n = 2 * held_out
    test = EvalSet("sided", maps[cut:].half(), captions[cut:], [{i} for i in range(n)], [{i} for i in range(n)])
    return ClipData(train, [test], None, {}, class_vectors())


def test_a_spatial_path_tells_apart_what_pooled_features_cannot(tmp_path: Path, classifier: torch.nn.Linear) -> None:
    data = _sided_data(classifier)
    config = ClipTrainConfig(name="t", epochs=60, batch_size=64, learning_rate=3e-3, runs_dir=tmp_path)
    recall = {}
    for channels in (0, 8):
        torch.manual_seed(0)
        head_config = ClipImageConfig(
            dim=DIM, residual="mlp", residual_hidden=64, residual_scale=None, spatial_channels=channels
        )
        head = ClipImageHead(head_config, classifier, data.class_vectors)
        fit(head, data, config, random.Random(0), RunFolder(tmp_path, f"c{channels}"))
        recall[channels] = evaluate(head, data)["sided text->image recall@1"]
    # pooled alone gives a pair's two images one vector: at best one of the two captions finds its own
    assert recall[0] <= 0.55 and recall[8] >= 0.8, recall


def test_a_spatial_head_takes_the_feature_map_and_saves_its_path(tmp_path: Path, classifier: torch.nn.Linear) -> None:
    config = ClipImageConfig(dim=DIM, residual="mlp", residual_hidden=32, spatial_channels=4)
    head = ClipImageHead(config, classifier, class_vectors())
    with pytest.raises(ValueError, match="feature map"):
        head(torch.rand(2, 1280))
    with torch.no_grad():
        head.spatial[-1].weight.normal_()  # type: ignore[index]  # a trained path, not the zero start
    head.save(tmp_path / "head")
    encoder = ClipImageEncoder.load(tmp_path / "head")
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feature_map = encoder.features(pixels)
        assert feature_map.shape == (2, 1280, 7, 7)
        torch.testing.assert_close(encoder(pixels)[1], head(feature_map))
        torch.testing.assert_close(head.conse(feature_map), head.conse(feature_map.mean(dim=(2, 3))))


def test_a_trained_head_ships_its_hubness_bank_and_serves_it(tmp_path: Path, default_models_dir: Path) -> None:
    """save_hub_bank writes the training captions and the training images' mean neighbourhood
    similarity (checked by hand here), and for image queries the training images' own vectors with
    their mean similarity to their nearest training images of other captions; export puts both in the folder
    and the manifest; serving loads them."""
    from app.core.manifest import Manifest
    from app.inference.hubness import HubCorrection
    from training.clip_training import _vectors, conse_head, hub_correction, save_hub_bank
    from training.export.clip import export_clip_model

    head = conse_head(default_models_dir / "minilm-l6")
    gen = torch.Generator().manual_seed(3)
    captions = F.normalize(torch.randn(30, 384, generator=gen), dim=-1)
    pooled = torch.rand(12, 1280, generator=gen)
    # images 2i and 2i + 1 share a caption (two drawings of one emoji): neither is the other's image neighbour
    train = TrainSet(pooled.half(), captions, np.arange(12) // 2, [[i, i + 1] for i in range(0, 12, 2)])
    config = ClipTrainConfig(name="t", hubness_weight=0.25, hubness_neighbours=3, image_hubness_weight=0.75)
    head.save(tmp_path / "head")
    save_hub_bank(head, train, config, tmp_path / "head")
    images = _vectors(head, train.pooled)
    by_hand = np.mean([np.sort(captions.numpy() @ v)[-3:].mean() for v in images])
    others = [np.delete(images, [i - i % 2, i - i % 2 + 1], axis=0) for i in range(len(images))]
    image_by_hand = np.mean([np.sort(rest @ v)[-3:].mean() for rest, v in zip(others, images, strict=True)])
    drawings = tmp_path / "drawings"
    drawings.mkdir()
    for border in (0, 8, 40, 90):
        (drawings / f"b{border}.png").write_bytes(_drawing(border))
    out = tmp_path / "clip"
    manifest = export_clip_model(
        tmp_path / "head", default_models_dir / "minilm-l6", out, "c", [drawings], min_images=4
    )
    assert manifest.clip is not None and manifest.clip.hubness is not None
    spec = manifest.clip.hubness
    assert (spec.neighbours, spec.weight) == (3, 0.25) and spec.mean == pytest.approx(by_hand, abs=1e-5)
    image_spec = manifest.clip.image_hubness
    assert image_spec is not None and (image_spec.neighbours, image_spec.weight) == (3, 0.75)
    assert image_spec.mean == pytest.approx(image_by_hand, abs=1e-5)
    np.testing.assert_allclose(HubCorrection.load(out, image_spec, 384).bank, images, atol=1e-6)
    assert Manifest.load(out).verify_files(out) == []
    hubs = HubCorrection.load(out, spec, 384)
    np.testing.assert_allclose(hubs.bank, captions.numpy(), atol=1e-7)
    # an image as close to its 3 nearest captions as the training images are on average: no penalty
    assert abs(float(hubs.penalties(images).mean())) < 1e-5
    # captions past `bank_rows` (emoji aliases) are trained on but are not the bank
    primary = hub_correction(head, replace(train, bank_rows=20), config).bank
    np.testing.assert_array_equal(primary, captions[:20].numpy())


def test_a_conse_head_exports_without_a_hubness_bank(clip_models_dir: Path) -> None:
    from app.core.manifest import Manifest

    manifest = Manifest.load(clip_models_dir / "clip-conse")
    assert manifest.clip is None or (manifest.clip.hubness is None and manifest.clip.image_hubness is None)
    assert not (clip_models_dir / "clip-conse" / "hubness_bank.npy").exists()
    assert not (clip_models_dir / "clip-conse" / "hubness_image_bank.npy").exists()


def test_a_weight_of_0_saves_no_bank_for_its_query_kind(tmp_path: Path, default_models_dir: Path) -> None:
    from training.clip_training import conse_head, save_hub_bank

    head = conse_head(default_models_dir / "minilm-l6")
    captions = F.normalize(torch.randn(6, 384), dim=-1)
    train = TrainSet(torch.rand(4, 1280).half(), captions, np.arange(4), [[i] for i in range(4)])
    for text_weight, image_weight, files in ((0.5, 0.0, {"hubness.json"}), (0.0, 0.5, {"hubness_image.json"})):
        folder = tmp_path / f"{text_weight}-{image_weight}"
        folder.mkdir()
        config = ClipTrainConfig(name="t", hubness_weight=text_weight, image_hubness_weight=image_weight)
        save_hub_bank(head, train, config, folder)
        assert {p.name for p in folder.glob("*.json")} == files


def test_a_head_on_encoder_features_keeps_conse_and_the_gate_on_the_tower_features(
    classifier: torch.nn.Linear,
) -> None:
    """Features = the tower's pooled 1280 followed by a trained encoder's embedding: the map sees
    both; ConSE and the familiarity gate see the tower's part alone (photos keep ConSE's vector)."""
    classes = class_vectors()
    config = ClipImageConfig(
        dim=DIM, residual="mlp", residual_hidden=32, residual_gate="familiarity", familiarity_centroids=8
    )
    plain = ClipImageHead(config, classifier, classes).eval()
    with_encoder = ClipImageHead(replace(config, encoder_dim=24), classifier, classes).eval()
    with_encoder.fit_familiarity(torch.cat([_clustered_features(), torch.rand(160, 24)], dim=1))
    plain.fit_familiarity(_clustered_features())
    tower, encoded = _clustered_features()[::50], torch.rand(4, 24)  # drawings like the training ones: gate open
    features = torch.cat([tower, encoded], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(with_encoder.conse(features), plain.conse(tower))
        torch.testing.assert_close(with_encoder._gate(features), plain._gate(tower))
        assert (with_encoder._gate(features) > 0.5).all()
        other = torch.cat([tower, encoded + 1.0], dim=1)
        assert not torch.allclose(with_encoder.turn(features), with_encoder.turn(other))  # the map reads it
        torch.testing.assert_close(with_encoder.conse(other), with_encoder.conse(features))
    with pytest.raises(ValueError, match="no spatial path"):
        ClipImageHead(replace(config, encoder_dim=24, spatial_channels=4), classifier, classes)


def test_an_image_encoder_that_sees_images_otherwise_is_refused(tmp_path: Path) -> None:
    from training.clip_training import image_encoder_config
    from training.models.image import ImageEncoder, ImageEncoderConfig

    ImageEncoder(ImageEncoderConfig("mobilenet_v2", 64), pretrained=False).save(tmp_path / "encoder")
    config = ClipTrainConfig(name="t", tower="mobilenet_v2", image_encoder=tmp_path / "encoder")
    assert image_encoder_config(config).dim == 64  # type: ignore[union-attr]
    trimmed = config.model_copy(update={"trim_transparent": 0.04})
    with pytest.raises(ValueError, match="tower mobilenet_v2 with trim_transparent None, but this run has"):
        image_encoder_config(trimmed)


def test_a_head_on_encoder_features_is_measured_not_exported(tmp_path: Path, classifier: torch.nn.Linear) -> None:
    """image.onnx computes the tower's features alone: such a head is refused before training with an
    export, and a saved one is refused by the exporter's loader, not met by a tensor size error."""
    with pytest.raises(ValueError, match="measured, not exported"):
        ClipTrainConfig(name="t", image_encoder=tmp_path, export={"name": "t"})
    head = ClipImageHead(ClipImageConfig(dim=DIM, residual_hidden=32, encoder_dim=8), classifier, class_vectors())
    head.save(tmp_path / "head")
    with pytest.raises(ValueError, match=r"encoder_dim 8\) cannot be exported"):
        ClipImageEncoder.load(tmp_path / "head")
