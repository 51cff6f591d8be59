import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Value

from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.modeling import ClassifierConfig, create_classifier, eval_transform
from dbb_hf.selection import (
    SelectionConfig,
    model_fingerprint,
    score_batch,
    score_dataset,
    select_lowest_loss,
    select_textual_inversion,
    selection_purity,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=40, num_validation=16, num_test=4, image_size=32, correlation=0.9, seed=0))


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32)
    return create_classifier(config, num_classes=2).eval()


def scored(losses, labels, names=("a", "b"), ids=None, **extra):
    """A dataset with known ERM losses, as score_dataset would leave it."""
    ids = ids or [f"img-{i:03d}" for i in range(len(losses))]
    features = {"label": ClassLabel(names=list(names)), "erm_loss": Value("float32"), "example_id": Value("string")}
    columns = {"label": labels, "erm_loss": losses, "example_id": ids}
    for name, values in extra.items():
        features[name] = Value("int32")
        columns[name] = values
    return Dataset.from_dict(columns, features=Features(features))


def test_score_batch_gives_each_image_its_own_loss(toy, model):
    rows = toy["train"].select(range(6))
    images = list(rows["image"])
    images[1] = images[1].convert("RGBA")
    images[2] = images[2].convert("L")
    batch = {"image": images, "label": list(rows["label"])}
    transform = eval_transform(model)

    out = score_batch(batch, model=model, transform=transform, device="cpu")

    pixels = torch.stack([transform(image.convert("RGB")) for image in images])
    with torch.no_grad():
        logits = model(pixels)
    expected = F.cross_entropy(logits, torch.tensor(batch["label"]), reduction="none")
    assert out["erm_loss"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert np.allclose(out["erm_probs"], logits.softmax(-1).numpy(), atol=1e-5)
    # Not the authors' per-batch mean, which gives every image the same loss.
    assert np.ptp(out["erm_loss"]) > 1e-4
    assert np.allclose(np.sum(out["erm_probs"], axis=1), 1.0, atol=1e-5)


def test_score_batch_refuses_a_model_in_training_mode(toy, model):
    rows = toy["train"].select(range(2))
    with pytest.raises(ValueError, match="eval mode"):
        score_batch({"image": list(rows["image"]), "label": list(rows["label"])},
                    model=model.train(), transform=eval_transform(model), device="cpu")


def test_score_dataset_columns_do_not_depend_on_the_batch(toy, model):
    train = toy["train"].select(range(6))
    small = score_dataset(train, model, batch_size=2)
    large = score_dataset(train, model, batch_size=6)
    assert small.features["erm_loss"] == Value("float32")
    assert small.features["erm_probs"].feature == Value("float32")
    assert small.column_names == train.column_names + ["erm_loss", "erm_probs"]
    assert list(small["example_id"]) == list(train["example_id"])
    assert np.allclose(small["erm_loss"], large["erm_loss"], atol=1e-5)
    assert np.asarray(small["erm_probs"]).shape == (6, 2)


def test_score_dataset_reuses_its_cache(toy, model, tmp_path):
    train = toy["train"].select(range(4))
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(output)))

    first = score_dataset(train, model, batch_size=4, cache_dir=tmp_path)
    assert sum(calls) == 4
    second = score_dataset(train, model, batch_size=4, cache_dir=tmp_path)
    assert sum(calls) == 4  # loaded, not recomputed
    assert second._fingerprint == first._fingerprint
    assert [f["filename"] for f in second.cache_files] == [f["filename"] for f in first.cache_files]
    assert list(second["erm_loss"]) == list(first["erm_loss"])

    with torch.no_grad():
        model.get_classifier().bias.add_(1.0)
    score_dataset(train, model, batch_size=4, cache_dir=tmp_path)
    assert sum(calls) == 8  # new weights, new scores


def test_score_dataset_rejects_a_classifier_for_other_classes(toy):
    three = create_classifier(ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32), 3)
    with pytest.raises(ValueError, match="3 outputs"):
        score_dataset(toy["train"], three)
    other = create_classifier(ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32), 2)
    other.pretrained_cfg = dict(other.pretrained_cfg, label_names=["cat", "dog"])
    with pytest.raises(ValueError, match="trained on classes"):
        score_dataset(toy["train"], other)


