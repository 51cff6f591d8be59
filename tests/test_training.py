import json
import math
import shutil

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.modeling import ClassifierConfig, load_classifier
from dbb_hf.training import REAL, TrainingConfig, dbb_loss, evaluate_split, train_classifier, with_directions

CLASSIFIER = ClassifierConfig("resnet10t", pretrained=False, image_size=32, crop_pct=1.0)


def test_dbb_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0], [0.5, 0.0]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    direction = torch.tensor([REAL, REAL, 1, 1, 0])
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(4)),
          math.log(1 + math.exp(-0.5))]
    gammas = [2.0, 7.0]
    expected = sum(ce) / 5 + 2.0 * ce[4] + 7.0 * (ce[2] + ce[3]) / 2
    assert dbb_loss(logits, labels, direction, gammas).item() == pytest.approx(expected, rel=1e-6)


def test_dbb_loss_direction_absent_from_batch_contributes_zero():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    plain = dbb_loss(logits, labels, torch.tensor([REAL, REAL]), None)
    assert dbb_loss(logits, labels, torch.tensor([REAL, REAL]), [5.0, 5.0]).item() == pytest.approx(plain.item())
    only_one = dbb_loss(logits, labels, torch.tensor([REAL, 1]), [5.0, 3.0])
    ce1 = math.log(1 + math.exp(-1))
    assert only_one.item() == pytest.approx(plain.item() + 3.0 * ce1, rel=1e-6)


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=64, num_validation=16, num_test=16, seed=1))


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), num_epochs=2, train_batch_size=16, eval_batch_size=16, optimizer="adam",
                learning_rate=1e-3, augmentation="none", num_workers=0, seed=0)
    base.update(kw)
    return TrainingConfig(**base)


def test_erm_trains_saves_and_evaluates(toy, tmp_path):
    result = train_classifier(toy["train"], toy["validation"], CLASSIFIER, _config(tmp_path / "erm"))
    assert len(result.history) == 2
    assert result.best_epoch in (1, 2)
    best = max(result.history, key=lambda r: r["worst_group_accuracy"])
    assert result.best_validation["worst_group_accuracy"] == best["worst_group_accuracy"]
    # The saved folder is timm's Hub format: it loads without dbb_hf.
    model = timm.create_model(f"local-dir:{result.model_dir}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == ["horizontal_bar", "vertical_bar"]
    assert model.pretrained_cfg["input_size"] == [3, 32, 32] or tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)
    metrics = evaluate_split(load_classifier(result.model_dir), toy["validation"])
    assert metrics["worst_group_accuracy"] == pytest.approx(result.best_validation["worst_group_accuracy"])
    assert set(metrics["per_group_accuracy"]) == {"horizontal_bar/land", "horizontal_bar/water",
                                                  "vertical_bar/land", "vertical_bar/water"}
    meta = json.loads((tmp_path / "erm" / "model" / "dbb_hf.json").read_text())
    assert meta["best_epoch"] == result.best_epoch


def test_resume_after_a_crash_matches_an_uninterrupted_run(toy, tmp_path):
    straight = train_classifier(toy["train"], toy["validation"], CLASSIFIER, _config(tmp_path / "a"))
    # A run killed during epoch 2 leaves only the epoch-1 checkpoint behind.
    shutil.copytree(tmp_path / "a" / "checkpoints" / "epoch_1", tmp_path / "b" / "checkpoints" / "epoch_1")
    resumed = train_classifier(toy["train"], toy["validation"], CLASSIFIER, _config(tmp_path / "b"))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history == straight.history
    wa = load_file(f"{tmp_path}/a/checkpoints/epoch_2/model.safetensors")
    wb = load_file(f"{tmp_path}/b/checkpoints/epoch_2/model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)
    # A checkpoint without its trainer state (killed while saving) is ignored.
    (tmp_path / "c" / "checkpoints" / "epoch_1").mkdir(parents=True)
    fresh = train_classifier(toy["train"], toy["validation"], CLASSIFIER, _config(tmp_path / "c", num_epochs=1))
    assert [r["epoch"] for r in fresh.history] == [1]
    # A finished run returns at once with the same result.
    again = train_classifier(toy["train"], toy["validation"], CLASSIFIER, _config(tmp_path / "b"))
    assert again.history == resumed.history


def test_upweighted_training_takes_synthetic_rows(toy, tmp_path):
    synthetic = toy["train"].select(range(8))
    synthetic = synthetic.map(lambda r: {"label": 1 - r["label"]})
    mixed = with_directions(toy["train"], synthetic)
    assert len(mixed) == len(toy["train"]) + 8
    directions = np.asarray(mixed["direction"])
    assert (directions[: len(toy["train"])] == REAL).all()
    assert directions[len(toy["train"]):].tolist() == synthetic["label"]
    result = train_classifier(toy["train"], toy["validation"], CLASSIFIER,
                              _config(tmp_path / "up", num_epochs=1, gammas=[2.0, 3.0]), synthetic=synthetic)
    assert result.best_epoch == 1


def test_gammas_need_one_per_class(toy, tmp_path):
    with pytest.raises(ValueError, match="gammas"):
        train_classifier(toy["train"], toy["validation"], CLASSIFIER, _config(tmp_path, gammas=[1.0]),
                         synthetic=toy["train"].select(range(2)))


@pytest.mark.parametrize("kwargs", [{"optimizer": "lbfgs"}, {"num_epochs": 0}, {"gammas": [-1.0]}])
def test_bad_training_config(kwargs):
    with pytest.raises(ValueError):
        TrainingConfig(**kwargs)
