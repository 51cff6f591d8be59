"""Every recipe with its real YAML and only the models swapped (`--preset tiny`), end to end
on a small folder in its dataset's official layout written by the test: CelebA on one and
on two CPU processes, Waterbirds (metadata.csv), MetaShift (MetaDatasetCatDog, whose
validation and test groups never appear in training)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from dbb_hf.augmented import load_augmented
from celeba_folders import write_noise_celeba

REPO = Path(__file__).resolve().parents[1]


def accelerate_config(path: Path, num_processes: int) -> Path:
    path.write_text(
        "compute_environment: LOCAL_MACHINE\n"
        f"distributed_type: {'MULTI_CPU' if num_processes > 1 else 'NO'}\n"
        f"num_processes: {num_processes}\n"
        "num_machines: 1\nmachine_rank: 0\nmain_training_function: main\nmixed_precision: 'no'\n"
        "use_cpu: true\nrdzv_backend: static\nsame_network: true\n"
    )
    return path


def launch(tmp_path: Path, data_dir: Path, out: Path, num_processes: int, recipe="celeba", extra=None):
    """Run ``recipes/<recipe>.py --preset tiny``; ``extra`` replaces the CelebA test's flags."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    if extra is None:
        extra = ["--options", "split_by_identity=true", "class_balance=true",
                 "--erm_num_epochs", "1", "--retraining_num_epochs", "1"]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config(tmp_path / f"accelerate-{num_processes}.yaml", num_processes)),
        str(REPO / "recipes" / f"{recipe}.py"), "--preset", "tiny",
        "--data_dir", str(data_dir), "--output_dir", str(out), *extra,
    ]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    return write_noise_celeba(tmp_path_factory.mktemp("data") / "celeba")


def _generated(out: Path):
    ds = load_from_disk(str(out / "generation"))
    return {
        row["example_id"]: (row["target_label"], row["generation_status"], np.asarray(row["generated"]).tobytes()
                            if row["generated"] is not None else None)
        for row in ds
    }


def test_recipe_runs_end_to_end_and_two_processes_generate_the_same_set(celeba, tmp_path):
    one = tmp_path / "one"
    launch(tmp_path, celeba, one, 1)
    report = json.loads((one / "report.json").read_text())
    assert {"erm", "retrained"} <= set(report)
    for model in ("erm", "retrained"):
        assert 0.0 <= report[model]["worst_group_accuracy"] <= 1.0
    assert set(report["erm"]["per_group_accuracy"]) == {"not_blond/female", "not_blond/male", "blond/female", "blond/male"}
    for name in ("not_blond", "blond"):
        assert (one / "tokens" / name / "learned_embeds.safetensors").exists()
    augmented = load_augmented(one)
    assert set(augmented) == {"train", "synthetic", "validation", "test"}
    generated = _generated(one)
    assert len(generated) == 6  # 3 lowest-loss images per class
    assert any(status == "ok" for _, status, _ in generated.values())
    edits = load_from_disk(str(one / "generation"))
    for prompt, target in zip(edits["prompt"], edits["target_label"]):
        assert prompt == f"A photo of a <dbb-{['not_blond', 'blond'][target]}> hair"

    two = tmp_path / "two"
    launch(tmp_path, celeba, two, 2)
    assert _generated(two) == generated


