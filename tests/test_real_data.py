"""Real-data cases the toy never produces: a user's own columns and ground-truth masks
carried through a whole run, and load_augmented on a run folder."""

import json

import numpy as np
import pandas as pd
import pytest
from datasets import load_from_disk
from PIL import Image

from dbb_hf.augmented import load_augmented
from dbb_hf.cli import run_pipeline
from dbb_hf.config import load_yaml
from dbb_hf.data import DatasetFormatError, load_benchmark
from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.inpainting import InpaintingConfig
from dbb_hf.masking import MaskingConfig
from dbb_hf.preflight import check_stage_columns
from dbb_hf.presets import DEMO_PRESET

SPLITS = ("train", "validation", "test")


def write_local_dataset(root, toy):
    """The toy as a user's own image folder: one folder per split with a metadata.csv naming
    each image, its ground-truth mask file (``mask_file_name``), class, background and a
    column of the user's (``photographer``)."""
    for split in SPLITS:
        rows = []
        folder = root / split
        (folder / "masks").mkdir(parents=True)
        names = toy[split].features["label"].names, toy[split].features["spurious"].names
        for i, example in enumerate(toy[split]):
            example["image"].save(folder / f"{i:04d}.png")
            example["mask"].save(folder / "masks" / f"{i:04d}.png")
            rows.append({"file_name": f"{i:04d}.png", "mask_file_name": f"masks/{i:04d}.png",
                         "shape": names[0][example["label"]], "background": names[1][example["spurious"]],
                         "photographer": f"p{i % 3}-{split}"})
        pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    toy = load_toy(ToyConfig(num_train=160, num_validation=40, num_test=40, correlation=0.95, seed=4))
    data = write_local_dataset(tmp_path_factory.mktemp("data") / "bars", toy)
    out = tmp_path_factory.mktemp("run") / "run"
    report = run_pipeline([
        "--output_dir", str(out), "--dataset", "hub", "--data_dir", str(data),
        "--options", "label_column=shape", "spurious_column=background", "mask_column=mask",
        "keep_columns=[photographer]",
        "--masking_backend", "column", "--erm_num_epochs", "1", "--retraining_num_epochs", "1",
        "--shard_size", "32", "--pruning_n_steps", "4", "--num_grid_examples", "2",
    ], defaults=load_yaml(DEMO_PRESET))
    return data, out, report


def test_a_local_dataset_with_mask_and_user_columns_runs_through_the_column_backend(local_run):
    data, out, report = local_run
    assert (out / "report.json").exists() and (out / "report.md").exists()
    assert 0.0 <= report["retrained"]["worst_group_accuracy"] <= 1.0
    loaded = load_benchmark("hub", str(data), label_column="shape", spurious_column="background",
                            mask_column="mask", keep_columns=["photographer"])
    assert {"mask", "photographer"} <= set(loaded["train"].column_names)
    # The masks stage copied the user's masks: every selected row's mask is its file's pixels
    # (its folder holds the masks by row key; the user's columns stay in the data stage).
    masks = load_from_disk(str(out / "masks"))
    assert len(masks) == 80 and set(masks["mask_status"]) == {"ok"}
    for row in masks.select(range(0, 80, 9)):
        index = int(row["example_id"].split("-")[1])
        expected = np.asarray(Image.open(data / "train" / "masks" / f"{index:04d}.png"))
        assert np.array_equal(np.asarray(row["mask"]), expected)
    # The user's column reaches the augmented dataset, on real rows and on the edits made from them.
    augmented = load_augmented(out)
    assert augmented["train"]["photographer"][:3] == ["p0-train", "p1-train", "p2-train"]
    for edit in augmented["synthetic"]:
        index = int(edit["source_example_id"].split("-")[1])
        assert edit["photographer"] == f"p{index % 3}-train"


def test_load_augmented_accepts_a_run_folder(local_run, tmp_path):
    _, out, _ = local_run
    from_run, from_stage = load_augmented(out), load_augmented(out / "augmented")
    assert list(from_run) == list(from_stage) == ["train", "synthetic", "validation", "test"]
    for split in from_stage:
        assert from_run[split]["example_id"] == from_stage[split]["example_id"]
    # A run stopped before its augmented stage: the error says what to pass.
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(json.dumps({"run": {"output_dir": str(unfinished)}}))
    with pytest.raises(DatasetFormatError, match=r"run folder without an augmented dataset.*augmented.*Rerun"):
        load_augmented(unfinished)


def test_a_kept_column_named_like_a_stage_output_is_refused_before_erm(tmp_path):
    toy = load_toy(ToyConfig(num_train=16, num_validation=8, num_test=8, seed=5))
    data = write_local_dataset(tmp_path / "bars", toy)
    for split in SPLITS:  # the user's own columns: a quality score and a caption
        metadata = pd.read_csv(data / split / "metadata.csv")
        metadata.assign(mask_score=0.5, prompt="a bar").to_csv(data / split / "metadata.csv", index=False)
    out = tmp_path / "run"
    args = ["--output_dir", str(out), "--dataset", "hub", "--data_dir", str(data), "--masking_backend", "column",
            "--options", "label_column=shape", "spurious_column=background", "mask_column=mask"]
    with pytest.raises(DatasetFormatError, match=r"column\(s\) \['mask_score', 'prompt'\] that a later stage writes: "
                                                 r"'mask_score' is written by the masks \(dbb_hf\.masking\) stage; "
                                                 r"'prompt' is written by the generation \(dbb_hf\.inpainting\) stage"):
        run_pipeline([*args, "keep_columns=[photographer,mask_score,prompt]"], defaults=load_yaml(DEMO_PRESET))
    assert not (out / "erm").exists()  # refused before ERM trained
    # The user's mask is no clash (the pipeline keeps it as source_mask); a column of that name beside it is.
    loaded = load_benchmark("hub", str(data), label_column="shape", spurious_column="background",
                            mask_column="mask", keep_columns=["photographer"])
    sections = {"masking": MaskingConfig(backend="column", region="box"), "inpainting": InpaintingConfig(backend="compose")}
    check_stage_columns(sections, loaded)
    renamed = loaded.rename_column("photographer", "source_mask")
    with pytest.raises(DatasetFormatError, match=r"'source_mask' is written by the masks"):
        check_stage_columns(sections, renamed)
    check_stage_columns({**sections, "masking": MaskingConfig(backend="column")}, renamed)  # copies `mask` as it is
