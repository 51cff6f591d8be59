"""The Space's computation (examples/space/dbb_space) without a browser, on tiny offline models.

The models are random, so the assertions are about what the page relies on: output types
and sizes, the background kept pixel for pixel, the verdict following psi < Psi and
rho > P, determinism, and configuration read from the environment.
"""

import dataclasses
import math
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.modeling import data_config
from space_package import load_app

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def config(app, tmp_path_factory):
    tiny_dir = str(tmp_path_factory.mktemp("tiny-space"))
    return app.settings.build_tiny(app.settings.parse_config(["--tiny", "--tiny_dir", tiny_dir], {}))


@pytest.fixture(scope="module")
def models(app, config):
    return app.models.load_models(config)


@pytest.fixture(scope="module")
def toy_image():
    """A 64 px toy image of a horizontal bar (label 0), not one of the app's examples."""
    test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=8, image_size=64, seed=7))["test"]
    return next(row["image"] for row in test if row["label"] == 0)


def binary(image):
    return np.asarray(image) > 127


def test_tiny_mode_builds_loadable_models(config, models):
    assert Path(config.space.classifier, "config.json").is_file()
    assert Path(config.inpainting.model_id, "model_index.json").is_file()
    assert models.class_names == ["horizontal_bar", "vertical_bar"]
    assert models.object_names == ["bar", "bar"]
    assert models.tokens == ["horizontal", "vertical"]
    assert len(models.Psi) == 2 and all(0.0 < p < 1.0 for p in models.Psi)
    assert models.P == [0.0, 0.0]
    assert len(list(Path(config.space.examples_dir).glob("*.png"))) == 4


def test_run_edit_outputs(app, config, models, toy_image):
    # An upload larger than max_image_side (64 in tiny mode), not square: edited at 64 x 48.
    upload = toy_image.resize((128, 96), Image.NEAREST)
    probabilities = app.edit.probabilities(models.classifier, upload.resize((64, 48), Image.BICUBIC))
    predicted = int(probabilities.argmax())
    target = models.class_names[1 - predicted]
    result = app.edit.run_edit(upload, target, None, models=models, config=config)

    assert result.image.size == (64, 48)
    assert result.predicted and result.source == predicted and result.target == 1 - predicted
    assert result.source_probability == pytest.approx(float(probabilities[predicted]))
    assert result.mask_status == "ok"
    assert result.mask.mode == "L" and result.mask.size == result.image.size
    assert set(np.unique(np.asarray(result.mask))) <= {0, 255}
    assert result.edit.mode == "RGB" and result.edit.size == result.image.size
    assert result.changed.size == result.image.size
    changed = binary(result.changed)
    assert changed.any() and binary(result.mask)[~changed].sum() == 0
    # The background (the spurious feature the method keeps) is the input's, pixel for pixel.
    assert np.array_equal(np.asarray(result.edit)[~changed], np.asarray(result.image)[~changed])
    side = data_config(models.classifier)["input_size"][-1]
    assert result.heatmap.mode == "RGB" and result.heatmap.size == (side, side)
    assert result.prompt == f"A photo of a {models.tokens[result.target]} bar"
    assert 0.0 <= result.psi <= 1.0 and math.isfinite(result.rho)
    assert result.Psi == models.Psi[result.source] and result.P == models.P[result.target]
    assert result.keep == (result.psi < result.Psi and result.rho > result.P)

    text = app.page.summary_markdown(result, models.class_names)
    assert f"{result.psi:.4f}" in text and f"{result.rho:.4f}" in text
    assert ("Verdict: keep" in text) == result.keep


@pytest.fixture(scope="module")
def reference(app, config, models, toy_image):
    return app.edit.run_edit(toy_image, "vertical_bar", "horizontal_bar", models=models, config=config)


# Source horizontal_bar (0), target vertical_bar (1): only Psi[0] and P[1] may decide, so the
# other class's threshold is set to flip the verdict if the wrong one were read.
@pytest.mark.parametrize(
    "Psi, P, reason",
    [([1.01, 0.0], [1e6, -1e6], ""), ([0.0, 1.01], [-1e6, 1e6], "psi>=Psi;rho<=P")],
)
def test_verdict_follows_the_thresholds_and_edits_are_deterministic(
    app, config, models, toy_image, reference, Psi, P, reason
):
    result = app.edit.run_edit(
        toy_image, "vertical_bar", "horizontal_bar", models=dataclasses.replace(models, Psi=Psi, P=P), config=config
    )
    assert (result.Psi, result.P) == (Psi[0], P[1])
    assert result.reason == reason
    assert result.keep == (reason == "") == (result.psi < Psi[0] and result.rho > P[1])
    assert np.array_equal(np.asarray(result.edit), np.asarray(reference.edit))
    assert (result.psi, result.rho) == (reference.psi, reference.rho)


