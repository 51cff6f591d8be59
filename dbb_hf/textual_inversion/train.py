"""Training one causal token per class (paper Eq. 1), resumable from its checkpoints.

This follows diffusers' ``examples/textual_inversion/textual_inversion.py`` recipe
(Accelerate loop, embedding rows of the original vocabulary restored after every step,
constant learning rate) with two changes for a library:

- Randomness is a function of (seed, global sample index) (see :mod:`.data`), so a run
  resumed from a checkpoint reproduces the uninterrupted run exactly.
- Checkpoints hold only what training changes (the token vectors, LoRA weights and the
  optimizer state), not a copy of the 1.4 GB text encoder per checkpoint.

:func:`train_token` runs four steps: set-up (models, the new token, the optimizer),
resume (the latest checkpoint of the same settings), the step loop, and the final save.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..devices import diffusers_dtype
from ..masking_template import HairTemplate
from ..precision import DTYPES, stage_precision
from ..state_files import load_state_file, save_state_file
from .config import LoraTokenConfig, TextualInversionConfig, placeholder_token
from .data import NOISE_STREAM, CausalTokenDataset, as_pil_list, sample_seed, template_record
from .embeddings import EMBEDS_NAME, read_embeds, save_embeds, token_folder_name, vector_tokens
from .lora import add_lora_adapters, lora_state_dicts, restore_lora_state, save_lora_folder

TRAINING_STATE_NAME = "training_state.safetensors"  # optimizer + LoRA state, no pickle
CHECKPOINT_PREFIX = "checkpoint-"
# Settings a resumed run may change: they decide how long and how fast it trains, not what.
_RESUMABLE_CHANGES = ("max_train_steps", "checkpointing_steps", "dataloader_num_workers", "mixed_precision")


# ----------------------------------------------------------------------------- models


def load_components(config: TextualInversionConfig, frozen_dtype: torch.dtype = torch.float32) -> dict:
    """Tokenizer, text encoder, VAE, UNet and DDPM noise scheduler of ``config.model_id``.

    The VAE and UNet stay frozen, so they load directly in ``frozen_dtype``; the text
    encoder holds the trained embedding and stays float32.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..hub_access import reaching

    source = {"pretrained_model_name_or_path": config.model_id, "revision": config.revision}
    with reaching(config.model_id, config.revision, "textual-inversion model"):
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(**source, subfolder="tokenizer"),
            # float32 even from a float16 checkpoint (transformers keeps the saved dtype): the
            # token's embedding row is what trains.
            "text_encoder": CLIPTextModel.from_pretrained(**source, subfolder="text_encoder", dtype=torch.float32),
            "vae": AutoencoderKL.from_pretrained(**source, subfolder="vae", **diffusers_dtype(frozen_dtype)),
            "unet": UNet2DConditionModel.from_pretrained(**source, subfolder="unet", **diffusers_dtype(frozen_dtype)),
            "noise_scheduler": DDPMScheduler.from_pretrained(**source, subfolder="scheduler"),
        }


def freeze_in(text_encoder, dtype: torch.dtype) -> None:
    """The text encoder in ``dtype`` except its input embedding (the table holding the
    trained token), which stays float32 and hands ``dtype`` vectors to the layers.

    The token's rows then take float32 updates (a bf16 row could not hold a step of 5e-4
    times a small gradient), while the 340 M frozen weights of SD 2's encoder compute in
    the low dtype like the UNet's.
    """
    if dtype == torch.float32:
        return
    embedding = text_encoder.get_input_embeddings()
    for module in text_encoder.modules():
        if module is not embedding:
            for parameter in module.parameters(recurse=False):
                parameter.data = parameter.data.to(dtype)
    embedding.register_forward_hook(lambda module, inputs, output: output.to(dtype))


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


# ----------------------------------------------------------------------------- checkpoints


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


def _resume_key(config: TextualInversionConfig, token: str, prompt_name: str, learning_rates: list[float],
                template: HairTemplate) -> str:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE_CHANGES}
    key = {"config": fields, "token": token, "prompt_name": prompt_name, "lr": learning_rates}
    if (record := template_record(config.mask_region, template)) is not None:
        key["hair_template"] = record
    payload = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- training


def _diffusion_loss(batch, *, vae, unet, text_encoder, noise_scheduler, weight_dtype, seed) -> torch.Tensor:
    """Eq. 1 on one micro-batch: MSE between the UNet's prediction and the scheduler's target.

    An inpainting UNet also gets the batch's masks and masked-image latents, prepared as
    ``StableDiffusionInpaintPipeline`` does (image zeroed where the mask is >= 0.5, encoded
    by the VAE with a sampled latent; mask resized to the latents by nearest neighbour).
    """
    from diffusers.utils.torch_utils import randn_tensor

    generators = [torch.Generator().manual_seed(sample_seed(seed, int(i), NOISE_STREAM)) for i in batch["sample_index"]]
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



