"""More than two classes end to end: the three-class toy world (bars and squares on land,
water and sand), the pipeline with the compose generator, and a recipe through every stage
(textual inversion, GroundingDINO + SAM, diffusion inpainting, integrated-gradient pruning,
upweighted retraining) with tiny models; each image is masked once, not once per target."""

import json

import numpy as np
import pytest

import dbb_hf.pipeline as pipeline_module
from dbb_hf.cli import run_pipeline
from dbb_hf.config import load_yaml
from dbb_hf.data import group_counts, load_benchmark
from dbb_hf.presets import DEMO_PRESET
from dbb_hf.recipes import run_recipe
from dbb_hf.stages import load_run_stage

# Whole runs: a few minutes on an idle 2-core machine, more on a busy one.
pytestmark = pytest.mark.timeout(2400)

DIRECTIONS = {f"{a}->{b}" for a in ("horizontal_bar", "vertical_bar", "square")
              for b in ("horizontal_bar", "vertical_bar", "square") if a != b}


def test_the_three_class_world():
    toy = load_benchmark("toy", num_classes=3, num_train=300, num_validation=90, num_test=90, correlation=0.9)
    assert toy["train"].features["label"].names == ["horizontal_bar", "vertical_bar", "square"]
    assert toy["train"].features["spurious"].names == ["land", "water", "sand"]
    train = group_counts(toy)["train"]
    assert train == {"horizontal_bar/land": 90, "horizontal_bar/water": 5, "horizontal_bar/sand": 5,
                     "vertical_bar/land": 5, "vertical_bar/water": 90, "vertical_bar/sand": 5,
                     "square/land": 5, "square/water": 5, "square/sand": 90}
    assert set(group_counts(toy)["test"].values()) == {10}  # balanced over the nine groups
    # A square is as wide as it is tall; its mask is the object.
    squares = toy["train"].filter(lambda y: y == 2, input_columns="label").select(range(5))
    for mask in squares["mask"]:
        ys, xs = np.nonzero(np.asarray(mask))
        assert ys.max() - ys.min() == xs.max() - xs.min()
    again = load_benchmark("toy", num_classes=3, num_train=300, num_validation=90, num_test=90, correlation=0.9)
    assert np.array_equal(np.asarray(toy["test"][7]["image"]), np.asarray(again["test"][7]["image"]))


def _count_masked_rows(monkeypatch):
    calls = []
    real = pipeline_module.run_masking

    def counting(dataset, *args, **kwargs):
        calls.append(len(dataset))
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "run_masking", counting)
    return calls


def _check_run(out, report, masked_calls):
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["counts"]) == DIRECTIONS
    assert len(saved["retrained"]["per_group_accuracy"]) == 9
    pruned = load_run_stage(out, "pruning")
    images = len(set(pruned["example_id"]))
    assert len(pruned) == 2 * images  # one row per (image, other class)
    assert masked_calls == [images]  # each image masked once
    masks = {}
    for example_id, mask in zip(pruned["example_id"], pruned["mask"]):
        masks.setdefault(example_id, []).append(np.asarray(mask))
    assert all(np.array_equal(*pair) for pair in masks.values())  # both rows of an image share its mask
    for example_id, targets in _targets(pruned).items():
        assert len(targets) == 2 and len(set(targets)) == 2
    augmented = load_run_stage(out, "augmented")
    assert set(augmented["synthetic"]["label"]) <= {0, 1, 2}
    return saved


def _targets(pruned):
    targets = {}
    for example_id, label, target in zip(pruned["example_id"], pruned["label"], pruned["target_label"]):
        assert label != target
        targets.setdefault(example_id, []).append(target)
    return targets


def test_the_pipeline_runs_three_classes_end_to_end(tmp_path, monkeypatch):
    calls = _count_masked_rows(monkeypatch)
    out = tmp_path / "run"
    report = run_pipeline([
        "--output_dir", str(out), "--options", "num_classes=3", "num_train=240", "num_validation=90",
        "num_test=90", "correlation=0.9", "--erm_num_epochs", "1", "--retraining_num_epochs", "1",
        "--erm_train_batch_size", "32", "--retraining_train_batch_size", "32", "--retraining_gammas", "3", "3", "3",
        "--pruning_n_steps", "4", "--num_grid_examples", "3", "--shard_size", "64",
    ], defaults=load_yaml(DEMO_PRESET))
    saved = _check_run(out, report, calls)
    assert saved["synthetic_rows"] > 0
    for model in ("erm", "retrained"):
        assert 0.0 <= report[model]["worst_group_accuracy"] <= report[model]["average_accuracy"] <= 1.0


def test_a_recipe_runs_three_classes_through_every_stage(tmp_path, monkeypatch):
    calls = _count_masked_rows(monkeypatch)
    out = tmp_path / "recipe"
    assert run_recipe(DEMO_PRESET, [
        "--preset", "tiny", "--output_dir", str(out), "--options", "num_classes=3", "num_train=60",
        "num_validation=27", "num_test=27", "--retraining_gammas", "1", "1", "1",
    ]) == 0
    report = json.loads((out / "report.json").read_text())
    _check_run(out, report, calls)
    assert report["models"]["inpainting"]["backend"] == "diffusers"
    assert report["models"]["masking"]["backend"] == "grounded_sam"
    assert len(report["tokens"]) == 3  # one textual-inversion token per class
    generated = load_run_stage(out, "generation")
    assert set(generated["generator"]) == {f"diffusers:{report['models']['inpainting']['id']}@"
                                           f"{report['models']['inpainting']['revision']}"}