def test_nothing_detected_is_reported_not_edited(app, config, models, toy_image):
    strict = dataclasses.replace(config, masking=dataclasses.replace(config.masking, box_threshold=1.0))
    result = app.edit.run_edit(toy_image, "vertical_bar", "horizontal_bar", models=models, config=strict)
    assert result.mask_status == "no_detection"
    assert result.edit is None and result.heatmap is None and result.prompt is None
    assert math.isnan(result.psi) and math.isnan(result.rho)
    assert not result.keep and result.reason == "not_generated"
    assert "not edited" in app.page.summary_markdown(result, models.class_names)


def test_bad_classes_are_refused(app, config, models, toy_image):
    with pytest.raises(ValueError, match="already 'horizontal_bar'"):
        app.edit.run_edit(toy_image, "horizontal_bar", "horizontal_bar", models=models, config=config)
    with pytest.raises(ValueError, match="'zebra' is not one of the classes"):
        app.edit.run_edit(toy_image, "zebra", None, models=models, config=config)


def test_build_demo_has_the_tested_elements(app, config, models):
    demo = app.page.build_demo(config, models)
    assert isinstance(demo, gr.Blocks)
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    expected = {"input-image", "source-class", "target-class", "run-edit", "verdict", "tiny-notice"}
    assert expected | {"mask-output", "edit-output", "heatmap-output"} <= ids


def test_config_from_environment_and_flags(app):
    environ = {
        "DBB_SPACE_CLASSIFIER": "hf-hub:someone/erm-classifier",
        "DBB_SPACE_PSI": "0.97, 0.93",
        "DBB_SPACE_PRUNING_P": "2,0.3",
        "DBB_SPACE_OBJECT_NAMES": "hair",
        "DBB_SPACE_SERVER_PORT": "7861",
        "DBB_SPACE_TINY": "0",
        "DBB_SPACE_INPAINTING_NUM_INFERENCE_STEPS": "25",
    }
    parse_config = app.settings.parse_config
    config = parse_config([], environ)
    assert config.space.classifier == "hf-hub:someone/erm-classifier"
    assert config.space.Psi == [0.97, 0.93] and config.pruning.P == [2.0, 0.3]
    assert config.space.object_names == ["hair"] and config.space.server_port == 7861 and config.space.tiny is False
    assert config.inpainting.num_inference_steps == 25
    assert config.masking.detector_id == "IDEA-Research/grounding-dino-base"  # untouched fields keep the Hub defaults
    flagged = parse_config(["--server_port", "9000", "--pruning_P", "1"], environ)
    assert flagged.space.server_port == 9000 and flagged.pruning.P == [1.0]
    assert parse_config(["--tiny"], {}).space.tiny is True
    assert parse_config([], {"DBB_SPACE_TINY": "1"}).space.tiny is True
    # The environment goes over the tiny presets, the flags over both.
    tiny = parse_config(["--tiny", "--inpainting_resolution", "64"], {"DBB_SPACE_INPAINTING_NUM_INFERENCE_STEPS": "3"})
    assert (tiny.inpainting.num_inference_steps, tiny.inpainting.resolution, tiny.space.max_image_side) == (3, 64, 64)

    with pytest.raises(ValueError, match="DBB_SPACE_TINY='maybe' is not a boolean"):
        parse_config([], {"DBB_SPACE_TINY": "maybe"})
    with pytest.raises(ValueError, match="DBB_SPACE_SERVER_PORT='http' is not a valid int"):
        parse_config([], {**environ, "DBB_SPACE_SERVER_PORT": "http"})
    with pytest.raises(ValueError, match="DBB_SPACE_CLASSIFIER"):
        parse_config([], {"DBB_SPACE_PSI": "0.9,0.9"})
    with pytest.raises(ValueError, match="DBB_SPACE_PSI"):
        parse_config([], {"DBB_SPACE_CLASSIFIER": "hf-hub:someone/erm-classifier"})
    # A variable of the old spelling is refused, not ignored.
    with pytest.raises(ValueError, match=r"DBB_SPACE_P \(did you mean DBB_SPACE_PRUNING_P\?\)"):
        parse_config(["--tiny"], {"DBB_SPACE_P": "1,1"})
    with pytest.raises(ValueError, match="masking backend 'column' needs a dataset"):
        parse_config(["--tiny", "--masking_backend", "column"], {})