def _picture(rng, path: Path, colour, size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    pixels[size[0] // 3: 2 * size[0] // 3, size[1] // 3: 2 * size[1] // 3] = colour  # the "object"
    Image.fromarray(pixels).save(path)


def write_waterbirds(root: Path) -> Path:
    """The official release's layout: metadata.csv (img_id, img_filename, y, split, place,
    place_filename) and the images in CUB class folders."""
    rng = np.random.default_rng(1)
    rows = []
    for split, per_group in ((0, (5, 2, 2, 5)), (1, (2, 2, 2, 2)), (2, (2, 2, 2, 2))):
        for group, count in enumerate(per_group):
            y, place = divmod(group, 2)
            for _ in range(count):
                folder = ("001.Black_footed_Albatross", "002.Laysan_Albatross")[y]
                name = f"{folder}/{folder[4:]}_{len(rows):04d}_{y}.jpg"
                _picture(rng, root / name, (20, 60, 200) if y else (120, 80, 30))
                rows.append((len(rows) + 1, name, y, split, place, "/b/bamboo_forest/00000001.jpg"))
    lines = ["img_id,img_filename,y,split,place,place_filename"] + [",".join(map(str, r)) for r in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def write_metashift(root: Path) -> Path:
    """DISC's MetaDatasetCatDog: train/<class>/<class>(<context>)/ and test/ folders; the test
    contexts (shelf) are never in train. Files are named by a Visual Genome-like image id."""
    rng = np.random.default_rng(2)
    folders = {"train/cat/cat(sofa)": 5, "train/cat/cat(bed)": 4, "train/dog/dog(bench)": 4,
               "train/dog/dog(bike)": 5, "test/cat/cat(shelf)": 7, "test/dog/dog(shelf)": 7}
    image_id = 2300000
    for folder, count in folders.items():
        for _ in range(count):
            image_id += 1
            _picture(rng, root / folder / f"{image_id}.jpg", (200, 200, 200) if "/cat/" in folder else (40, 40, 40))
    return root


def _report_of(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    for model in ("erm", "retrained"):
        assert 0.0 <= report[model]["worst_group_accuracy"] <= 1.0
    assert (out / "report.md").exists() and load_from_disk(str(out / "augmented"))
    return report


FAST = ["--erm_num_epochs", "1", "--retraining_num_epochs", "1"]


def test_waterbirds_recipe_runs_end_to_end_on_the_official_layout(tmp_path):
    data = write_waterbirds(tmp_path / "waterbird_complete95_forest2water2")
    out = tmp_path / "run"
    launch(tmp_path, data, out, 1, recipe="waterbirds", extra=FAST)
    report = _report_of(out)
    assert set(report["erm"]["per_group_accuracy"]) == {"landbird/land", "landbird/water", "waterbird/land", "waterbird/water"}
    assert report["dataset"]["dataset"] == "waterbirds"
    edits = load_from_disk(str(out / "generation"))
    assert len(edits) == 6 and set(edits["prompt"]) == {"A photo of a <dbb-landbird> bird", "A photo of a <dbb-waterbird> bird"}


def test_metashift_recipe_runs_end_to_end_with_group_disjoint_validation_and_test(tmp_path):
    # The DISC setup's evaluation groups (cat/shelf, dog/shelf) have no training images:
    # the train-weighted average is absent ("n/a"), everything else is reported.
    data = write_metashift(tmp_path / "MetaDatasetCatDog")
    out = tmp_path / "run"
    launch(tmp_path, data, out, 1, recipe="metashift", extra=FAST)
    report = _report_of(out)
    for model in ("erm", "retrained"):
        present = {g: a for g, a in report[model]["per_group_accuracy"].items() if a is not None}
        assert set(present) == {"cat/shelf", "dog/shelf"}
        assert report[model]["weighted_average_accuracy"] is None
    assert report["erm"]["group_counts"] == {**{g: 0 for g in report["erm"]["group_counts"]},
                                             "cat/shelf": 6, "dog/shelf": 6}
    markdown = (out / "report.md").read_text()
    assert "| **average** (weighted by training groups) | 12 | n/a |" in markdown
    assert "edits" in markdown.lower()


@pytest.mark.parametrize("recipe", ["celeba", "waterbirds", "metashift"])
def test_every_recipe_value_names_its_source(recipe):
    # A value is sourced by a comment on its line, on its section's line, or in the comment
    # block right above either (the paper's tables, DaC / DFR / DISC, or "dbb_hf choice").
    lines = (REPO / "recipes" / f"{recipe}.yaml").read_text().splitlines()
    unsourced, section_sourced = [], False
    for number, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        block_above = number > 0 and lines[number - 1].lstrip().startswith("#")
        if not line.startswith(" "):  # a section
            section_sourced = "#" in line or block_above
            if line.rstrip().endswith(":"):
                continue
        if not ("#" in line or block_above or section_sourced):
            unsourced.append(line.strip())
    assert not unsourced, f"recipes/{recipe}.yaml values without a source: {unsourced}"
