"""Every default model of dbb_hf at its real architecture, with random weights, built offline.

The architectures are the published config files' values (:mod:`.configs`); each builder
makes its model with ``from_config`` (random weights, seeded), writes it with its
processor or tokenizer in the Hub's layout and returns the folder, so dbb_hf's own
loaders read it exactly as they read the real checkpoint (``from_pretrained(folder)``).
The tokenizers are synthetic with the real vocabulary sizes (see :mod:`.configs`).

:func:`build_full_size_models` saves them all once under a folder; the
``full_size_random`` preset and ``benchmarks/full_size_dry_run.py`` use it to run the
method's real code path at full size (the outputs are noise: only shapes, memory, time
and FLOPs mean anything).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import configs

# The words prompts and the default initializer use, kept as single tokens.
PROMPT_WORDS = ("photo", "of", "the", "a", "hair", "animal", "bird", "blond", "face", "person")


def _sd2_parts(path: Path, seed: int):
    from diffusers import AutoencoderKL, PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..tiny.diffusion import build_clip_tokenizer

    spec = configs.SD2_TOKENIZER
    tokenizer = build_clip_tokenizer(
        path / "tokenizer", PROMPT_WORDS, spec["model_max_length"], vocab_size=spec["vocab_size"],
        pad_token=spec["pad_token"],
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs.SD2_TEXT_ENCODER))
    vae = AutoencoderKL.from_config(configs.SD2_VAE)
    scheduler = PNDMScheduler.from_config(configs.SD2_SCHEDULER)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None}


def save_sd2_pipelines(text2img_path: str | os.PathLike | None, inpaint_path: str | os.PathLike | None,
                       seed: int = 0) -> None:
    """SD 2 base (text-to-image, what textual inversion trains on) and/or SD 2 inpainting.

    They share the VAE, text encoder and tokenizer architecture, built once; the UNets
    (866 M parameters each) are built one after the other, so at most one is in memory.
    """
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel

    wanted = [(path, unet_config, pipeline_class) for path, unet_config, pipeline_class in (
        (text2img_path, configs.SD2_UNET, StableDiffusionPipeline),
        (inpaint_path, configs.SD2_INPAINTING_UNET, StableDiffusionInpaintPipeline),
    ) if path is not None]
    parts = _sd2_parts(Path(wanted[0][0]), seed)
    for path, unet_config, pipeline_class in wanted:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet_config)
        pipeline_class(unet=unet, **parts, requires_safety_checker=False).save_pretrained(path)
        del unet


def save_grounding_dino_base(path: str | os.PathLike, seed: int = 0) -> str:
    """GroundingDINO-base (Swin-B + BERT-base, 232 M parameters) and its processor."""
    from transformers import (
        GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor, GroundingDinoProcessor,
    )

    from ..tiny.detection import build_bert_tokenizer

    path = Path(path)
    tokenizer = build_bert_tokenizer(configs.BERT_BASE_UNCASED_VOCAB_SIZE)
    image_processor = GroundingDinoImageProcessor(**configs.GROUNDING_DINO_IMAGE_PROCESSOR)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    config = GroundingDinoConfig(**configs.GROUNDING_DINO_BASE)
    config.text_config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection._from_config(config).eval().save_pretrained(path)
    return str(path)


def save_sam2_1_hiera_small(path: str | os.PathLike, seed: int = 0) -> str:
    """SAM 2.1 hiera-small and its processor (1024 px)."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    path = Path(path)
    Sam2Processor(image_processor=Sam2ImageProcessor(**configs.SAM2_IMAGE_PROCESSOR)).save_pretrained(path)
    torch.manual_seed(seed)
    Sam2Model._from_config(Sam2Config(**configs.SAM2_1_HIERA_SMALL)).eval().save_pretrained(path)
    return str(path)


ROLES = ("text2img", "inpaint", "detector", "segmenter")


def model_paths(folder: str | os.PathLike) -> dict[str, str]:
    """Where :func:`build_full_size_models` saves each model under ``folder``, by role."""
    return {name: str(Path(folder) / name) for name in ROLES}


def build_full_size_models(folder: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Save every default model under ``folder`` (skipping those already there); their paths by role.

    Roles: ``text2img`` (textual inversion's SD 2 base), ``inpaint`` (SD 2 inpainting),
    ``detector`` (GroundingDINO-base), ``segmenter`` (SAM 2.1 hiera-small). The classifier
    needs no folder: timm builds ``configs.CLASSIFIER["model_name"]`` with
    ``pretrained=False``. About 12 GB of float32 weights on disk.
    """
    folder = Path(folder)
    paths = model_paths(folder)
    steps = {
        "sd2": (("text2img", "inpaint"), lambda: save_sd2_pipelines(paths["text2img"], paths["inpaint"], seed)),
        "detector": (("detector",), lambda: save_grounding_dino_base(paths["detector"], seed)),
        "segmenter": (("segmenter",), lambda: save_sam2_1_hiera_small(paths["segmenter"], seed)),
    }
    for name, (_, build) in steps.items():
        done = folder / f"{name}.done"
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            build()
            done.touch()
    return paths
