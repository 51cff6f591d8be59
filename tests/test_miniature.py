"""The shipped miniature prior: loads offline like a Hub pipeline and really edits the toy world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.inpainting import InpaintingConfig, binary_mask, load_inpainting_pipeline, run_inpainting
from dbb_hf.masking import region_mask
from dbb_hf.miniature import ORACLE_PATH, PRIOR_PATH
from dbb_hf.modeling import image_probabilities, load_classifier

CLASS_WORDS = ["horizontal bar", "vertical bar"]


@pytest.fixture(scope="module")
def oracle():
    return load_classifier(ORACLE_PATH)


def _predict(model, images):
    return image_probabilities(model, images).argmax(1)


def test_prior_is_a_small_inpainting_pipeline_loaded_offline(monkeypatch):
    from diffusers import StableDiffusionInpaintPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(PRIOR_PATH)
    assert pipe.unet.config.in_channels == 9
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 16
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    # Every caption word is a single token, as with the real CLIP vocabulary.
    for word in ("photo", "horizontal", "vertical", "bar", "land", "water", "on"):
        assert len(pipe.tokenizer.encode(word, add_special_tokens=False)) == 1
    size = sum(f.stat().st_size for f in Path(PRIOR_PATH).rglob("*") if f.is_file())
    assert size <= 20e6
    card = (Path(PRIOR_PATH) / "README.md").read_text()
    assert "recipes/train_miniature_prior.py" in card and "PLACEHOLDER" not in card


def test_oracle_reads_the_bar_not_the_background(oracle):
    test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=64, seed=11))["test"]
    predictions = _predict(oracle, test["image"])
    assert (predictions == np.asarray(test["label"])).mean() >= 0.9
    for group in range(4):  # balanced test: no group may be sacrificed
        rows = np.asarray(test["group"]) == group
        assert (predictions[rows] == np.asarray(test["label"])[rows]).mean() >= 0.75


def test_prior_flips_the_class_and_keeps_pixels_outside_the_mask(oracle):
    # One image per (class, background) group, a fixed seed, dbb_hf's own inpainting stage.
    test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=4, seed=3))["test"]

    def prepare(row):
        box = region_mask(np.asarray(row["mask"]) > 127, "square_box")
        return {"mask": Image.fromarray(box.astype(np.uint8) * 255, mode="L"), "target_label": 1 - row["label"]}

    test = test.map(prepare)
    config = InpaintingConfig(model_id=PRIOR_PATH, resolution=32, num_inference_steps=20, guidance_scale=5.0,
                              torch_dtype="float32", mask_dilation=1, seed=0)
    pipe = load_inpainting_pipeline(config, device="cpu")
    edited = run_inpainting(test, config, pipe=pipe, class_names=CLASS_WORDS, tokens=["", ""])
    assert list(edited["generation_status"]) == ["ok"] * 4
    assert list(_predict(oracle, edited["image"])) == list(edited["label"])  # the judge reads the sources right
    flipped = _predict(oracle, edited["generated"]) == np.asarray(edited["target_label"])
    assert flipped.sum() >= 3, f"flips per image: {flipped.tolist()}"
    for row in edited:
        outside = ~binary_mask(row["generated_mask"])
        assert outside.any()
        np.testing.assert_array_equal(np.asarray(row["generated"])[outside], np.asarray(row["image"])[outside])
        # The edit really repainted: the masked region is not the source.
        assert not np.array_equal(np.asarray(row["generated"])[~outside], np.asarray(row["image"])[~outside])


def test_training_recipe_writes_a_loadable_pipeline_and_resumes(tmp_path):
    import json
    import sys

    from diffusers import StableDiffusionInpaintPipeline

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    from train_miniature_prior import main

    tiny = ["--num_images", "8", "--masks_per_image", "1", "--vae_steps", "2", "--vae_batch_size", "4",
            "--decoder_steps", "2", "--train_batch_size", "4", "--checkpointing_steps", "2", "--lr_warmup_steps", "1",
            "--grid_images", "0", "--vae_channels", "8", "8", "--unet_channels", "16", "16", "--unet_heads", "2", "2",
            "--text_hidden_size", "16", "--output_dir", str(tmp_path / "run"), "--export_dir", str(tmp_path / "prior")]
    assert main(tiny + ["--max_train_steps", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert main(tiny + ["--max_train_steps", "4"]) == 0  # a rerun resumes from the latest checkpoint
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"stage": "unet", "resumed_from": 3} in log
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "prior")
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.sample_size == 16
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the training latents
    card = (tmp_path / "prior" / "README.md").read_text()
    assert "## Quality gates" in card and "4 steps, batch 4" in card