def test_model_fingerprint_follows_weights_and_preprocessing(model):
    torch.manual_seed(0)
    twin = create_classifier(ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32), 2)
    assert model_fingerprint(twin) == model_fingerprint(model)
    with torch.no_grad():
        twin.get_classifier().weight[0, 0] += 1e-3
    assert model_fingerprint(twin) != model_fingerprint(model)
    torch.manual_seed(0)
    bigger = create_classifier(ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=48), 2)
    assert model_fingerprint(bigger) != model_fingerprint(model)


def test_config_parses_counts_fractions_and_lists():
    assert SelectionConfig(lowest_loss="0.5").lowest_loss_values == [0.5]
    assert SelectionConfig(lowest_loss="12000,2000").lowest_loss_values == [12000, 2000]
    assert SelectionConfig(lowest_loss=" 3, 0.25").lowest_loss_values == [3, 0.25]
    assert SelectionConfig(lowest_loss=[3, 0.25]).lowest_loss == "3,0.25"
    assert SelectionConfig(lowest_loss=1.0).lowest_loss_values == [1.0]
    assert SelectionConfig(lowest_loss=1).lowest_loss_values == [1]
    for bad in ("1.5", "-2", "half", "0.5,", 2000.0):
        with pytest.raises(ValueError, match="lowest_loss"):
            SelectionConfig(lowest_loss=bad)
    with pytest.raises(ValueError, match="ti_source"):
        SelectionConfig(ti_source="test_set")
    with pytest.raises(ValueError, match="ti_num_images"):
        SelectionConfig(ti_num_images=0)


def test_config_is_a_cli():
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(SelectionConfig).parse_args_into_dataclasses(
        ["--lowest_loss", "12000,2000", "--ti_source", "validation_group", "--ti_validation_groups", "1", "2"]
    )
    assert config.lowest_loss_values == [12000, 2000]
    assert config.ti_validation_groups == [1, 2]


LOSSES = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05]
LABELS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_lowest_loss_count_per_class_is_exactly_the_smallest():
    data = scored(LOSSES, LABELS)
    selected = select_lowest_loss(data, SelectionConfig(lowest_loss="2"))
    # class a: 0.1 (img-001), 0.3 (img-003); class b: 0.05 (img-009), 0.2 (img-005)
    assert list(selected["example_id"]) == ["img-001", "img-003", "img-009", "img-005"]
    assert list(selected["label"]) == [0, 0, 1, 1]
    assert list(selected["target_label"]) == [1, 1, 0, 0]
    assert selected.features["target_label"] == ClassLabel(names=["a", "b"])
    assert selected.column_names == data.column_names + ["target_label"]


def test_lowest_loss_fraction_and_list_per_class():
    data = scored(LOSSES, LABELS)
    by_fraction = select_lowest_loss(data, SelectionConfig(lowest_loss="0.5"))  # 2.5 -> 3 of each class
    assert list(by_fraction["example_id"]) == ["img-001", "img-003", "img-002", "img-009", "img-005", "img-007"]
    per_class = select_lowest_loss(data, SelectionConfig(lowest_loss="1,0.4"))  # 1 of a, 2 of b
    assert list(per_class["example_id"]) == ["img-001", "img-009", "img-005"]
    nothing_of_b = select_lowest_loss(data, SelectionConfig(lowest_loss="1.0,0"))
    assert list(nothing_of_b["label"]) == [0] * 5
    with pytest.raises(ValueError, match="3 values"):
        select_lowest_loss(data, SelectionConfig(lowest_loss="1,2,3"))


def test_lowest_loss_ties_break_by_example_id():
    data = scored([0.2, 0.1, 0.1, 0.1], [0, 0, 0, 0], ids=["d", "c", "a", "b"])
    assert list(select_lowest_loss(data, SelectionConfig(lowest_loss="2,0"))["example_id"]) == ["a", "b"]


