"""Tiny random GroundingDINO, SAM and SAM 2 checkpoints for offline tests.

Each builder makes a model from a small config with a fixed seed (the configs follow the
model testers in transformers' own test suite), saves it with its processor in the Hub's
layout and returns the folder, so code under test loads it with the same
``from_pretrained(path)`` call it uses for the real checkpoints. The weights are random:
boxes and masks are noise, only their shapes and the data flow are meaningful.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2ImageProcessor,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2Processor,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
    SamConfig,
    SamImageProcessor,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SwinConfig,
)

# Enough to tokenize any lower-case ASCII word: whole words for the toy classes and the
# benchmarks' prompts, plus single letters and "##" continuations as a WordPiece fallback.
_WORDS = ["horizontal", "vertical", "bar", "bird", "animal", "hair", "cat", "dog", "blond", "a", "photo", "of"]
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_bert_tokenizer(vocab_size: int | None = None) -> BertTokenizer:
    """A synthetic uncased WordPiece tokenizer; with ``vocab_size`` (bert-base-uncased: 30,522)
    padded to that size with ``[unusedN]`` tokens, as BERT's own vocabulary reserves them."""
    letters = list(string.ascii_lowercase + string.digits)
    tokens = list(dict.fromkeys(_SPECIAL + [".", ",", "_", "-"] + _WORDS + letters + ["##" + c for c in letters]))
    tokens += [f"[unused{i}]" for i in range(max(0, (vocab_size or 0) - len(tokens)))]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)


def save_tiny_grounding_dino(path: str | os.PathLike, seed: int = 0, image_size: int = 128) -> str:
    """Save a tiny random GroundingDINO (Swin + BERT) and its processor to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bert_tokenizer()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)

    backbone = SwinConfig(
        window_size=7,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=image_size,
        out_indices=[2, 3, 4],
    )
    text = {
        "model_type": "bert",
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "max_position_embeddings": 32,
    }
    config = GroundingDinoConfig(
        d_model=32,  # GroupNorm(32, d_model) inside the model needs a multiple of 32
        encoder_layers=1,
        decoder_layers=2,  # the per-layer box heads are tied to layer 0: one layer leaves nothing to tie
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=8,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        use_timm_backbone=False,
        backbone_config=backbone,
        max_text_len=16,
        text_config=text,
    )
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).eval().save_pretrained(path)
    return str(path)


def save_tiny_sam(path: str | os.PathLike, seed: int = 0, image_size: int = 32) -> str:
    """Save a tiny random SAM (ViT image encoder) and its processor to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    patch_size = 4
    image_processor = SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": image_size // 4},
        mask_pad_size={"height": image_size // 4, "width": image_size // 4},
    )
    SamProcessor(image_processor=image_processor).save_pretrained(path)
    config = SamConfig(
        vision_config=SamVisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=16,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=32,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=8,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            image_size=image_size, patch_size=patch_size, hidden_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    torch.manual_seed(seed)
    SamModel(config).eval().save_pretrained(path)
    return str(path)


def save_tiny_sam2(path: str | os.PathLike, seed: int = 0, image_size: int = 64) -> str:
    """Save a tiny random SAM 2 (Hiera image encoder) and its processor to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    Sam2Processor(
        image_processor=Sam2ImageProcessor(
            size={"height": image_size, "width": image_size},
            mask_size={"height": image_size // 4, "width": image_size // 4},
        )
    ).save_pretrained(path)
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=image_size,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 2],
        # A global-attention block cannot open a stage (its query pooling needs a window).
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    strides = (4, 8, 16)  # Hiera's three feature levels that feed SAM 2's neck
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[image_size // s, image_size // s] for s in strides],
        fpn_hidden_size=16,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            image_size=image_size, patch_size=16, hidden_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16
        ),
        image_size=image_size,
        memory_attention_hidden_size=16,
        memory_encoder_hidden_size=16,
        mask_downsampler_embed_dim=16,
        memory_fuser_embed_dim=16,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=16,
    )
    torch.manual_seed(seed)
    Sam2Model(config).eval().save_pretrained(path)
    return str(path)
