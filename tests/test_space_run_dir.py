"""The Space on a finished run's folder (``--run_dir``): the run's own config, classifier, tokens,
Psi and P, with the shipped miniature priors, offline.

Two small runs are made here with the shipped priors: ``dbb-hf demo --generator diffusion``
on the toy (column masks grown to a square box: the Space finds an upload's bar itself) and
``recipes/celeba.py --preset miniature`` on a synthetic CelebA-layout folder (the hair
template). Their trainings are a few steps, so the assertions are about the wiring: each
stage configured as the run was, the mask known in advance, the background kept pixel for
pixel, the verdict read from the run's thresholds.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dbb_hf.cli import main as dbb_hf_main
from dbb_hf.data.toy import MIN_OBJECT_PIXELS, ToyConfig, find_object, load_toy
from dbb_hf.mask_arithmetic import region_mask
from dbb_hf.masking_template import hair_template
from dbb_hf.miniature import FACE_PRIOR_PATH, PRIOR_PATH
from celeba_folders import write_cartoon_celeba
from small_demo import SMALL
from space_package import load_app

ROOT = Path(__file__).resolve().parents[1]
FACE = Path(__file__).resolve().parent / "fixtures" / "face_means" / "not_blond_female.png"


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A finished toy demo run on the shipped toy prior (about 20 s on one core)."""
    out = tmp_path_factory.mktemp("toy-run") / "run"
    assert dbb_hf_main(["demo", "--generator", "diffusion", "--output_dir", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def face_run(tmp_path_factory):
    """A finished `recipes/celeba.py --preset miniature` run on the shipped face prior (about 20 s)."""
    root = tmp_path_factory.mktemp("face-run")
    celeba = write_cartoon_celeba(root / "celeba")
    short = ["--erm_num_epochs", "1", "--retraining_num_epochs", "1", "--textual_inversion_max_train_steps", "2",
             "--inpainting_num_inference_steps", "2", "--pruning_n_steps", "4", "--selection_ti_num_images", "3"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "celeba.py"), "--preset", "miniature", "--data_dir", str(celeba),
         "--output_dir", str(root / "run"), *short],
        env=env, cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return root / "run"


def binary(image):
    return np.asarray(image.convert("L")) > 127


def test_find_object_recovers_the_toy_masks_and_finds_nothing_in_noise():
    for size, classes in [(32, 2), (64, 3)]:
        toy = load_toy(ToyConfig(num_train=30, num_validation=4, num_test=30, image_size=size, seed=5,
                                 num_classes=classes))
        for row in [*toy["train"], *toy["test"]]:
            np.testing.assert_array_equal(find_object(row["image"]), binary(row["mask"]))
    # Scaled up with nearest-neighbour (the Space's display), the bar is still exact.
    row = toy["test"][0]
    big = row["image"].resize((128, 128), Image.NEAREST)
    np.testing.assert_array_equal(find_object(big), binary(row["mask"].resize((128, 128), Image.NEAREST)))
    # In noise no colour repeats; one on fewer than MIN_OBJECT_PIXELS pixels is not an object.
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert not find_object(Image.fromarray(noise)).any()
    noise.reshape(-1, 3)[: MIN_OBJECT_PIXELS - 1] = (1, 2, 3)
    assert not find_object(Image.fromarray(noise)).any()
    noise.reshape(-1, 3)[: MIN_OBJECT_PIXELS] = (1, 2, 3)
    assert find_object(Image.fromarray(noise)).sum() == MIN_OBJECT_PIXELS


def test_toy_run_folder_configures_the_space_as_the_run(app, toy_run):
    settings = app.settings.with_run_examples(app.settings.parse_config(["--run_dir", str(toy_run)], {}))
    report = json.loads((toy_run / "report.json").read_text())
    run_config = yaml.safe_load((toy_run / "config.yaml").read_text())
    space = settings.space
    assert space.classifier == str(toy_run / "erm" / "model") and space.tokens == str(toy_run / "tokens")
    assert space.Psi == report["Psi"] and space.object_names == ["bar", "bar"] and space.find_object == "toy"
    assert (settings.masking.backend, settings.masking.region) == ("column", "square_box")
    assert settings.inpainting.model_id == PRIOR_PATH and settings.inpainting.backend == "diffusers"
    for field in ("num_inference_steps", "resolution", "guidance_scale", "prompt_template", "seed"):
        assert getattr(settings.inpainting, field) == run_config["inpainting"][field], field
    assert settings.pruning.P == [4.0] and settings.pruning.n_steps == run_config["pruning"]["n_steps"] == 4
    examples = sorted(p.name for p in Path(space.examples_dir).glob("*.png"))
    assert len(examples) == 4 and sum(name.endswith("_vertical_bar.png") for name in examples) == 2
    # The environment and the flags still go over the run's config.
    flagged = app.settings.parse_config(["--pruning_P", "1", "2"], {"DBB_SPACE_RUN_DIR": str(toy_run)})
    assert flagged.space.run_dir == str(toy_run) and flagged.pruning.P == [1.0, 2.0]


def test_toy_run_folder_edits_an_upload_with_the_runs_models(app, toy_run):
    settings = app.settings.parse_config(["--run_dir", str(toy_run)], {})
    models = app.models.load_models(settings)
    assert models.class_names == ["horizontal_bar", "vertical_bar"]
    assert models.tokens == ["<dbb-horizontal_bar>", "<dbb-vertical_bar>"]
    assert models.Psi == json.loads((toy_run / "report.json").read_text())["Psi"] and models.P == [4.0, 4.0]
    test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=8, image_size=32, seed=7))["test"]
    row = next(r for r in test if r["label"] == 0)
    upload = row["image"].resize((64, 64), Image.NEAREST)  # not the run's size: masked and scored at 64 px
    result = app.edit.run_edit(upload, "vertical_bar", "horizontal_bar", models=models, config=settings)

    # The bar found in the upload, grown to the square the run repainted.
    square = region_mask(binary(row["mask"].resize((64, 64), Image.NEAREST)), "square_box")
    assert result.mask_status == "ok"
    np.testing.assert_array_equal(binary(result.mask), square)
    np.testing.assert_array_equal(binary(result.changed), square)
    edit, image = np.asarray(result.edit), np.asarray(result.image)
    np.testing.assert_array_equal(edit[~square], image[~square])
    assert (edit[square] != image[square]).any()
    assert result.prompt == "a photo of a <dbb-vertical_bar> bar"
    assert 0.0 <= result.psi <= 1.0 and math.isfinite(result.rho) and result.heatmap is not None
    assert (result.Psi, result.P) == (models.Psi[0], 4.0)
    assert result.keep == (result.psi < result.Psi and result.rho > 4.0)
    text = app.page.summary_markdown(result, models.class_names)
    assert f"{result.psi:.4f}" in text and f"Psi = {result.Psi:.4f}" in text and "P = 4.0000" in text
    assert ("Verdict: keep" in text) == result.keep

    demo = app.page.build_demo(settings, models)
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert "run-notice" in ids and "tiny-notice" not in ids
    notice = app.page.run_notice(settings, models)
    assert str(toy_run) in notice and "<dbb-vertical_bar>" in notice and PRIOR_PATH in notice