def test_lowest_loss_clips_a_large_count_and_names_an_empty_class():
    data = scored(LOSSES, LABELS)
    with pytest.warns(UserWarning, match="has 5"):
        selected = select_lowest_loss(data, SelectionConfig(lowest_loss="7,1"))
    assert list(selected["label"]) == [0] * 5 + [1]
    only_a = scored([0.3, 0.1], [0, 0], names=("a", "b", "c"))
    with pytest.raises(ValueError, match="class 'b' has no images"):
        select_lowest_loss(only_a, SelectionConfig(lowest_loss="1"))
    with pytest.raises(ValueError, match="score_dataset"):
        select_lowest_loss(data.remove_columns("erm_loss"), SelectionConfig())


def test_lowest_loss_with_three_classes_targets_every_other_class():
    data = scored([0.3, 0.1, 0.2, 0.4, 0.5, 0.6], [0, 0, 1, 1, 2, 2], names=("a", "b", "c"))
    selected = select_lowest_loss(data, SelectionConfig(lowest_loss="1"))
    assert list(selected["example_id"]) == ["img-001", "img-001", "img-002", "img-002", "img-004", "img-004"]
    assert list(selected["target_label"]) == [1, 2, 0, 2, 0, 1]


def test_textual_inversion_from_highest_training_losses():
    data = scored(LOSSES, LABELS)
    chosen = select_textual_inversion(data, None, SelectionConfig(ti_num_images=2))
    assert list(chosen["example_id"]) == ["img-000", "img-004", "img-006", "img-008"]
    with pytest.warns(UserWarning, match="fewer than the 6"):
        assert len(select_textual_inversion(data, None, SelectionConfig(ti_num_images=6))) == 10


def test_textual_inversion_from_a_validation_group():
    # groups: class a = 0 (3 images), 1 (2); class b = 2 (1), 3 (3); group 1 and 2 have the higher losses
    validation = scored(
        [0.1, 0.2, 0.1, 2.0, 1.5, 3.0, 0.3, 0.1, 0.2], [0, 0, 0, 0, 0, 1, 1, 1, 1],
        group=[0, 0, 0, 1, 1, 2, 3, 3, 3],
    )
    train = scored(LOSSES, LABELS)
    automatic = SelectionConfig(ti_source="validation_group", ti_num_images=2)
    with pytest.warns(UserWarning, match="validation group 2 of class 'b' has 1 images"):
        auto = select_textual_inversion(train, validation, automatic)
    assert list(auto["group"]) == [1, 1, 2]
    explicit = SelectionConfig(ti_source="validation_group", ti_num_images=2, ti_validation_groups=[0, 3], seed=1)
    chosen = select_textual_inversion(train, validation, explicit)
    assert list(chosen["group"]) == [0, 0, 3, 3]
    assert list(select_textual_inversion(train, validation, explicit)["example_id"]) == list(chosen["example_id"])
    with pytest.raises(ValueError, match="holds class"):
        wrong = SelectionConfig(ti_source="validation_group", ti_validation_groups=[2, 3])
        select_textual_inversion(train, validation, wrong)
    with pytest.raises(ValueError, match="ti_validation_groups"):
        select_textual_inversion(train, validation.remove_columns("erm_loss"), automatic)


def test_selection_purity_on_the_toy_benchmark(toy):
    train = toy["train"]
    majority = [g in (0, 3) for g in train["group"]]  # horizontal_bar/land, vertical_bar/water
    assert sum(majority) == 36
    # Minority images get the lowest losses, so 5 per class = the 2 minority + 3 majority images.
    losses = [1.0 + 0.01 * i if is_major else 0.0 for i, is_major in enumerate(majority)]
    selected = select_lowest_loss(train.add_column("erm_loss", losses), SelectionConfig(lowest_loss="5"))
    report = selection_purity(selected, train)
    assert report == {
        "horizontal_bar": {"selected": 5, "majority_group": "horizontal_bar/land", "majority_selected": 3,
                           "purity": pytest.approx(0.6), "train_majority_fraction": pytest.approx(0.9)},
        "vertical_bar": {"selected": 5, "majority_group": "vertical_bar/water", "majority_selected": 3,
                         "purity": pytest.approx(0.6), "train_majority_fraction": pytest.approx(0.9)},
    }
    with pytest.raises(ValueError, match="group labels"):
        selection_purity(selected.remove_columns("group"), train)
