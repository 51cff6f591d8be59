"""The stages run one at a time from the command line, reading and writing saved datasets,
with the pipeline's own flag names and YAML files."""

import json
import re

import numpy as np
import pytest
import yaml
from datasets import load_from_disk

from dbb_hf.augmented import load_augmented, thresholds
from dbb_hf.cli import COMMANDS, main
from dbb_hf.config import DataConfig
from dbb_hf.data import benchmark_config
from dbb_hf.pruning import class_confidence
from run_folders import FULL_REPORT, make_run

TOY = ["--dataset", "toy", "--options", "num_train=96", "num_validation=32", "num_test=32", "correlation=0.9"]
CLASSIFIER = ["--classifier_model_name", "resnet10t", "--classifier_pretrained", "false",
              "--classifier_image_size", "32", "--classifier_crop_pct", "1.0"]


def fast(section):
    return [f"--{section}_num_epochs", "1", f"--{section}_optimizer", "adam", f"--{section}_augmentation", "none",
            f"--{section}_num_workers", "0", f"--{section}_train_batch_size", "32"]


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


def test_the_plain_flags_of_before_name_the_flag_to_use():
    with pytest.raises(ValueError, match=r"--backend: did you mean --masking_backend\?"):
        main(["mask", "--input", "x", "--backend", "column"])
    with pytest.raises(ValueError, match=r"--P: did you mean --pruning_P\?"):
        main(["prune", "--input", "x", "--P", "2"])
    with pytest.raises(ValueError, match=r"--train_num_epochs: did you mean --erm_num_epochs\?"):
        main(["erm", "--train_num_epochs", "1"])


def test_the_options_help_example_is_a_real_option():
    help_text = next(f.metadata["help"] for f in DataConfig.__dataclass_fields__.values() if f.name == "options")
    example = re.findall(r"(\w+=\w+)", help_text.split("e.g.", 1)[1])
    assert example and "split_by_identity=true" in example
    # Every key=value of the example is a field of the CelebA loader's config.
    config = benchmark_config("celeba", "/data/celeba", **DataConfig(options=example).option_dict())
    assert config.split_by_identity is True and config.target_attribute == "Blond_Hair"