def test_a_moved_run_folder_finds_the_shipped_prior_by_its_digest(app, toy_run, tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("report.json", "erm/model", "tokens"):
        copy = shutil.copytree if (toy_run / name).is_dir() else shutil.copyfile
        copy(toy_run / name, moved / name)
    config = yaml.safe_load((toy_run / "config.yaml").read_text())
    config["inpainting"]["model_id"] = "/elsewhere/dbb_hf/miniature/prior"  # the checkout that made the run
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    settings = app.settings.parse_config(["--run_dir", str(moved)], {})
    assert settings.inpainting.model_id == PRIOR_PATH
    assert settings.space.examples_dir == app.settings.with_run_examples(settings).space.examples_dir == ""
    config["resolved_revisions"]["inpainting"]["digest"] = "sha256:" + "0" * 64
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    assert app.settings.parse_config(["--run_dir", str(moved)], {}).inpainting.model_id == config["inpainting"]["model_id"]


def test_face_run_folder_repaints_the_hair_template(app, face_run):
    settings = app.settings.parse_config(["--run_dir", str(face_run)], {})
    assert settings.masking.backend == "template" and settings.inpainting.model_id == FACE_PRIOR_PATH
    assert settings.space.find_object is None
    models = app.models.load_models(settings)
    assert models.class_names == ["not_blond", "blond"] and models.object_names == ["hair", "hair"]
    assert models.masking is None  # the template runs no model
    face = Image.open(FACE)  # a mean face: 178 x 218, CelebA's aligned crop
    result = app.edit.run_edit(face, "blond", "not_blond", models=models, config=settings)

    mask = binary(result.mask)
    template = hair_template(218, 178)
    # The run's template, grown by its 1 px dilation (miniature.yaml).
    assert mask[template].all() and mask.mean() < template.mean() + 0.03
    changed = binary(result.changed)
    np.testing.assert_array_equal(np.asarray(result.edit)[~changed], np.asarray(result.image)[~changed])
    assert not changed[int(0.6 * 218), 89]  # the face's centre is never repainted
    assert result.prompt == "a photo of a <dbb-blond> hair"
    assert math.isfinite(result.psi) and math.isfinite(result.rho)
    assert (result.Psi, result.P) == (models.Psi[0], 0.0)
    examples = sorted(p.name for p in Path(app.settings.with_run_examples(settings).space.examples_dir).iterdir())
    assert len(examples) == 4 and all(name.endswith(("_blond.png", "_not_blond.png")) for name in examples)


def test_bad_run_folders_are_refused_with_what_is_missing(app, toy_run, tmp_path):
    parse = app.settings.parse_config
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        parse(["--run_dir", str(tmp_path / "nowhere")], {})
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        parse(["--run_dir", str(tmp_path)], {})
    shutil.copyfile(toy_run / "config.yaml", tmp_path / "config.yaml")
    with pytest.raises(FileNotFoundError, match="no report.json"):
        parse(["--run_dir", str(tmp_path)], {})
    with pytest.raises(ValueError, match="--tiny and --run_dir"):
        parse(["--tiny", "--run_dir", str(toy_run)], {})
