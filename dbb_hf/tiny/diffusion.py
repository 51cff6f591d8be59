"""Tiny, randomly initialised Stable Diffusion pipelines for offline tests and demos.

The components follow diffusers' own fast tests (``get_dummy_components`` in
``tests/pipelines/stable_diffusion_2/test_stable_diffusion_inpaint.py``): an SD2-style
UNet (linear projections, head dims (2, 4)), a two-block VAE, a 5-layer CLIP text encoder
of width 32, all seeded. The CLIP tokenizer is written here (a byte-level BPE vocabulary
plus a few merges) because the tests' usual ``hf-internal-testing/tiny-random-clip``
cannot be downloaded offline. Everything is saved with ``save_pretrained`` so code under
test loads it exactly as it loads a Hub model: ``from_pretrained(<folder>)``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# Whole-word merges for words the tests' prompts use, so they become single tokens the
# way they do with the real CLIP vocabulary (anything else falls back to characters).
COMMON_WORDS = ("photo", "of", "the", "bar", "vertical", "horizontal", "bird", "land", "water")


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build ``word</w>`` from its characters."""
    pieces = list(word[:-1]) + [word[-1] + END_OF_WORD]
    merges = []
    current = pieces[0]
    for piece in pieces[1:]:
        merges.append((current, piece))
        current += piece
    return merges


def build_clip_tokenizer(
    save_dir: str | os.PathLike,
    words: Sequence[str] = COMMON_WORDS,
    model_max_length: int = 77,
    *,
    vocab_size: int | None = None,
    pad_token: str | None = None,
) -> CLIPTokenizer:
    """Write a synthetic CLIP BPE tokenizer to ``save_dir`` and load it back from there.

    Its vocabulary holds the 256 byte-level characters and their end-of-word forms, so any
    text tokenizes (unknown words fall back to characters), the merged ``words`` (each a
    single token) and the two special tokens (last, as in CLIP's own vocabulary). With
    ``vocab_size`` (CLIP's real one is 49,408) merges of character pairs fill it up to that
    size, after the words' merges so that each word stays one token.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + END_OF_WORD for c in alphabet]
    merges: list[tuple[str, str]] = []

    def merge(left: str, right: str) -> None:
        if left + right not in known:
            merges.append((left, right))
            tokens.append(left + right)
            known.add(left + right)

    known = set(tokens)
    for word in words:
        for left, right in _word_merges(word):
            merge(left, right)
    if vocab_size is not None:
        fillers = ((left, right) for left in alphabet for right in alphabet)
        while len(tokens) + 2 < vocab_size:
            merge(*next(fillers))
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    extra = {} if pad_token is None else {"pad_token": pad_token}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, **extra)
    tokenizer.save_pretrained(save_dir)
    return CLIPTokenizer.from_pretrained(save_dir)


def _tiny_unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        # SD2-style attention, as in the model the paper uses.
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )


def _tiny_components(in_channels: int, seed: int, tokenizer_dir: str | os.PathLike) -> dict:
    tokenizer = build_clip_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    unet = _tiny_unet(in_channels)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    # The noise schedule of Stable Diffusion 2 (scaled-linear betas, DDIM sampling).
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
    }


def tiny_inpaint_components(seed: int = 0, tokenizer_dir: str | os.PathLike | None = None) -> dict:
    """Components of a tiny SD2 inpainting pipeline (UNet with 9 input channels).

    ``tokenizer_dir`` is where the tokenizer files are written (a temporary folder if
    not given).
    """
    return _with_tokenizer_dir(tokenizer_dir, lambda d: _tiny_components(9, seed, d))


def tiny_text2img_components(seed: int = 0, tokenizer_dir: str | os.PathLike | None = None) -> dict:
    """Components of a tiny SD2 text-to-image pipeline (UNet with 4 input channels)."""
    return _with_tokenizer_dir(tokenizer_dir, lambda d: _tiny_components(4, seed, d))


def _with_tokenizer_dir(tokenizer_dir, build):
    if tokenizer_dir is not None:
        return build(tokenizer_dir)
    with tempfile.TemporaryDirectory() as tmp:
        return build(tmp)


def save_tiny_inpaint_pipeline(path: str | os.PathLike, seed: int = 0) -> str:
    """Save a tiny ``StableDiffusionInpaintPipeline`` to ``path``; returns the path."""
    path = os.fspath(path)
    components = tiny_inpaint_components(seed, tokenizer_dir=os.path.join(path, "tokenizer"))
    StableDiffusionInpaintPipeline(**components, requires_safety_checker=False).save_pretrained(path)
    return path


def save_tiny_text2img_pipeline(path: str | os.PathLike, seed: int = 0) -> str:
    """Save a tiny ``StableDiffusionPipeline`` (the base model textual inversion trains on)."""
    path = os.fspath(path)
    components = tiny_text2img_components(seed, tokenizer_dir=os.path.join(path, "tokenizer"))
    StableDiffusionPipeline(**components, requires_safety_checker=False).save_pretrained(path)
    return path
