import numpy as np
import pytest

from dbb_hf.data.common import group_counts
from dbb_hf.data.toy import LABEL_NAMES, SPURIOUS_NAMES, ToyConfig, load_toy


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=200, num_validation=40, num_test=80, correlation=0.9, seed=3))


def test_splits_features_and_sizes(toy):
    assert set(toy) == {"train", "validation", "test"}
    assert [len(toy[s]) for s in ("train", "validation", "test")] == [200, 40, 80]
    features = toy["train"].features
    assert features["label"].names == LABEL_NAMES
    assert features["spurious"].names == SPURIOUS_NAMES
    for column in ("image", "label", "spurious", "group", "example_id", "mask"):
        assert column in features
    assert len(set(toy["train"]["example_id"])) == 200


def test_correlation_strength_in_train_and_balanced_eval(toy):
    counts = group_counts(toy)
    # 100 images per class, 90 of them on the majority background.
    assert counts["train"] == {
        "horizontal_bar/land": 90, "horizontal_bar/water": 10, "vertical_bar/land": 10, "vertical_bar/water": 90,
    }
    assert set(counts["validation"].values()) == {10}
    assert set(counts["test"].values()) == {20}


def test_group_formula(toy):
    ds = toy["train"]
    for label, spurious, group in zip(ds["label"], ds["spurious"], ds["group"]):
        assert group == label * 2 + spurious


def test_masks_are_binary_and_cover_the_bar(toy):
    for row in toy["train"].select(range(20)):
        mask = np.asarray(row["mask"])
        assert mask.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 255}
        ys, xs = np.nonzero(mask)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # a filled rectangle
        if row["label"] == 0:
            assert width > height  # horizontal bar
        else:
            assert height > width
        image = np.asarray(row["image"])
        inside = image[mask > 0]
        assert (inside == inside[0]).all()  # one colour per bar


def test_deterministic_for_a_seed():
    a = load_toy(ToyConfig(num_train=12, num_validation=4, num_test=4, seed=7))
    b = load_toy(ToyConfig(num_train=12, num_validation=4, num_test=4, seed=7))
    c = load_toy(ToyConfig(num_train=12, num_validation=4, num_test=4, seed=8))
    for split in a:
        assert a[split]["label"] == b[split]["label"]
        for x, y in zip(a[split]["image"], b[split]["image"]):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    assert any(
        not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["train"]["image"], c["train"]["image"])
    )


@pytest.mark.parametrize("kwargs", [{"correlation": 1.5}, {"image_size": 4}, {"num_train": 2}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        ToyConfig(**kwargs)
