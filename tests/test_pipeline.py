"""The whole method end to end on small toy configurations: a real gain, resuming after a
crash in the middle of generation, reuse of finished stages, and the report."""

import json
import shutil

import numpy as np
import pytest
from datasets import load_from_disk

import dbb_hf.inpainting as inpainting
from dbb_hf.augmented import load_augmented
from dbb_hf.cli import run_pipeline
from dbb_hf.errors import DatasetFormatError
from dbb_hf.config import load_yaml
from dbb_hf.presets import DEMO_PRESET
from dbb_hf.stages import load_run_stage

SMALL = [
    "--options", "num_train=600", "num_validation=200", "num_test=200", "correlation=0.98",
    "--erm_num_epochs", "3", "--retraining_num_epochs", "3", "--erm_train_batch_size", "32",
    "--retraining_train_batch_size", "32", "--shard_size", "32", "--inpainting_batch_size", "32",
    "--pruning_n_steps", "4", "--num_grid_examples", "4",
]


def _run(out, *extra):
    return run_pipeline(["--output_dir", str(out), *SMALL, *extra], defaults=load_yaml(DEMO_PRESET))


def _rows(dataset):
    return sorted(zip(dataset["example_id"], dataset["label"], dataset["source_example_id"]))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, _run(out)


def test_run_writes_every_artifact(finished):
    out, report = finished
    for name in ("config.yaml", "report.json", "report.md", "grid.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "report.json").read_text())
    for model in ("erm", "retrained"):
        assert 0.0 <= saved[model]["worst_group_accuracy"] <= saved[model]["average_accuracy"] <= 1.0
        assert set(saved[model]["per_group_accuracy"]) == {
            "horizontal_bar/land", "horizontal_bar/water", "vertical_bar/land", "vertical_bar/water"}
    augmented = load_augmented(out)
    assert set(augmented) == {"train", "synthetic", "validation", "test"}
    assert len(augmented["train"]) == 600
    synthetic = augmented["synthetic"]
    assert len(synthetic) == sum(c["kept"] for c in saved["counts"].values())
    for column in ("source_label", "source_example_id", "prompt", "seed", "generator", "psi", "rho", "keep"):
        assert column in synthetic.column_names
    assert all(synthetic["keep"])
    assert synthetic["label"] == [1 - s for s in synthetic["source_label"]]  # edits carry their NEW label
    # Every selected row is accounted for: kept, pruned or failed, with the reason (the
    # pruning folder holds the verdicts by row key).
    pruned = load_from_disk(str(out / "pruning"))
    assert len(pruned) == sum(c["selected"] for c in saved["counts"].values()) == 300
    reasons = pruned["prune_reason"]
    assert all((r == "") == k for r, k in zip(reasons, pruned["keep"]))
    config = (out / "config.yaml").read_text()
    assert "num_train=600" in config and "retraining" in config


def test_stage_folders_hold_one_copy_of_the_source_images(finished):
    out, _ = finished
    keys = ["example_id", "target_label"]
    # Each stage folder: the row keys and the columns that stage wrote, no image it did not make.
    assert load_from_disk(str(out / "masks")).column_names == [*keys, "mask", "mask_box", "mask_score", "mask_status"]
    assert load_from_disk(str(out / "generation")).column_names == [
        *keys, "generated", "generated_mask", "prompt", "seed", "generator", "generation_status", "donor_example_id"]
    assert load_from_disk(str(out / "pruning")).column_names == [
        *keys, "psi", "rho", "psi_threshold", "ig_target", "score_status", "keep", "prune_reason"]
    # augmented/ holds the edits; its real splits are the data stage's, read from ../data.
    assert list(load_from_disk(str(out / "augmented"))) == ["synthetic"]
    info = json.loads((out / "augmented" / "stage.json").read_text())
    assert info["real_splits"] == {"path": "../data", "fingerprint": json.loads((out / "data" / "stage.json").read_text())[
        "fingerprint"]}
    data, synthetic = load_from_disk(str(out / "data")), load_from_disk(str(out / "augmented"))["synthetic"]
    for source in (out, out / "augmented"):
        augmented = load_augmented(source)
        assert list(augmented) == ["train", "synthetic", "validation", "test"]
        for split in ("train", "validation", "test"):
            assert augmented[split]["example_id"] == data[split]["example_id"]
            assert augmented[split]["image"][:3] == data[split]["image"][:3]
        assert augmented["synthetic"]["example_id"] == synthetic["example_id"]
        # One schema for every split, as a Hub dataset has: the real rows get null edit columns.
        assert augmented["train"].features == augmented["synthetic"].features
        assert augmented["train"]["psi"][:2] == [None, None]
    # Without the data stage it was made from, the error says so and what to do.
    moved = out.parent / f"{out.name}-augmented-only"
    shutil.copytree(out / "augmented", moved / "augmented")
    with pytest.raises(DatasetFormatError, match=r"holds only the synthetic split .*data.* is missing\. Rerun"):
        load_augmented(moved)


def test_a_run_stage_loads_whole_from_its_own_columns_and_its_input(finished, tmp_path):
    out, _ = finished
    data, selection = load_from_disk(str(out / "data")), load_from_disk(str(out / "selection"))
    pruned = load_run_stage(out, "pruning")
    # The pruning stage's rows are the selection's, in order, with every later stage's columns
    # joined: the selection's own columns in place (the column backend copies its mask), then
    # the edit and the verdict. (The renamed source_mask path: tests/test_demo_diffusion.py.)
    assert pruned["example_id"] == selection["example_id"] and pruned["target_label"] == selection["target_label"]
    assert pruned.column_names[:len(selection.column_names)] == selection.column_names
    assert {"generated", "prompt", "rho", "keep"} <= set(pruned.column_names) - set(selection.column_names)
    assert pruned["image"][:3] == selection["image"][:3] and pruned["mask"][:3] == selection["mask"][:3]
    assert pruned["keep"] == load_from_disk(str(out / "pruning"))["keep"]
    generated = load_run_stage(out, "generation")
    assert generated["generated"][:3] == pruned["generated"][:3] and "rho" not in generated.column_names
    scores = load_run_stage(out, "scores")
    assert scores["example_id"] == data["train"]["example_id"] and len(scores["erm_loss"]) == len(data["train"])
    assert list(load_run_stage(out, "augmented")) == ["train", "synthetic", "validation", "test"]
    # A stage whose input was since replaced (a rerun stopped between two stages) is refused, saying so.
    stale = tmp_path / "stale"
    shutil.copytree(out, stale)
    info = json.loads((stale / "generation" / "stage.json").read_text())
    (stale / "generation" / "stage.json").write_text(json.dumps({**info, "fingerprint": "another"}))
    with pytest.raises(ValueError, match=r"pruning keeps only its own columns, joined to the rows of .*generation.* "
                                         r"now holds stage another: rerun"):
        load_run_stage(stale, "pruning")
    with pytest.raises(ValueError, match=r"retrained holds no dataset: stage 'retrained' saves a model"):
        load_run_stage(stale, "retrained")
    shutil.rmtree(stale / "masks")
    with pytest.raises(FileNotFoundError, match=r"masks is not a finished stage of a run folder"):
        load_run_stage(stale, "masks")


def test_the_method_repairs_the_shortcut(finished):
    # ERM leans on the background (98 % correlated in training); the edits break the
    # shortcut and the upweighted retraining recovers the minority groups.
    _, report = finished
    assert report["retrained"]["worst_group_accuracy"] >= report["erm"]["worst_group_accuracy"] + 0.1


def test_rerun_reuses_every_stage(finished):
    out, first = finished
    grid_written = (out / "grid.png").stat().st_mtime_ns
    report = _run(out)
    assert {"data", "scores", "selection", "masks", "generation", "pruning", "augmented", "erm", "retrained",
            "evaluation"} <= set(report["reused_stages"])
    assert (out / "grid.png").stat().st_mtime_ns == grid_written  # the pictures are not drawn again
    for model in ("erm", "retrained"):
        assert report[model] == first[model]


def test_a_moved_run_folder_is_reused(finished, tmp_path):
    out = tmp_path / "moved"
    shutil.copytree(finished[0], out)
    report = _run(out)
    assert {"erm", "generation", "pruning", "retrained", "evaluation"} <= set(report["reused_stages"])


def test_changed_threshold_recomputes_only_downstream(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    report = _run(out, "--pruning_P", "0.5", "--retraining_num_epochs", "1")
    assert {"scores", "selection", "masks", "generation"} <= set(report["reused_stages"])
    assert "pruning" not in report["reused_stages"] and "retrained" not in report["reused_stages"]


def test_killed_during_generation_resumes_to_the_same_augmented_set(finished, tmp_path, monkeypatch):
    reference, _ = finished
    out = tmp_path / "crashed"
    real = inpainting.compose_batch
    calls = {"n": 0}

    def crash_after_two_shards(batch, **kwargs):  # one call per shard of 32 rows
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("killed")
        return real(batch, **kwargs)

    monkeypatch.setattr(inpainting, "compose_batch", crash_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        _run(out, "--erm_model", str(reference / "erm" / "model"), "--retraining_num_epochs", "1")
    finished_shards = list((out / "generation" / "shards").glob("*/0000*"))
    assert len(finished_shards) == 2
    calls["n"] = -1000  # no more crashes; count what the rerun still has to do
    _run(out, "--erm_model", str(reference / "erm" / "model"), "--retraining_num_epochs", "1")
    assert calls["n"] == -1000 + 10 - 2  # 300 rows = 10 shards: only the 8 unfinished ones were generated
    a = load_from_disk(str(reference / "augmented"))["synthetic"]
    b = load_from_disk(str(out / "augmented"))["synthetic"]
    assert len(set(b["example_id"])) == len(b)  # no duplicates
    assert _rows(a) == _rows(b)
    for x, y in zip(a.select(range(min(5, len(a))))["image"], b.select(range(min(5, len(b))))["image"]):
        assert np.array_equal(np.asarray(x), np.asarray(y))
