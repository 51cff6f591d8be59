"""The stages run one at a time from the command line, reading and writing saved datasets."""

import json

import pytest
from datasets import load_from_disk

from dbb_hf.cli import main

TOY = ["--dataset", "toy", "--options", "num_train=96", "num_validation=32", "num_test=32", "correlation=0.9"]
CLASSIFIER = ["--classifier_model_name", "resnet10t", "--classifier_pretrained", "false",
              "--classifier_image_size", "32", "--classifier_crop_pct", "1.0"]
FAST = ["--train_num_epochs", "1", "--train_optimizer", "adam", "--train_augmentation", "none",
        "--train_num_workers", "0", "--train_train_batch_size", "32"]


def test_groups_json(capsys):
    assert main(["groups", *TOY, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["train"] == {"horizontal_bar/land": 43, "horizontal_bar/water": 5,
                               "vertical_bar/land": 5, "vertical_bar/water": 43}
    assert sum(counts["test"].values()) == 32


def test_unknown_command_and_option(capsys):
    assert main(["frobnicate"]) == 2
    with pytest.raises(ValueError, match="unknown"):
        main(["groups", "--dataset", "toy", "--options", "colour=red"])


def test_every_stage_from_the_command_line(tmp_path, capsys):
    erm = tmp_path / "erm"
    assert main(["erm", *TOY, *CLASSIFIER, *FAST, "--train_output_dir", str(erm)]) == 0
    model = str(erm / "model")
    capsys.readouterr()
    assert main(["evaluate", "--model", model, *TOY, "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["per_group_accuracy"]) == {"horizontal_bar/land", "horizontal_bar/water",
                                                  "vertical_bar/land", "vertical_bar/water"}

    scored, selected, masked, edits, pruned = (str(tmp_path / n) for n in ("scored", "selected", "masked", "edits", "pruned"))
    assert main(["score", "--model", model, *TOY, "--split", "train", "--output", scored]) == 0
    assert {"erm_loss", "erm_probs"} <= set(load_from_disk(scored).column_names)
    assert main(["select", "--input", scored, "--lowest_loss", "10", "--output", selected,
                 "--ti_output", str(tmp_path / "ti"), "--ti_num_images", "3"]) == 0
    assert len(load_from_disk(selected)) == 20
    assert len(load_from_disk(str(tmp_path / "ti"))) == 6
    assert main(["mask", "--input", selected, "--backend", "column", "--mask_column", "mask", "--output", masked]) == 0
    assert set(load_from_disk(masked)["mask_status"]) == {"ok"}
    assert main(["inpaint", "--input", masked, "--backend", "compose", "--output", edits]) == 0
    assert set(load_from_disk(edits)["generation_status"]) == {"ok"}
    assert main(["prune", "--input", edits, "--model", model, "--train_scores", scored, "--P", "0",
                 "--n_steps", "4", "--output", pruned]) == 0
    first = load_from_disk(pruned)
    assert {"psi", "rho", "keep", "prune_reason"} <= set(first.column_names)
    # Re-thresholding a scored set recomputes no integrated gradients: no --model needed.
    repruned = str(tmp_path / "repruned")
    assert main(["prune", "--input", pruned, "--P", "1e9", "--output", repruned]) == 0
    second = load_from_disk(repruned)
    assert second["rho"] == first["rho"] and not any(second["keep"])
    assert all("rho<=P" in r for r in second["prune_reason"])