class _TokenTraining:
    """One token's training, step by step: set-up (``__init__``), :meth:`resume`,
    :meth:`prepare`, :meth:`run_steps` and :meth:`finish`."""

    def __init__(self, class_name: str, config: TextualInversionConfig, output_dir: str, accelerator, *,
                 prompt_name: str, lora: bool, hair_template: HairTemplate):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

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
        self.accelerator, self.config, self.output_dir, self.lora = accelerator, config, output_dir, lora
        self.class_name, self.prompt_name, self.hair_template = class_name, prompt_name, hair_template

        set_seed(config.seed)  # LoRA's random init; everything else draws from per-sample seeds
        # bf16/fp16: frozen weights in that dtype, the token rows in float32, the loss under
        # autocast; fp16 with a gradient scaler (Accelerate's, or the stage's own).
        self.precision = stage_precision(accelerator, config.mixed_precision, f"textual inversion ({class_name})")
        self.weight_dtype = DTYPES[self.precision.precision]
        models = load_components(config, frozen_dtype=self.weight_dtype)
        self.tokenizer, self.text_encoder, self.vae, self.unet, self.noise_scheduler = (
            models[k] for k in ("tokenizer", "text_encoder", "vae", "unet", "noise_scheduler")
        )
        in_channels, latent_channels = self.unet.config.in_channels, self.vae.config.latent_channels
        if in_channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(
                f"{config.model_id}: a UNet with {in_channels} input channels is neither a text-to-image UNet "
                f"({latent_channels}) nor an inpainting UNet ({2 * latent_channels + 1})"
            )
        self.inpainting = in_channels != latent_channels
        self.token = placeholder_token(class_name, config)
        self.token_ids = add_placeholder_tokens(
            self.tokenizer, self.text_encoder, self.token, config.num_vectors, config.initializer_for(class_name)
        )
        freeze_in(self.text_encoder, self.weight_dtype)

        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        lora_params = add_lora_adapters(self.unet, self.text_encoder, config) if lora else []
        embeddings = self.text_encoder.get_input_embeddings()
        embeddings.weight.requires_grad_(True)

        self.samples_per_step = config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
        scale = self.samples_per_step if config.scale_lr else 1
        param_groups = [{"params": [embeddings.weight], "lr": config.learning_rate * scale}]
        if lora_params:
            param_groups.append({"params": lora_params, "lr": config.lora_learning_rate * scale})
        self.resume_key = _resume_key(config, self.token, prompt_name, [group["lr"] for group in param_groups],
                                      hair_template)
        # AdamW with the recipe's defaults; a constant rate, as in the authors' release.
        self.optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.info = {
            "class_name": class_name,
            "prompt_name": prompt_name,
            "initializer_token": config.initializer_for(class_name),
            "mask_region": config.mask_region if self.inpainting else None,
            "hair_template": template_record(config.mask_region, hair_template) if self.inpainting else None,
            "num_vectors": config.num_vectors,
            "prompt_template": config.prompt_templates[0],
            "model_id": config.model_id,
            "revision": config.revision,
            "lora": lora,
        }

    def unwrapped(self, model):
        return self.accelerator.unwrap_model(model)

    def resume(self) -> tuple[int, dict | None]:
        """The step to start from and the saved training state (None for a fresh start).

        The token's vectors and the LoRA weights are restored here, before ``prepare``;
        the optimizer state is restored after it, in :meth:`prepare`.
        """
        checkpoint = latest_checkpoint(self.output_dir)
        if checkpoint is None:
            return 0, None
        start_step, folder = checkpoint
        state = load_state_file(os.path.join(folder, TRAINING_STATE_NAME))
        if state["resume_key"] != self.resume_key:
            raise ValueError(
                f"{folder} was written by a run with another config, class or model; resume needs the same "
                f"settings (only {', '.join(_RESUMABLE_CHANGES)} may change) or a fresh output_dir"
            )
        vectors, _ = read_embeds(folder)
        weight = self.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[self.token_ids] = vectors[self.token].to(weight.dtype)
        if self.lora:
            restore_lora_state(self.unet, self.text_encoder, state["lora"])
        return start_step, state

    def prepare(self, images, start_step: int, state: dict | None):
        """The data loader of the steps still to run; models and optimizer handed to Accelerate."""
        config, accelerator = self.config, self.accelerator
        prompts = [
            t.format(token=" ".join(vector_tokens(self.token, config.num_vectors)), class_name=self.prompt_name)
            for t in config.prompt_templates
        ]
        dataset = CausalTokenDataset(
            images, self.tokenizer, prompts, config.resolution, config.seed,
            start=start_step * self.samples_per_step,
            length=max(config.max_train_steps - start_step, 0) * self.samples_per_step,
            full_mask_probability=config.full_mask_probability if self.inpainting else None,
            mask_region=config.mask_region, hair_template=self.hair_template,
        )
        dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=config.train_batch_size, shuffle=False, num_workers=config.dataloader_num_workers
        )
        self.vae.to(accelerator.device)
        self.unet.to(accelerator.device)
        if self.lora:
            from diffusers.training_utils import cast_training_params

            # Adapters train in fp32 under fp16/bf16 weights.
            cast_training_params([self.unet, self.text_encoder], dtype=torch.float32)
        if self.lora and config.lora_unet:
            self.text_encoder, self.unet, self.optimizer, dataloader = accelerator.prepare(
                self.text_encoder, self.unet, self.optimizer, dataloader
            )
            self.trained_models = (self.text_encoder, self.unet)
        else:
            self.text_encoder, self.optimizer, dataloader = accelerator.prepare(
                self.text_encoder, self.optimizer, dataloader
            )
            self.trained_models = (self.text_encoder,)
        for model in self.trained_models:
            self.precision.take_over(accelerator, model)
        if self.precision.scaler is not None and state is not None and "scaler" in state:
            self.precision.scaler.load_state_dict(state["scaler"])
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.original_rows = self.unwrapped(self.text_encoder).get_input_embeddings().weight.detach().clone()
        self.keep = torch.ones(self.original_rows.shape[0], dtype=torch.bool, device=self.original_rows.device)
        self.keep[self.token_ids] = False
        return dataloader

    def run_steps(self, dataloader, start_step: int) -> int:
        """Train from ``start_step`` to ``max_train_steps``, checkpointing on the way; returns the last step."""
        config, accelerator = self.config, self.accelerator
        global_step = start_step
        for model in self.trained_models:
            model.train()
        progress = tqdm(
            total=config.max_train_steps, initial=global_step, desc=f"learning {self.token}",
            disable=not accelerator.is_local_main_process,
        )
        for batch in dataloader:
            with accelerator.accumulate(*self.trained_models):
                with torch.autocast(accelerator.device.type, dtype=self.weight_dtype,
                                    enabled=self.weight_dtype != torch.float32):
                    loss = _diffusion_loss(
                        batch, vae=self.vae, unet=self.unet, text_encoder=self.text_encoder,
                        noise_scheduler=self.noise_scheduler, weight_dtype=self.weight_dtype, seed=config.seed,
                    )
                if not torch.isfinite(loss):
                    # Stop before the update: the token and its last checkpoint stay as they were.
                    raise FloatingPointError(
                        f"textual inversion of class {self.class_name!r} ({self.token}): the loss is {loss.item()} "
                        f"at step {global_step + 1} of {config.max_train_steps}; lower the learning rate or use "
                        f"mixed_precision 'no'. Last checkpoint: {latest_checkpoint(self.output_dir)}"
                    )
                self.precision.backward(accelerator, loss)
                self.precision.step(accelerator, self.optimizer)
                self.optimizer.zero_grad()
                # Only the new token may move: AdamW's weight decay and stray gradients would
                # otherwise drift the original vocabulary.
                with torch.no_grad():
                    weight = self.unwrapped(self.text_encoder).get_input_embeddings().weight
                    weight[self.keep] = self.original_rows[self.keep]
            if accelerator.sync_gradients:
                global_step += 1
                progress.update(1)
                progress.set_postfix(loss=float(loss.detach()))
                if global_step % config.checkpointing_steps == 0:
                    self.save_checkpoint(global_step)
        progress.close()
        return global_step

    def save(self, folder: str, step: int) -> None:
        """The token (and LoRA weights) as of ``step`` into ``folder``."""
        # The token file last: learn_tokens takes a class whose file exists as finished.
        if self.lora:
            save_lora_folder(folder, self.unwrapped(self.unet), self.unwrapped(self.text_encoder), self.config)
        rows = self.unwrapped(self.text_encoder).get_input_embeddings().weight[self.token_ids]
        save_embeds(os.path.join(folder, EMBEDS_NAME), {self.token: rows},
                    {self.token: {**self.info, "global_step": step}})

    def save_checkpoint(self, step: int) -> None:
        if self.accelerator.is_main_process:
            folder = os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{step}")
            os.makedirs(folder, exist_ok=True)
            self.save(folder, step)
            lora_state = (
                lora_state_dicts(self.unwrapped(self.unet), self.unwrapped(self.text_encoder), self.config)
                if self.lora else {}
            )
            state = {"global_step": step, "resume_key": self.resume_key, "optimizer": self.optimizer.state_dict(),
                     "lora": lora_state}
            if self.precision.scaler is not None:
                state["scaler"] = self.precision.scaler.state_dict()
            save_state_file(state, os.path.join(folder, f"{TRAINING_STATE_NAME}.tmp"))
            os.replace(os.path.join(folder, f"{TRAINING_STATE_NAME}.tmp"), os.path.join(folder, TRAINING_STATE_NAME))
            # Older checkpoints keep their token snapshot; only the newest keeps the (large)
            # optimizer state needed to resume.
            for older_step, older in _checkpoints(self.output_dir):
                stale = os.path.join(older, TRAINING_STATE_NAME)
                if older_step != step and os.path.isfile(stale):
                    os.remove(stale)
        self.accelerator.wait_for_everyone()

    def finish(self, step: int) -> None:
        """The final token into ``output_dir`` (main process), every process waiting for it."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.save(self.output_dir, step)
        self.accelerator.wait_for_everyone()


def train_token(
    images,
    class_name: str,
    config: TextualInversionConfig,
    output_dir: str | os.PathLike,
    accelerator=None,
    *,
    prompt_name: str | None = None,
    lora: bool = False,
    hair_template: HairTemplate = HairTemplate(),
) -> LearnedToken:
    """The training loop behind ``learn_token`` (``lora=False``) and ``learn_token_lora``."""
    if lora and not isinstance(config, LoraTokenConfig):
        raise ValueError(f"LoRA training needs a LoraTokenConfig, got {type(config).__name__}")
    images = as_pil_list(images)
    training = _TokenTraining(
        class_name, config, os.fspath(output_dir), accelerator,
        prompt_name=class_name if prompt_name is None else prompt_name, lora=lora, hair_template=hair_template,
    )
    start_step, state = training.resume()
    dataloader = training.prepare(images, start_step, state)
    global_step = training.run_steps(dataloader, start_step)
    training.finish(global_step)
    return LearnedToken(
        token=training.token, path=os.path.join(training.output_dir, EMBEDS_NAME), start_step=start_step,
        global_step=global_step, tokenizer=training.tokenizer, text_encoder=training.unwrapped(training.text_encoder),
    )


def learn_token(
    images,
    class_name: str,
    config: TextualInversionConfig,
    output_dir: str | os.PathLike,
    accelerator=None,
    *,
    prompt_name: str | None = None,
    hair_template: HairTemplate = HairTemplate(),
) -> str:
    """Learn the causal token of one class; returns the path of ``learned_embeds.safetensors``.

    ``images``: PIL images or a ``datasets.Dataset`` with an ``image`` column.
    ``prompt_name``: the object word in the prompts (default ``class_name``; the paper uses
    "bird" for both Waterbirds classes). ``hair_template``: the region of
    ``config.mask_region="template"`` (the run's masking config's; default CelebA's
    alignment). Resumes from the latest ``output_dir/checkpoint-N``.
    Multi-GPU: run under ``accelerate launch``; every process calls this function.
    """
    return train_token(images, class_name, config, output_dir, accelerator, prompt_name=prompt_name,
                       hair_template=hair_template).path


def learn_token_lora(
    images,
    class_name: str,
    config: LoraTokenConfig,
    output_dir: str | os.PathLike,
    accelerator=None,
    *,
    prompt_name: str | None = None,
    hair_template: HairTemplate = HairTemplate(),
) -> str:
    """Learn the token together with LoRA adapters; returns ``output_dir``.

    ``output_dir`` then holds ``learned_embeds.safetensors`` and
    ``pytorch_lora_weights.safetensors``; load both with ``load_lora_causal``.
    """
    train_token(images, class_name, config, output_dir, accelerator, prompt_name=prompt_name, lora=True,
                hair_template=hair_template)
    return os.fspath(output_dir)


def learn_tokens(
    per_class_images: Mapping[int, Any],
    class_names: Sequence[str],
    config: TextualInversionConfig,
    output_dir: str | os.PathLike,
    *,
    prompt_name: str | Sequence[str] | None = None,
    hair_template: HairTemplate = HairTemplate(),
) -> dict[int, str]:
    """Learn one token per class; returns ``{class index: token}``.

    ``prompt_name``: the object word of the prompts, one for every class ("bird"), or one
    per class in class order (the run's ``class_prompts``: the words inpainting prompts
    with); default: each class's name. ``hair_template``: as :func:`learn_token`. Each class is saved to
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
    config.check_classes(class_names)
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
            learn_token(per_class_images[index], name, config, class_dir, prompt_name=prompt_names[index],
                        hair_template=hair_template)
        saved, saved_info = read_embeds(final)
        if token not in saved:
            raise ValueError(f"{final} holds {list(saved)}, not the token {token} of class {name!r}")
        tokens[index], vectors[token] = token, saved[token]
        info[token] = {**saved_info.get(token, {}), "class_index": index}
    if PartialState().is_main_process:
        save_embeds(os.path.join(output_dir, EMBEDS_NAME), vectors, info)
    PartialState().wait_for_everyone()
    return tokens

