"""The miniature priors' components, built from one config (untrained, seeded).

A Stable Diffusion 2 inpainting pipeline scaled down to a small world: an
``AutoencoderKL`` whose block count sets its downsampling (toy: two blocks, 32x32x3 images
<-> 16x16x4 latents; faces: three, 64x64x3 <-> 16x16x4), a small ``CLIPTextModel`` with
the tiny CLIP BPE tokenizer of :mod:`dbb_hf.tiny.diffusion` (every word of the world's
vocabulary a single token), an SD2-style ``UNet2DConditionModel`` (linear projections)
with 9 input channels (latents, mask, masked-image latents) and SD2's noise schedule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

# Every word the toy world's captions, the inpainting prompt template and textual
# inversion's initializer use: each one becomes a single token.
VOCABULARY = (
    "a", "an", "on", "of", "the", "photo", "bar", "horizontal", "vertical", "land", "water", "in",
)


@dataclass
class PriorArchitecture:
    vae_channels: list[int] = field(
        default_factory=lambda: [16, 32], metadata={"help": "VAE block widths (2 blocks: 2x down)."}
    )
    vae_layers_per_block: int = field(default=1, metadata={"help": "ResNet layers per VAE block."})
    latent_channels: int = field(default=4, metadata={"help": "VAE latent channels (4, as Stable Diffusion)."})
    text_hidden_size: int = field(default=64, metadata={"help": "Width of the CLIP text encoder."})
    text_layers: int = field(default=2, metadata={"help": "Transformer layers of the CLIP text encoder."})
    text_heads: int = field(default=2, metadata={"help": "Attention heads of the CLIP text encoder."})
    max_prompt_tokens: int = field(default=32, metadata={"help": "Tokenizer model_max_length (prompt length)."})
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128], metadata={"help": "UNet block widths."})
    unet_layers_per_block: int = field(default=1, metadata={"help": "ResNet layers per UNet block."})
    unet_heads: list[int] = field(default_factory=lambda: [2, 4, 8], metadata={"help": "Attention heads per UNet block."})
    image_size: int = field(default=32, metadata={"help": "Side of the images the prior is made for."})


def toy_tokenizer_words() -> tuple[str, ...]:
    """The toy prior's whole-word merges, in the order its shipped tokenizer was built with."""
    from ..tiny.diffusion import COMMON_WORDS

    return tuple(dict.fromkeys(COMMON_WORDS + VOCABULARY))


def build_tokenizer(save_dir: str | os.PathLike, arch: PriorArchitecture, words=None):
    """The tiny CLIP BPE tokenizer with ``words`` (in this order; default: the toy's) as single tokens."""
    from ..tiny.diffusion import build_clip_tokenizer

    words = toy_tokenizer_words() if words is None else tuple(words)
    return build_clip_tokenizer(save_dir, words=words, model_max_length=arch.max_prompt_tokens)


def build_vae(arch: PriorArchitecture):
    from diffusers import AutoencoderKL

    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(arch.vae_channels),
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=arch.latent_channels,
        norm_num_groups=min(32, min(arch.vae_channels)),
        sample_size=arch.image_size,
    )


def build_text_encoder(arch: PriorArchitecture, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=arch.text_hidden_size,
            intermediate_size=4 * arch.text_hidden_size,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            max_position_embeddings=arch.max_prompt_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="gelu",
            projection_dim=arch.text_hidden_size,
        )
    )


def build_unet(arch: PriorArchitecture):
    from diffusers import UNet2DConditionModel

    n = len(arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=arch.image_size // 2 ** (len(arch.vae_channels) - 1),
        in_channels=2 * arch.latent_channels + 1,
        out_channels=arch.latent_channels,
        block_out_channels=tuple(arch.unet_channels),
        layers_per_block=arch.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=arch.text_hidden_size,
        # attention_head_dim is diffusers' (historically misnamed) number of heads.
        attention_head_dim=tuple(arch.unet_heads),
        use_linear_projection=True,  # SD2-style
        norm_num_groups=min(32, min(arch.unet_channels)),
    )


def build_training_scheduler():
    """SD2's noise schedule (scaled-linear betas, epsilon prediction) for training."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )


def build_inference_scheduler(training_scheduler):
    """The scheduler saved with the pipeline: DPM-Solver++ (good edits in ~20 steps)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(training_scheduler.config)


def build_components(arch: PriorArchitecture, tokenizer_dir: str | os.PathLike, seed: int = 0, words=None) -> dict:
    """Untrained components (seeded) of the prior's ``StableDiffusionInpaintPipeline``."""
    tokenizer = build_tokenizer(tokenizer_dir, arch, words)
    torch.manual_seed(seed)
    vae = build_vae(arch)
    torch.manual_seed(seed + 1)
    text_encoder = build_text_encoder(arch, tokenizer)
    torch.manual_seed(seed + 2)
    unet = build_unet(arch)
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": build_inference_scheduler(build_training_scheduler()),
    }


def save_pipeline(components: dict, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> str:
    """Save the components as a ``StableDiffusionInpaintPipeline`` folder (safetensors, ``dtype``)."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.to(dtype=dtype)
    pipe.save_pretrained(os.fspath(path), safe_serialization=True)
    return os.fspath(path)
