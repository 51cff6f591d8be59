"""The face world: the `template` masking backend, the identity partition, the face prior's
training code on a synthetic CelebA-layout folder, and the shipped face prior itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Features, Image as ImageFeature, Value
from PIL import Image

from dbb_hf.masking import MASK_FEATURES, OK, MaskingConfig, run_masking
from dbb_hf.masking_template import FACE_ELLIPSE, HEAD_ELLIPSE, hair_template
from dbb_hf.stages import load_run_stage
from dbb_hf.textual_inversion import EMBEDS_NAME, read_embeds
from celeba_folders import write_cartoon_celeba

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "face_means"


def aligned_faces(sizes) -> Dataset:
    """Cartoon aligned faces (dark hair arch, skin oval) at the given (width, height) sizes."""
    images = []
    for width, height in sizes:
        pixels = np.full((height, width, 3), (90, 120, 160), np.uint8)
        pixels[hair_template(height, width)] = (60, 40, 20)
        face = hair_template(height, width, head=FACE_ELLIPSE, face=(0.5, 0.5, 1e-6, 1e-6), neck_width=0)
        pixels[face] = (220, 180, 150)
        images.append(Image.fromarray(pixels))
    return Dataset.from_dict(
        {"image": images, "label": [0] * len(images), "example_id": [f"face{i}" for i in range(len(images))]},
        features=Features({"image": ImageFeature(), "label": Value("int64"), "example_id": Value("string")}),
    )


def test_template_backend_masks_the_hair_of_aligned_faces_of_any_size():
    sizes = [(178, 218), (1024, 1024), (89, 109)]  # CelebA's crop, an FFHQ crop, half CelebA
    masked = run_masking(aligned_faces(sizes), MaskingConfig(backend="template"))
    assert set(MASK_FEATURES) <= set(masked.column_names)
    assert list(masked["mask_status"]) == [OK] * 3 and list(masked["mask_score"]) == [1.0] * 3
    for row, (width, height) in zip(masked, sizes):
        mask = np.asarray(row["mask"]) > 127
        assert mask.shape == (height, width) and row["mask"].mode == "L"
        ys, xs = np.nonzero(mask)
        assert row["mask_box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # Hair above the forehead and beside the face; never the face's centre, the chin or a corner.
        assert mask[int(0.15 * height), width // 2] and mask[int(0.6 * height), int(0.12 * width)]
        assert not mask[int(0.6 * height), width // 2] and not mask[int(0.95 * height), width // 2]
        assert not mask[0, 0] and not mask[0, -1]
        # The template is in the image's own coordinates: the same fractions at every size.
        assert abs(mask.mean() - hair_template(218, 178).mean()) < 0.01
    assert hair_template(218, 178).mean() == pytest.approx(0.5568, abs=1e-3)  # CelebA: 56 % of the crop


def test_template_backend_is_configurable_and_keeps_region_and_dilation():
    faces = aligned_faces([(178, 218)])
    plain = np.asarray(run_masking(faces, MaskingConfig(backend="template"))[0]["mask"]) > 127
    grown = np.asarray(run_masking(faces, MaskingConfig(backend="template", dilation=3))[0]["mask"]) > 127
    assert plain.sum() < grown.sum() and not (plain & ~grown).any()
    box = run_masking(faces, MaskingConfig(backend="template", region="box"))[0]
    x1, y1, x2, y2 = (int(v) for v in box["mask_box"])
    assert (np.asarray(box["mask"])[y1:y2, x1:x2] == 255).all()
    narrow = MaskingConfig(backend="template", template_head_ellipse=[0.5, 0.5, 0.3, 0.45], template_neck_width=0.0)
    custom = np.asarray(run_masking(faces, narrow)[0]["mask"]) > 127
    expected = hair_template(218, 178, head=(0.5, 0.5, 0.3, 0.45), face=FACE_ELLIPSE, neck_width=0.0)
    np.testing.assert_array_equal(custom, expected)


@pytest.mark.parametrize("bad", [{"template_head_ellipse": [0.5, 0.5, 0.3]},
                                 {"template_face_ellipse": [0.5, 0.5, 0.0, 0.2]},
                                 {"template_neck_width": 1.5}])
def test_template_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="template_"):
        MaskingConfig(backend="template", **bad)


def test_template_backend_needs_no_label_and_fails_unreadable_rows_alone(tmp_path):
    good = tmp_path / "good.png"
    aligned_faces([(178, 218)])[0]["image"].save(good)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    dataset = Dataset.from_dict({"image": [str(good), str(tmp_path / "bad.png")], "example_id": ["good", "bad"]},
                                features=Features({"image": ImageFeature(), "example_id": Value("string")}))
    masked = run_masking(dataset, MaskingConfig(backend="template"))
    assert masked["mask_status"][0] == OK
    assert masked["mask_status"][1].startswith("failed: unreadable image") and masked["mask"][1] is None


# ---------------------------------------------------------------- the face world's training code


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    return write_cartoon_celeba(tmp_path_factory.mktemp("data") / "celeba")


def test_partition_halves_are_identity_disjoint_and_keep_every_group(celeba, tmp_path):
    from dbb_hf.data import group_counts, load_benchmark
    from dbb_hf.miniature.faces import identities, load_partition, write_partition_folder

    halves = load_partition(celeba)
    prior, experiment = identities(celeba, halves["prior"]), identities(celeba, halves["experiment"])
    assert not set(prior) & set(experiment) and len(prior) + len(experiment) == 16
    assert len(halves["prior"]) + len(halves["experiment"]) == 48
    for half in group_counts(halves).values():
        assert all(count > 0 for count in half.values())
    assert identities(celeba, load_partition(celeba)["prior"]) == prior  # fixed seed: the same halves
    folder = write_partition_folder(celeba, tmp_path / "experiment")
    resplit = load_benchmark("celeba", folder, split_by_identity=True, seed=0)
    ids = set()
    for split in resplit.values():
        ids |= set(identities(folder, split))
    assert ids == set(experiment)
    assert sorted(e for s in resplit.values() for e in s["example_id"]) == sorted(halves["experiment"]["example_id"])


def test_face_captions_name_the_hair_colour_and_the_generic_form_leaves_it_out():
    from dbb_hf.miniature.faces import VOCABULARY, captions, generic_captions

    attributes = ("brown", "woman", "wavy", True, False, False)
    named = captions(attributes)
    assert "a photo of a brown hair" in named and "a photo of a dark hair" in named  # inpainting prompt forms
    assert "a photo of a woman with brown hair" in named and "a woman with wavy dark hair" in named
    generic = generic_captions(attributes)
    assert "a photo of a hair" in generic  # textual inversion's "a photo of a <token> hair" without the token
    assert not any(colour in c for c in generic for colour in ("blond", "brown", "dark", "black"))
    assert captions((None, "man", None, False, False, False)) == generic_captions((None, "man", None, False, False, False))
    words = {w for c in named + generic for w in c.split()}
    assert words <= set(VOCABULARY)


def test_training_code_trains_a_tiny_face_world_and_resumes(celeba, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    from dbb_hf.miniature.training import main

    tiny = ["--world", "face", "--data_dir", str(celeba), "--image_size", "64", "--vae_channels", "8", "8", "8",
            "--vae_steps", "2", "--vae_batch_size", "4", "--decoder_steps", "2", "--masks_per_image", "2",
            "--train_batch_size", "4", "--checkpointing_steps", "2", "--lr_warmup_steps", "1",
            "--unet_channels", "16", "16", "--unet_heads", "2", "2", "--text_hidden_size", "16",
            "--output_dir", str(tmp_path / "run"), "--export_dir", str(tmp_path / "prior")]
    assert main(tiny + ["--max_train_steps", "3", "--grid_images", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert Image.open(tmp_path / "run" / "edits.png").size == (178, 3 * 109)  # 2 faces at half size, 3 rows
    # The decoder alone, as a second process beside the UNet's training would: the run's config stays.
    config = (tmp_path / "run" / "config.json").read_text()
    assert main(tiny + ["--only_decoder", "true", "--decoder_steps", "3"]) == 0
    assert (tmp_path / "run" / "config.json").read_text() == config
    assert main(tiny + ["--max_train_steps", "4", "--grid_images", "0"]) == 0  # a rerun resumes from the latest
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"stage": "unet", "resumed_from": 3} in log
    # The decoder was fine-tuned by the first run and the decoder-only one, not again by the resumed run.
    assert [r["part"] for r in log if r.get("stage") == "timing"].count("decoder") == 2
    import torch
    from diffusers import AutoencoderKL

    shipped, finetuned = (AutoencoderKL.from_pretrained(p) for p in (tmp_path / "prior" / "vae",
                                                                     tmp_path / "run" / "vae-decoder-finetuned"))
    assert all(torch.equal(a.float(), b.float().half().float()) for a, b in
               zip(shipped.decoder.state_dict().values(), finetuned.decoder.state_dict().values()))
    pool = next(r for r in log if r.get("stage") == "precompute")
    assert pool["images"] == 2 * 24 and pool["pairs"] == 2 * 48  # the prior half's 24 faces, mirrored
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "prior")
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.sample_size == 16 and pipe.vae_scale_factor == 4
    for word in ("blond", "dark", "hair", "woman", "photo"):
        assert len(pipe.tokenizer.encode(word, add_special_tokens=False)) == 1
    card = (tmp_path / "prior" / "README.md").read_text()
    assert "non-commercial research purposes only" in card and "license: other" in card
    assert "Prior identities (CelebA identity numbers)" in card and "4 steps, batch 4" in card


def test_card_counts_the_unet_time_of_every_run_of_a_resumed_training():
    from dbb_hf.miniature.card import unet_seconds

    # A first run stopped after 2 log records (its timing record never written), resumed twice.
    log = [{"step": 50, "seconds": 100.0}, {"step": 100, "seconds": 210.0}, {"step": 100, "seconds": 90.0},
           {"step": 150, "seconds": 200.0}, {"step": 200, "seconds": 50.0}]
    assert unet_seconds(log) == 210.0 + 200.0 + 50.0
    assert unet_seconds([{"step": 50, "loss": 1.0}]) is None and unet_seconds([]) is None


def test_training_config_names_what_the_face_world_needs():
    from dbb_hf.miniature.training import PriorTrainingConfig

    with pytest.raises(ValueError, match="data_dir"):
        PriorTrainingConfig(world="face")
    with pytest.raises(ValueError, match="world"):
        PriorTrainingConfig(world="cats")


def test_recipe_yaml_files_parse_into_the_training_configs():
    from dbb_hf.miniature.training import parse_args

    config, arch = parse_args(["--config_file", str(REPO / "recipes" / "miniature_prior_face.yaml"),
                               "--data_dir", "somewhere", "--max_train_steps", "7"])
    assert (config.world, config.data_dir, config.max_train_steps, arch.image_size) == ("face", "somewhere", 7, 64)
    config, arch = parse_args(["--config_file", str(REPO / "recipes" / "miniature_prior_toy.yaml")])
    assert (config.world, config.num_images, config.max_train_steps, arch.vae_channels) == ("toy", 16000, 2300, [16, 32])


# ---------------------------------------------------------------- the shipped face prior


@pytest.fixture(scope="module")
def face_oracle():
    from dbb_hf.miniature import FACE_ORACLE_PATH
    from dbb_hf.modeling import load_classifier

    return load_classifier(FACE_ORACLE_PATH)


def _blond_probability(model, images):
    from dbb_hf.modeling import image_probabilities

    return image_probabilities(model, images)[:, 1]


def test_face_prior_is_a_small_inpainting_pipeline_loaded_offline(monkeypatch):
    from diffusers import StableDiffusionInpaintPipeline

    from dbb_hf.miniature import FACE_PRIOR_PATH

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(FACE_PRIOR_PATH)
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.sample_size == 16 and pipe.vae_scale_factor == 4
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    for word in ("a", "photo", "of", "hair", "blond", "dark", "black", "brown", "grey", "man", "woman", "with"):
        assert len(pipe.tokenizer.encode(word, add_special_tokens=False)) == 1
    size = sum(f.stat().st_size for f in Path(FACE_PRIOR_PATH).rglob("*") if f.is_file())
    assert size <= 20e6
    card = (Path(FACE_PRIOR_PATH) / "README.md").read_text()
    assert "recipes/train_miniature_prior.py" in card and "non-commercial research purposes only" in card
    assert "Prior identities (CelebA identity numbers)" in card and "Not measured yet" not in card


def test_face_prior_flips_the_hair_colour_and_keeps_pixels_outside_the_mask(face_oracle):
    # Each mean face is repainted into blond and into dark hair on 4 fixed seeds (12 edits per
    # direction), judged by the shipped oracle. A prior that ignored the prompt would paint
    # blond with some rate q whatever it was asked, so one direction would reach at most half;
    # more than half in both directions is the prompt's doing. (The shipped prior: 8 of 12 each.)
    from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline, run_inpainting
    from dbb_hf.mask_arithmetic import binary_mask
    from dbb_hf.miniature import FACE_PRIOR_PATH

    names = ["not_blond_female", "not_blond_male", "blond_female"]
    faces = Dataset.from_dict(
        {"image": [str(FIXTURES / f"{name}.png") for name in names] * 2, "label": [0, 0, 1] * 2,
         "example_id": names * 2, "target_label": [1] * 3 + [0] * 3},
        features=Features({"image": ImageFeature(), "label": Value("int64"), "example_id": Value("string"),
                           "target_label": Value("int64")}),
    )
    faces = run_masking(faces, MaskingConfig(backend="template"))
    judged = {0: [], 1: []}
    for seed in range(4):
        config = InpaintingConfig(model_id=FACE_PRIOR_PATH, resolution=64, num_inference_steps=20,
                                  guidance_scale=7.5, torch_dtype="float32", seed=seed)
        pipe = load_inpainting_pipeline(config, device="cpu")
        edited = run_inpainting(faces, config, pipe=pipe, class_names=["dark hair", "blond hair"], tokens=["", ""])
        assert list(edited["generation_status"]) == ["ok"] * 6
        blond = _blond_probability(face_oracle, edited["generated"]) >= 0.5
        for target, is_blond in zip(edited["target_label"], blond):
            judged[target].append(is_blond == bool(target))
        for row in edited:
            outside = ~binary_mask(row["generated_mask"])
            np.testing.assert_array_equal(np.asarray(row["generated"])[outside], np.asarray(row["image"])[outside])
            assert not np.array_equal(np.asarray(row["generated"])[~outside], np.asarray(row["image"])[~outside])
    assert sum(judged[1]) >= 7 and sum(judged[0]) >= 7, f"edits judged the target: into blond {sum(judged[1])}/12, " \
                                                        f"into dark {sum(judged[0])}/12"


# ---------------------------------------------------------------- recipes/celeba.py --preset miniature


def test_celeba_recipe_miniature_preset_runs_the_method_on_faces_with_the_shipped_prior(celeba, tmp_path):
    import subprocess
    import sys

    import yaml
    from datasets import load_from_disk

    from dbb_hf.miniature import FACE_PRIOR_PATH

    out = tmp_path / "run"
    short = ["--erm_num_epochs", "2", "--retraining_num_epochs", "1", "--textual_inversion_max_train_steps", "2",
             "--inpainting_num_inference_steps", "2", "--pruning_n_steps", "4", "--selection_ti_num_images", "3",
             "--masking_template_neck_width", "0.5"]  # not the default: tokens must learn the same template
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "celeba.py"), "--preset", "miniature", "--data_dir", str(celeba),
         "--output_dir", str(out), *short],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["textual_inversion"]["model_id"] == config["inpainting"]["model_id"] == FACE_PRIOR_PATH
    assert config["masking"]["backend"] == "template" and config["classifier"]["image_size"] == 64
    assert config["classifier"]["pretrained"] is False  # ERM from scratch: nothing to download
    report = json.loads((out / "report.json").read_text())
    for model in ("erm", "retrained"):
        assert set(report[model]["per_group_accuracy"]) == {"not_blond/female", "not_blond/male", "blond/female",
                                                            "blond/male"}
    # Every selected image was masked with the hair template of its own size and repainted
    # inside that mask only, with the learned token of the other class.
    edits = load_run_stage(out, "generation")
    assert len(edits) == len(load_from_disk(str(out / "selection"))) > 0
    # The preset's budget: every not-blond training face, and 8 % of the blond ones (at least 1).
    train = np.asarray(load_run_stage(out, "scores")["label"])
    selected = np.asarray(edits["label"])
    assert (selected == 0).sum() == (train == 0).sum()
    assert (selected == 1).sum() == max(1, int(0.08 * (train == 1).sum() + 0.5))
    assert set(edits["generation_status"]) == {"ok"}
    for row in edits:
        assert row["prompt"] == f"a photo of a <dbb-{['not_blond', 'blond'][row['target_label']]}> hair"
        mask, template = np.asarray(row["mask"]) > 127, hair_template(218, 178, neck_width=0.5)
        assert mask[template].all() and mask.mean() < template.mean() + 0.03  # the template, grown by 1 px
        outside = ~(np.asarray(row["generated_mask"]) > 127)
        np.testing.assert_array_equal(np.asarray(row["generated"])[outside], np.asarray(row["image"])[outside])
    assert (out / "augmented").exists() and (out / "report.md").exists()
    # The tokens learned to paint that same template (textual inversion's mask_region "template").
    _, info = read_embeds(out / "tokens" / EMBEDS_NAME)
    for token in ("<dbb-not_blond>", "<dbb-blond>"):
        assert info[token]["mask_region"] == "template"
        assert info[token]["hair_template"] == {"head": list(HEAD_ELLIPSE), "face": list(FACE_ELLIPSE),
                                                "neck_width": 0.5}