# The section whose every field each stage command takes as --<section>_<field>.
COMMAND_SECTIONS = {
    "erm": ["classifier", "erm"], "select": ["selection"], "learn-tokens": ["textual_inversion", "masking"],
    "mask": ["masking"], "inpaint": ["inpainting"], "prune": ["pruning"], "augment": ["pruning"],
    "retrain": ["classifier", "retraining"],
    "run": ["classifier", "erm", "selection", "textual_inversion", "masking", "inpainting", "pruning", "retraining"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_flag_of_the_command(name, capsys):
    from dbb_hf.pipeline import SECTIONS

    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--config CONFIG" in text and "--preset PRESET" in text
    for section in COMMAND_SECTIONS.get(name, []):
        for field in SECTIONS[section].__dataclass_fields__.values():
            if field.init:
                assert f"--{section}_{field.name} " in text, (name, section, field.name)


def _write_yaml(path, sections):
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def test_a_stage_command_reads_a_whole_recipe_yaml_and_flags_override_it(tmp_path):
    toy = tmp_path / "toy"
    train = DataConfig(options=["num_train=8", "num_validation=4", "num_test=4"]).load()["train"]
    train.rename_column("mask", "truth").save_to_disk(str(toy))
    # A recipe's YAML holds every section; mask reads masking and run.class_prompts, the rest is checked only.
    recipe = _write_yaml(tmp_path / "recipe.yaml", {
        "data": {"dataset": "toy"}, "run": {"output_dir": str(tmp_path / "run"), "class_prompts": ["bar", "bar"]},
        "erm": {"num_epochs": 3}, "pruning": {"P": [1.0, 2.0]},
        "masking": {"backend": "column", "mask_column": "truth", "dilation": 1},
    })
    plain, dilated = str(tmp_path / "plain"), str(tmp_path / "dilated")
    # Without the YAML the default backend (grounded_sam) would load GroundingDINO from the Hub.
    assert main(["mask", "--config", recipe, "--input", str(toy), "--masking_dilation", "0", "--output", plain]) == 0
    assert main(["mask", "--config", recipe, "--input", str(toy), "--output", dilated]) == 0
    source, plain, dilated = load_from_disk(str(toy)), load_from_disk(plain), load_from_disk(dilated)
    for row_source, row_plain, row_dilated in zip(source, plain, dilated):
        truth = np.asarray(row_source["truth"]) > 127
        assert np.array_equal(np.asarray(row_plain["mask"]) > 127, truth)  # the flag won over the YAML
        assert (np.asarray(row_dilated["mask"]) > 127).sum() > truth.sum()  # the YAML's dilation 1

    with pytest.raises(ValueError, match=r"bad\.yaml: unknown field\(s\) \['dilatoin'\] in section 'masking'"):
        main(["mask", "--config", _write_yaml(tmp_path / "bad.yaml", {"masking": {"dilatoin": 2}}), "--input", str(toy)])
    with pytest.raises(ValueError, match=r"bad2\.yaml: unknown config section 'maskng'"):
        main(["mask", "--config", _write_yaml(tmp_path / "bad2.yaml", {"maskng": {"dilation": 2}}), "--input", str(toy)])


def test_mask_keeps_the_datasets_own_mask_as_source_mask_as_the_pipeline_does(tmp_path):
    toy = tmp_path / "toy"
    DataConfig(options=["num_train=8", "num_validation=4", "num_test=4"]).load()["train"].save_to_disk(str(toy))
    out = str(tmp_path / "masked")
    # The toy's ground-truth `mask` would be overwritten: it is kept as source_mask and read from there.
    assert main(["mask", "--input", str(toy), "--masking_backend", "column", "--masking_mask_column", "mask",
                 "--masking_dilation", "1", "--output", out]) == 0
    source, masked = load_from_disk(str(toy)), load_from_disk(out)
    assert "source_mask" in masked.column_names and len(masked) == len(source)
    for row_source, row in zip(source, masked):
        truth = np.asarray(row_source["mask"])
        assert np.array_equal(np.asarray(row["source_mask"]), truth)
        assert (np.asarray(row["mask"]) > 127).sum() > (truth > 127).sum()  # grown by the dilation


def test_every_stage_from_the_command_line_then_augment_retrain_and_run_on_the_result(tmp_path, capsys):
    erm = tmp_path / "erm"
    assert main(["erm", *TOY, *CLASSIFIER, *fast("erm"), "--erm_output_dir", str(erm)]) == 0
    model = str(erm / "model")
    capsys.readouterr()
    assert main(["evaluate", "--model", model, *TOY, "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["per_group_accuracy"]) == {"horizontal_bar/land", "horizontal_bar/water",
                                                  "vertical_bar/land", "vertical_bar/water"}

    scored, selected, masked, edits, pruned = (str(tmp_path / n) for n in ("scored", "selected", "masked", "edits", "pruned"))
    assert main(["score", "--model", model, *TOY, "--split", "train", "--output", scored]) == 0
    assert {"erm_loss", "erm_probs"} <= set(load_from_disk(scored).column_names)
    assert main(["select", "--input", scored, "--selection_lowest_loss", "10", "--output", selected,
                 "--ti_output", str(tmp_path / "ti"), "--selection_ti_num_images", "3"]) == 0
    assert len(load_from_disk(selected)) == 20
    assert len(load_from_disk(str(tmp_path / "ti"))) == 6
    assert main(["mask", "--input", selected, "--masking_backend", "column", "--masking_mask_column", "mask",
                 "--output", masked]) == 0
    assert set(load_from_disk(masked)["mask_status"]) == {"ok"}
    assert main(["inpaint", "--input", masked, "--inpainting_backend", "compose", "--output", edits]) == 0
    assert set(load_from_disk(edits)["generation_status"]) == {"ok"}
    assert main(["prune", "--input", edits, "--model", model, "--train_scores", scored, "--pruning_P", "0",
                 "--pruning_n_steps", "4", "--output", pruned]) == 0
    first = load_from_disk(pruned)
    assert {"psi", "rho", "keep", "prune_reason"} <= set(first.column_names)
    # Re-thresholding a scored set recomputes no integrated gradients: no --model needed.
    repruned = str(tmp_path / "repruned")
    assert main(["prune", "--input", pruned, "--pruning_P", "1e9", "--output", repruned]) == 0
    second = load_from_disk(repruned)
    assert second["rho"] == first["rho"] and not any(second["keep"])
    assert all("rho<=P" in r for r in second["prune_reason"])
    # Every edit kept: rho > -1e9 always, and no psi rule.
    keep_all = ["--pruning_P=-1e9", "--pruning_psi_rule", "false"]
    everything = str(tmp_path / "everything")
    assert main(["prune", "--input", pruned, *keep_all, "--output", everything]) == 0
    assert all(load_from_disk(everything)["keep"])

    # augment: the augmented dataset from prune's output and the benchmark's splits.
    augmented_dir = str(tmp_path / "augmented")
    with pytest.raises(SystemExit, match=r"20 of 20 rows .* were not pruned with --pruning_P \[1000000000.0\]"):
        main(["augment", "--input", everything, *TOY, "--pruning_P", "1e9", "--output", augmented_dir])
    assert main(["augment", "--input", everything, *TOY, *keep_all, "--output", augmented_dir]) == 0
    augmented = load_augmented(augmented_dir)
    assert {split: len(ds) for split, ds in augmented.items()} == {"train": 96, "synthetic": 20, "validation": 32, "test": 32}
    synthetic = augmented["synthetic"]
    edited = load_from_disk(everything)
    assert synthetic["label"] == edited["target_label"] and synthetic["source_label"] == edited["label"]
    assert synthetic["P"] == [-1e9] * 20 and synthetic["psi_threshold"] == edited["psi_threshold"]
    Psi = class_confidence(load_from_disk(scored))
    recorded = thresholds(augmented)
    assert recorded["Psi"] == pytest.approx(Psi, abs=1e-6) and recorded["P"] == [-1e9, -1e9]
    assert recorded["generators"] == ["compose"]

    # retrain: upweighted retraining, evaluated on test, with the report of `run`.
    retrained = tmp_path / "retrained"
    capsys.readouterr()
    assert main(["retrain", "--augmented", augmented_dir, "--erm_model", model, *CLASSIFIER, *fast("retraining"),
                 "--retraining_gammas", "1", "1", "--retraining_output_dir", str(retrained)]) == 0
    out = capsys.readouterr().out  # the epochs' lines, then the command's JSON
    printed = json.loads(out[out.index('{\n  "model_dir"'):])
    assert (retrained / "model" / "model.safetensors").exists()
    report = json.loads((retrained / "report.json").read_text())
    assert printed["test"]["retrained"] == report["retrained"]
    for name in ("erm", "retrained"):
        assert 0.0 <= report[name]["worst_group_accuracy"] <= report[name]["average_accuracy"] <= 1.0
    assert report["gain_worst_group_accuracy"] == pytest.approx(
        report["retrained"]["worst_group_accuracy"] - report["erm"]["worst_group_accuracy"])
    assert report["counts"] is None and report["synthetic_rows"] == 20
    assert report["Psi"] == pytest.approx(Psi, abs=1e-6) and report["P"] == [-1e9, -1e9]
    assert report["models"]["inpainting"] == {"generators": ["compose"]}
    markdown = (retrained / "report.md").read_text()
    assert "| erm |" in markdown and "| retrained |" in markdown and "## retrained: test accuracy per group" in markdown
    assert "P (per target class): [-1000000000.0, -1000000000.0]" in markdown

    # run with --augmented_dataset reports the thresholds the given set was pruned with, not its own config.
    run_dir = tmp_path / "run"
    assert main(["run", *TOY, *CLASSIFIER, *fast("retraining"), "--retraining_gammas", "1", "1",
                 "--erm_model", model, "--augmented_dataset", augmented_dir, "--output_dir", str(run_dir)]) == 0
    run_report = json.loads((run_dir / "report.json").read_text())
    assert run_report["Psi"] == pytest.approx(Psi, abs=1e-6) and run_report["P"] == [-1e9, -1e9]
    assert run_report["thresholds_from"] == f"the given augmented dataset {augmented_dir}"
    assert run_report["models"]["inpainting"] == {"generators": ["compose"]}
    assert "P (per target class): [-1000000000.0, -1000000000.0]" in (run_dir / "report.md").read_text()

    # A set that does not record its thresholds reports them as unknown; a class without edits has none.
    bare = tmp_path / "bare"
    augmented.remove_columns(["psi_threshold", "P"]).save_to_disk(str(bare))
    assert main(["retrain", "--augmented", str(bare), *CLASSIFIER, *fast("retraining"),
                 "--retraining_output_dir", str(tmp_path / "retrained-bare")]) == 0
    bare_report = json.loads((tmp_path / "retrained-bare" / "report.json").read_text())
    assert bare_report["Psi"] is None and bare_report["P"] is None and bare_report["erm"] is None
    markdown = (tmp_path / "retrained-bare" / "report.md").read_text()
    assert "Psi (per source class): unknown; P (per target class): unknown" in markdown
    assert "Worst-group gain: n/a." in markdown and "| erm |" not in markdown
    one_way = augmented.copy()
    one_way["synthetic"] = augmented["synthetic"].filter(lambda s: s == 0, input_columns="source_label")
    assert thresholds(one_way)["Psi"] == [pytest.approx(Psi[0], abs=1e-6), None]
    assert thresholds(one_way)["P"] == [None, -1e9]


def test_push_publishes_the_run_named_by_output_dir(tmp_path, capsys):
    run = make_run(tmp_path / "run", embedding_dim=None, report=FULL_REPORT)
    assert main(["push", "--output_dir", str(run), "--to_folder", str(tmp_path / "out"), "--hub_namespace", "me"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dataset", "model"]
    printed = capsys.readouterr().out
    assert f"dataset: {tmp_path / 'out' / 'dataset'}" in printed
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "me/toy-dbb" in card  # the namespace reached the cards
    with pytest.raises(ValueError, match="namespace"):
        main(["push", "--output_dir", str(run)])
