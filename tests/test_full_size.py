"""The full-size architectures kept in the package (dbb_hf.full_size) and the dry run that
pushes real faces through them.

The parameter counts are those of the published checkpoints (SD 2's UNet 865,910,724, its
text encoder 340,387,840, ...), counted on the meta device: nothing is allocated. The dry
run itself (benchmarks/full_size_dry_run.py, about 12 GB of random weights and tens of
minutes on two CPU cores) is the `slow` test, run with RUN_SLOW=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbb_hf.full_size import PROMPT_WORDS, configs

REPO = Path(__file__).resolve().parents[1]
CELEBA_MINI = Path(os.environ.get("CELEBA_MINI", REPO.parent / "shared" / "data" / "celeba-mini"))


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_package_configs_are_the_published_architectures():
    import timm
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, GroundingDinoConfig, GroundingDinoForObjectDetection
    from transformers import Sam2Config, Sam2Model

    with torch.device("meta"):
        assert parameters(UNet2DConditionModel.from_config(configs.SD2_UNET)) == 865_910_724
        inpainting = UNet2DConditionModel.from_config(configs.SD2_INPAINTING_UNET)
        assert parameters(inpainting) == 865_925_124 and inpainting.config.in_channels == 9
        assert parameters(AutoencoderKL.from_config(configs.SD2_VAE)) == 83_653_863
        assert parameters(CLIPTextModel(CLIPTextConfig(**configs.SD2_TEXT_ENCODER))) == 340_387_840
        assert parameters(GroundingDinoForObjectDetection(GroundingDinoConfig(**configs.GROUNDING_DINO_BASE))) \
            == 232_315_264
        # The image path of SAM 2.1 hiera-small (what masking runs; the video memory is not in Sam2Model).
        assert parameters(Sam2Model(Sam2Config(**configs.SAM2_1_HIERA_SMALL))) == 38_538_577
        assert parameters(timm.create_model(configs.CLASSIFIER["model_name"], pretrained=False, num_classes=2)) \
            == 23_512_130


def test_synthetic_tokenizers_have_the_real_vocabulary_sizes(tmp_path):
    from dbb_hf.tiny.detection import build_bert_tokenizer
    from dbb_hf.tiny.diffusion import build_clip_tokenizer

    spec = configs.SD2_TOKENIZER
    clip = build_clip_tokenizer(tmp_path / "clip", PROMPT_WORDS, vocab_size=spec["vocab_size"], pad_token="!")
    assert len(clip) == 49_408 and clip.pad_token_id == 0
    assert clip.convert_ids_to_tokens([clip.bos_token_id, clip.eos_token_id]) == ["<|startoftext|>", "<|endoftext|>"]
    assert clip.bos_token_id == 49_406 and clip.eos_token_id == 49_407  # last, as in CLIP's vocabulary
    for word in ("animal", "hair", "photo"):  # the initializer and the prompt's object stay single tokens
        assert len(clip.encode(word, add_special_tokens=False)) == 1
    ids = clip("A photo of a hair", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and max(ids) < 49_408
    bert = build_bert_tokenizer(configs.BERT_BASE_UNCASED_VOCAB_SIZE)
    assert len(bert) == 30_522 and bert.tokenize("hair.") == ["hair", "."]


@pytest.mark.parametrize("recipe", ["celeba", "waterbirds", "metashift"])
def test_any_recipe_takes_the_full_size_random_preset_and_keeps_its_own_settings(recipe, tmp_path):
    """What `python recipes/<recipe>.py --preset full_size_random --data_dir DIR` resolves:
    the models are the builder's, everything else the recipe's (the build itself is the slow test)."""
    from dbb_hf.cli import DATA
    from dbb_hf.config import load_yaml, resolve_configs
    from dbb_hf.pipeline import SECTIONS, RunConfig
    from dbb_hf.presets import Placeholder

    yaml_path = REPO / "recipes" / f"{recipe}.yaml"
    data, run, cfg = resolve_configs(
        SECTIONS, [DATA, ("run", RunConfig)],
        ["--preset", "full_size_random", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "run")],
        layers=[yaml_path], build=False,
    )
    assert cfg["textual_inversion"].model_id == Placeholder("<full_size:text2img>")
    assert cfg["inpainting"].model_id == Placeholder("<full_size:inpaint>")
    assert (cfg["masking"].detector_id, cfg["masking"].segmenter_id) == (
        Placeholder("<full_size:detector>"), Placeholder("<full_size:segmenter>"))
    assert cfg["inpainting"].backend == "diffusers" and cfg["masking"].backend == "grounded_sam"
    assert cfg["classifier"].model_name == configs.CLASSIFIER["model_name"]
    assert cfg["classifier"].pretrained is False
    assert (cfg["masking"].box_threshold, cfg["masking"].text_threshold) == (0.0, 0.0)
    own = load_yaml(yaml_path)
    assert cfg["inpainting"].num_inference_steps == own["inpainting"]["num_inference_steps"] == 50
    assert cfg["textual_inversion"].max_train_steps == own["textual_inversion"]["max_train_steps"]
    assert cfg["selection"].lowest_loss == own["selection"]["lowest_loss"]
    assert cfg["pruning"].P == own["pruning"]["P"] and cfg["retraining"].gammas == own["retraining"]["gammas"]
    assert data.data_dir == str(tmp_path) and run.class_prompts == own["run"]["class_prompts"]


def test_the_full_size_builder_saves_the_models_once_in_the_run_folder(tmp_path, monkeypatch):
    import dbb_hf.full_size as full_size
    from dbb_hf.config import resolve_layers

    calls = []
    monkeypatch.setattr(full_size, "build_full_size_models", lambda folder: calls.append(Path(folder)))
    sections = resolve_layers([REPO / "recipes" / "celeba.yaml"], presets=["full_size_random"], build_root=tmp_path)
    models = tmp_path / "full_size_models"
    assert calls == [models]  # one build for the four placeholders
    assert sections["textual_inversion"]["model_id"] == str(models / "text2img")
    assert sections["inpainting"]["model_id"] == str(models / "inpaint")
    assert (sections["masking"]["detector_id"], sections["masking"]["segmenter_id"]) == (
        str(models / "detector"), str(models / "segmenter"))


@pytest.mark.parametrize("mode", ["grad", "inference"])
def test_the_dry_runs_flop_counter_counts_layers_in_inference_mode_too(mode, monkeypatch):
    """Masking runs under torch.inference_mode, where linear and conv2d reach the counter whole:
    their FLOPs must still be counted (2 x multiply-adds), as under autograd."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from _common import FlopCounter

    torch.manual_seed(0)
    linear, conv = torch.nn.Linear(64, 32), torch.nn.Conv2d(3, 8, 3)
    rows, image = torch.randn(8, 64), torch.randn(1, 3, 10, 10)
    with torch.inference_mode(mode == "inference"), FlopCounter() as counter:
        linear(rows)
        conv(image)
    assert counter.total == 2 * 8 * 64 * 32 + 2 * (8 * 8 * 8) * (3 * 3 * 3)


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1",
                    reason="slow: builds every default model at full size (12 GB) and runs them on a real face; "
                           "set RUN_SLOW=1 (and CELEBA_MINI if celeba-mini is not at ../shared/data)")
