"""Stage 2: learn one causal token per class by textual inversion (paper Eq. 1).

For each class, new token(s) ``<dbb-{class_name}>`` are added to the Stable Diffusion text
encoder, initialised from a word (``"animal"`` in the authors' release), and trained with
the denoising loss

    C* = argmin_C  E_{z~E(x), I, eps, t} || target - eps_theta(z_t, t, tau_theta(I)) ||^2

over the class's textual-inversion images, every other weight frozen. ``target`` is the
noise (or the velocity for v-prediction schedulers).

On an inpainting UNet (9 input channels: SD 2 inpainting, the miniature prior) the token is
learned on the model that will inpaint with it: the UNet sees ``[noisy latents, mask,
masked-image latents]`` as in diffusers' inpainting training and in
``StableDiffusionInpaintPipeline`` (see :func:`inpainting_mask`).

``learn_token_lora`` is a second causal learner: the token plus LoRA adapters (peft) on the
text-encoder and/or UNet attention, saved in the layout ``pipe.load_lora_weights`` reads.

The modules: ``config`` (the two configs), ``data`` (the reproducible sample stream),
``train`` (models, checkpoints and the training loop), ``lora`` (the adapters) and
``embeddings`` (the token files and folders, and loading them into a pipeline).
"""

from .config import DEFAULT_TEMPLATES, MIXED_PRECISION, LoraTokenConfig, TextualInversionConfig, placeholder_token
from .data import CausalTokenDataset, inpainting_mask
from .embeddings import (
    EMBEDS_NAME,
    METADATA_KEY,
    TOKENS_INDEX,
    SavedToken,
    holds_class_tokens,
    load_tokens,
    read_embeds,
    read_token_folder,
    save_embeds,
    token_folder_name,
    tokens_by_class,
    vector_tokens,
    verify_token,
)
from .lora import (
    LORA_WEIGHTS_NAME,
    TEXT_ENCODER_LORA_TARGETS,
    UNET_LORA_TARGETS,
    load_lora_causal,
    save_lora_folder,
    text_encoder_lora_unsupported,
)
from .train import (
    CHECKPOINT_PREFIX,
    TRAINING_STATE_NAME,
    LearnedToken,
    add_placeholder_tokens,
    latest_checkpoint,
    learn_token,
    learn_token_lora,
    learn_tokens,
    load_components,
    single_token_id,
    train_token,
)

__all__ = [
    "CHECKPOINT_PREFIX",
    "DEFAULT_TEMPLATES",
    "EMBEDS_NAME",
    "LORA_WEIGHTS_NAME",
    "METADATA_KEY",
    "MIXED_PRECISION",
    "TEXT_ENCODER_LORA_TARGETS",
    "TOKENS_INDEX",
    "TRAINING_STATE_NAME",
    "UNET_LORA_TARGETS",
    "CausalTokenDataset",
    "LearnedToken",
    "LoraTokenConfig",
    "SavedToken",
    "TextualInversionConfig",
    "add_placeholder_tokens",
    "holds_class_tokens",
    "inpainting_mask",
    "latest_checkpoint",
    "learn_token",
    "learn_token_lora",
    "learn_tokens",
    "load_components",
    "load_lora_causal",
    "load_tokens",
    "placeholder_token",
    "read_embeds",
    "read_token_folder",
    "save_embeds",
    "save_lora_folder",
    "single_token_id",
    "text_encoder_lora_unsupported",
    "token_folder_name",
    "tokens_by_class",
    "train_token",
    "vector_tokens",
    "verify_token",
]