def test_the_dry_run_takes_a_real_face_through_every_stage_at_full_size(tmp_path):
    if not (CELEBA_MINI / "list_attr_celeba.txt").exists():
        pytest.skip(f"slow: no CelebA folder at {CELEBA_MINI} (set CELEBA_MINI)")
    out = tmp_path / "dry_run.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "full_size_dry_run.py"), "--data_dir", str(CELEBA_MINI),
         "--images", "1", "--steps", "1", "--device", "cpu", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert set(figures) == {"stages", "tflop_per_edit"}
    assert set(figures["stages"]) == {"masking", "textual_inversion", "inpainting", "pruning"}
    for name, stage in figures["stages"].items():
        assert set(stage) == {"status", "params", "seconds", "peak_rss_gb", "tflop"}, name
        assert stage["status"] == "ok" and stage["tflop"] > 0 and stage["seconds"] > 0, (name, stage)
    # SD 2's UNet (866 M) + VAE + text encoder, GroundingDINO-base + SAM 2.1-small, ResNet-50.
    assert figures["stages"]["inpainting"]["params"] == 865_925_124 + 83_653_863 + 340_387_840
    assert figures["stages"]["masking"]["params"] == 232_315_264 + 38_538_577
    assert figures["stages"]["pruning"]["params"] == 23_512_130
    # 51 guided UNet calls of 1.6 TFLOP, the VAE and text encoder, detection, segmentation and IG.
    assert 80 < figures["tflop_per_edit"] < 95
