"""Train the miniature diffusion prior dbb_hf ships (``dbb_hf/miniature/prior``).

A small Stable Diffusion 2 inpainting pipeline for the 32x32 toy world, trained from
scratch on the CPU in about an hour:

1. render a balanced pool of toy images (``dbb_hf.miniature.world``) with object and
   random-rectangle edit masks;
2. train the two-block VAE briefly (reconstruction + a small KL term), freeze it and set
   its ``scaling_factor`` to 1 / std of the pool's latents;
3. precompute what never changes between steps: the VAE latents of every image and of
   every masked image, the latent-resolution masks, and the embeddings of every caption
   (the text encoder stays frozen at its seeded random initialisation: the captions are a
   few dozen fixed strings, a frozen encoder still gives each word its own vectors for
   the UNet's cross-attention to read, and textual inversion later learns tokens against
   exactly this encoder);
4. train the 9-channel UNet with the denoising loss (epsilon prediction, min-SNR
   weighting), caption dropout for classifier-free guidance and an EMA of its weights, in
   an Accelerate loop with periodic checkpoints (rerunning resumes from the latest;
   every step's randomness is a function of (seed, step), so a resumed run equals an
   uninterrupted one);
5. save the pipeline (EMA UNet, fp16 safetensors, DPM-Solver++ scheduler) with
   ``save_pretrained``, a card, and a picture grid of edits.

    python recipes/train_miniature_prior.py --output_dir runs/prior --export_dir dbb_hf/miniature/prior
    python recipes/train_miniature_prior.py --config_file recipes/train_miniature_prior.yaml
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dbb_hf.miniature import world
from dbb_hf.miniature.architecture import (
    PriorArchitecture,
    build_components,
    build_training_scheduler,
    save_pipeline,
)

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class PriorTrainingConfig:
    output_dir: str = field(default="runs/miniature_prior", metadata={"help": "Working folder: checkpoints, caches, logs."})
    export_dir: str | None = field(
        default=None, metadata={"help": "Where the final pipeline folder is written (default: <output_dir>/pipeline)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the pool, masks, initialisation and every step."})
    num_images: int = field(default=20000, metadata={"help": "Rendered training images (balanced over the 4 groups)."})
    masks_per_image: int = field(default=2, metadata={"help": "Edit masks drawn per image (each a training pair)."})
    object_mask_fraction: float = field(
        default=0.7, metadata={"help": "Probability that a mask is the object's square box (else a random rectangle)."}
    )
    max_mask_dilation: int = field(default=2, metadata={"help": "Object masks are dilated by 0..this many pixels."})
    generic_caption_probability: float = field(
        default=0.1, metadata={"help": "Probability of a caption without the orientation ('a photo of a bar')."}
    )
    caption_dropout: float = field(default=0.1, metadata={"help": "Probability of the empty caption (for guidance)."})
    vae_steps: int = field(default=1500, metadata={"help": "VAE training steps."})
    vae_batch_size: int = field(default=64, metadata={"help": "VAE batch size."})
    vae_learning_rate: float = field(default=1e-3, metadata={"help": "VAE learning rate (AdamW)."})
    kl_weight: float = field(default=1e-6, metadata={"help": "Weight of the VAE's KL term (summed over latents)."})
    decoder_steps: int = field(
        default=1500,
        metadata={"help": "Extra steps for the VAE decoder alone, encoder frozen (the UNet's latents do not change)."},
    )
    max_train_steps: int = field(default=3000, metadata={"help": "UNet optimizer steps."})
    train_batch_size: int = field(default=64, metadata={"help": "UNet batch size."})
    learning_rate: float = field(default=3e-4, metadata={"help": "UNet peak learning rate (AdamW)."})
    lr_warmup_steps: int = field(default=200, metadata={"help": "Linear warmup steps (then cosine decay)."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Final learning rate as a fraction of the peak."})
    snr_gamma: float = field(default=5.0, metadata={"help": "Min-SNR loss weighting gamma (0: plain MSE)."})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the UNet weights (the EMA is saved)."})
    checkpointing_steps: int = field(default=250, metadata={"help": "Save a checkpoint every N steps."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)."})
    grid_images: int = field(default=16, metadata={"help": "Test images in the edits.png grid (0: no grid)."})
    save_dtype: str = field(default="float16", metadata={"help": "dtype of the saved weights (float16 or float32)."})

    def __post_init__(self):
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"save_dtype must be float16 or float32, got {self.save_dtype!r}")
        for name in ("num_images", "masks_per_image", "max_train_steps", "train_batch_size", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_images < 4:
            raise ValueError("num_images must be at least 4 (one per group)")
        for name in ("object_mask_fraction", "caption_dropout", "generic_caption_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """Randomness of one step: a function of (seed, step), so resuming reproduces it."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], as the pipeline's image processor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------- VAE


def sample_batch(vae, images: np.ndarray, batch_size: int, gen: torch.Generator):
    """A random batch of the pool and latents sampled from the VAE's posterior of it."""
    index = torch.randint(len(images), (batch_size,), generator=gen)
    x = to_tensor(images[index.numpy()])
    posterior = vae.encode(x).latent_dist
    return x, posterior, posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)


def train_vae(vae, images: np.ndarray, config: PriorTrainingConfig, log) -> dict:
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.vae_steps, config.vae_learning_rate * 0.05)
    progress = tqdm(range(config.vae_steps), desc="vae", mininterval=10)
    recent = []
    for step in progress:
        x, posterior, z = sample_batch(vae, images, config.vae_batch_size, step_generator(config.seed, step, stream=1))
        reconstruction = vae.decode(z).sample
        mse = F.mse_loss(reconstruction, x)
        kl = posterior.kl().mean()
        loss = mse + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent.append(mse.item())
        if (step + 1) % 100 == 0:
            progress.set_postfix(mse=f"{np.mean(recent[-100:]):.4f}", kl=f"{kl.item():.1f}")
            log({"stage": "vae", "step": step + 1, "mse": float(np.mean(recent[-100:])), "kl": kl.item()})
    vae.eval()
    vae.requires_grad_(False)
    return {"vae_final_mse": float(np.mean(recent[-100:]))}


def finetune_decoder(vae, images: np.ndarray, config: PriorTrainingConfig, log) -> dict:
    """Train the decoder further on the frozen encoder's sampled latents (sharper bars).

    The encoder, hence every latent the UNet learns from, stays as it is, so this can run
    before, after or beside the UNet's training (as Stable Diffusion's improved VAE decoders).
    """
    vae.requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in trainable:
        p.requires_grad_(True)
    vae.decoder.train()
    optimizer = torch.optim.AdamW(trainable, lr=config.vae_learning_rate * 0.5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.decoder_steps, config.vae_learning_rate * 0.02)
    recent = []
    for step in tqdm(range(config.decoder_steps), desc="decoder", mininterval=10):
        with torch.no_grad():  # the encoder is frozen
            x, _, z = sample_batch(vae, images, config.vae_batch_size, step_generator(config.seed, step, stream=2))
        mse = F.mse_loss(vae.decode(z).sample, x)
        optimizer.zero_grad(set_to_none=True)
        mse.backward()
        optimizer.step()
        schedule.step()
        recent.append(mse.item())
        if (step + 1) % 100 == 0:
            log({"stage": "decoder", "step": step + 1, "mse": float(np.mean(recent[-100:]))})
    vae.requires_grad_(False)
    vae.eval()
    return {"decoder_final_mse": float(np.mean(recent[-100:]))}


@torch.no_grad()
def encode(vae, images: np.ndarray, masks: np.ndarray | None = None, batch_size: int = 512):
    """Posterior means and stds (unscaled) of ``images``, or of the masked images.

    The masked image is the pipeline's: pixels under the mask set to 0 in [-1, 1].
    """
    means, stds = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="encode", mininterval=10):
        x = to_tensor(images[start : start + batch_size])
        if masks is not None:
            x = x * torch.from_numpy(~masks[start : start + batch_size])[:, None].float()
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------------------- data


def build_pool(config: PriorTrainingConfig, arch: PriorArchitecture):
    """Images, edit masks, groups (per training pair) of the rendered pool."""
    samples = world.render_pool(config.num_images, config.seed, arch.image_size)
    rng = np.random.default_rng([config.seed, 1])
    images = np.stack([s.image for s in samples])
    masks, image_index = [], []
    for i, sample in enumerate(samples):
        for mask in world.edit_masks(
            sample, rng, config.masks_per_image, config.object_mask_fraction, config.max_mask_dilation
        ):
            masks.append(mask)
            image_index.append(i)
    groups = np.asarray([2 * s.label + s.background for s in samples])
    return images, np.stack(masks), np.asarray(image_index), groups


def caption_table(arch_components: dict) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """Captions per group (4 lists), generic captions per group, and all distinct strings."""
    specific = [world.captions(g // 2, g % 2) for g in range(4)]
    generic = [world.generic_captions(g % 2) for g in range(4)]
    strings = sorted({c for row in specific + generic for c in row} | {""})
    return specific, generic, strings


@torch.no_grad()
def embed_captions(tokenizer, text_encoder, strings: list[str]) -> torch.Tensor:
    ids = tokenizer(strings, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def precompute(config, arch, components, out: Path, log) -> dict:
    """The tensors the UNet trains on, cached in ``out/pool.safetensors``."""
    cache = out / "pool.safetensors"
    if cache.exists():
        return load_file(cache)
    images, masks, image_index, groups = build_pool(config, arch)
    vae = components["vae"]
    image_mean, _ = encode(vae, images)
    masked_mean, masked_std = encode(vae, images[image_index], masks)
    scaling = 1.0 / image_mean.std().item()
    vae.register_to_config(scaling_factor=scaling)
    log({"stage": "precompute", "scaling_factor": scaling,
         "posterior_std_over_latent_std": (masked_std.mean() * scaling).item()})
    # Masks at latent resolution exactly as the pipeline makes them (nearest interpolation).
    pixel_masks = torch.from_numpy(masks).float()[:, None]
    latent_masks = F.interpolate(pixel_masks, size=image_mean.shape[-2:])
    tensors = {
        "latents": (image_mean * scaling).half(),
        "masked_latents": (masked_mean * scaling).half(),
        "masked_std": (masked_std * scaling).half(),
        "latent_masks": latent_masks.bool(),
        "image_index": torch.from_numpy(image_index).long(),
        "groups": torch.from_numpy(groups).long(),
    }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, cache)
    return tensors


# ---------------------------------------------------------------------------- UNet


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    alphas = noise_scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def make_batch(step, pool, caption_ids, config, noise_scheduler):
    """One training batch; every draw from ``step_generator(seed, step)``."""
    gen = step_generator(config.seed, step)
    n_pairs = len(pool["image_index"])
    pair = torch.randint(n_pairs, (config.train_batch_size,), generator=gen)
    image = pool["image_index"][pair]
    latents = pool["latents"][image].float()
    masked = pool["masked_latents"][pair].float()
    masked = masked + pool["masked_std"][pair].float() * torch.randn(masked.shape, generator=gen)
    mask = pool["latent_masks"][pair].float()
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (len(pair),), generator=gen)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    # Caption: empty (dropout), generic, or one naming the object and the background.
    groups = pool["groups"][image]
    u = torch.rand(len(pair), generator=gen)
    specific, generic, empty = caption_ids
    pick = torch.randint(1 << 30, (len(pair),), generator=gen)
    ids = []
    for g, draw, p in zip(groups.tolist(), u.tolist(), pick.tolist()):
        if draw < config.caption_dropout:
            ids.append(empty)
        elif draw < config.caption_dropout + config.generic_caption_probability:
            ids.append(generic[g][p % len(generic[g])])
        else:
            ids.append(specific[g][p % len(specific[g])])
    return {
        "model_input": torch.cat([noisy, mask, masked], dim=1),
        "noise": noise,
        "timesteps": timesteps,
        "caption": torch.tensor(ids),
    }


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    return found[-1] if found else None


def train_unet(config, components, pool, caption_embeds, caption_ids, out: Path, log) -> dict:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    unet = components["unet"]
    unet.train()
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=1e-2)
    schedule = cosine_with_warmup(optimizer, config)
    unet, optimizer, schedule = accelerator.prepare(unet, optimizer, schedule)
    accelerator.register_for_checkpointing(ema)
    noise_scheduler = build_training_scheduler()

    start = 0
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = int(checkpoint.name[len(CHECKPOINT_PREFIX):])
        log({"stage": "unet", "resumed_from": start})
    progress = tqdm(range(start, config.max_train_steps), desc="unet", initial=start, total=config.max_train_steps,
                    mininterval=10)
    recent, started = [], time.time()
    device = accelerator.device
    caption_embeds = caption_embeds.to(device)
    for step in progress:
        batch = make_batch(step, pool, caption_ids, config, noise_scheduler)
        prediction = unet(
            batch["model_input"].to(device),
            batch["timesteps"].to(device),
            caption_embeds[batch["caption"].to(device)],
        ).sample
        per_sample = F.mse_loss(prediction.float(), batch["noise"].to(device), reduction="none").mean(dim=(1, 2, 3))
        if config.snr_gamma > 0:
            per_sample = per_sample * min_snr_weights(noise_scheduler, batch["timesteps"], config.snr_gamma).to(device)
        loss = per_sample.mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        recent.append(loss.item())
        done = step + 1
        if done % 50 == 0:
            mean = float(np.mean(recent[-50:]))
            progress.set_postfix(loss=f"{mean:.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
            log({"stage": "unet", "step": done, "loss": mean, "lr": schedule.get_last_lr()[0],
                 "seconds": round(time.time() - started, 1)})
        if done % config.checkpointing_steps == 0 or done == config.max_train_steps:
            save_checkpoint(accelerator, out, done, config.checkpoints_total_limit)
    ema.copy_to(accelerator.unwrap_model(unet).parameters())
    return {"unet_final_loss": float(np.mean(recent[-200:])) if recent else None,
            "unet_seconds_this_run": round(time.time() - started, 1)}


def cosine_with_warmup(optimizer, config):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""

    def factor(step):
        if step < config.lr_warmup_steps:
            return (step + 1) / config.lr_warmup_steps
        progress = (step - config.lr_warmup_steps) / max(1, config.max_train_steps - config.lr_warmup_steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(accelerator, out: Path, step: int, keep: int) -> None:
    """Write ``checkpoint-<step>`` atomically (temporary folder, then rename); keep the newest ``keep``."""
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    partial = out / f".partial-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(partial, ignore_errors=True)
    accelerator.save_state(str(partial))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    found = sorted(out.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- export


def edit_grid(pipeline_dir: str, path: Path, count: int = 16, steps: int = 20, guidance: float = 7.5,
              seed: int = 0) -> None:
    """A PNG grid: test images, their square-box masks, and the edits to the other class."""
    from dbb_hf.data.toy import LABEL_NAMES, ToyConfig, load_toy
    from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline

    test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=max(4, count), seed=seed + 99))["test"]
    cfg = InpaintingConfig(model_id=pipeline_dir, resolution=32, num_inference_steps=steps,
                           guidance_scale=guidance, torch_dtype="float32")
    pipe = load_inpainting_pipeline(cfg, device="cpu")
    rows = [[], [], []]
    for i, row in enumerate(test):
        mask = world.object_edit_mask(np.asarray(row["mask"]) > 127, 1)
        target = 1 - row["label"]
        prompt = f"a photo of a {LABEL_NAMES[target].replace('_', ' ')}"
        edit = pipe(prompt=prompt, image=row["image"], mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
                    height=32, width=32, num_inference_steps=steps, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(i)).images[0]
        source = np.asarray(row["image"])
        composite = np.where(mask[..., None], np.asarray(edit), source)
        rows[0].append(source)
        rows[1].append(np.where(mask[..., None], 128, source).astype(np.uint8))
        rows[2].append(composite)
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)


def parameter_counts(pipeline_dir: str) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    models = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    return {name: sum(p.numel() for p in cls.from_pretrained(pipeline_dir, subfolder=name).parameters())
            for name, cls in models.items()}


def folder_megabytes(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def write_card(pipeline_dir: str, run_dir: Path) -> None:
    """The pipeline's ``README.md``: how it was made, from the run's own config and log."""
    settings = json.loads((run_dir / "config.json").read_text())
    config, arch = settings["training"], settings["architecture"]
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    # Records a run marked as a discarded branch (not in the saved weights) stay out of the card.
    records = [r for r in records if "branch" not in r]
    unet_log = [r for r in records if r.get("stage") == "unet" and "loss" in r]
    vae_log = [r for r in records if r.get("stage") == "vae"]
    decoder_log = [r for r in records if r.get("stage") == "decoder"]
    launches = "; ".join(f"`{r['command']}`" + (f" ({r['note']})" if r.get("note") else "")
                         for r in records if r.get("stage") == "launch") or f"`{settings.get('command')}`"
    decoder_note = f": final MSE {decoder_log[-1]['mse']:.4f}" if decoder_log else ""
    pre = next((r for r in records if r.get("stage") == "precompute"), {})
    seconds = {}
    for r in records:
        if r.get("stage") == "timing":
            seconds[r["part"]] = seconds.get(r["part"], 0.0) + r["seconds"]
    timing = ", ".join(f"{part} {value / 60:.1f} min" for part, value in seconds.items()) or "not logged"
    counts = parameter_counts(pipeline_dir)
    templates = "; ".join(f'"{t}"' for t in world.CAPTION_TEMPLATES)
    generic = "; ".join(f'"{t}"' for t in world.GENERIC_TEMPLATES)
    loss_curve = ", ".join(f"{r['step']}: {r['loss']:.3f}" for r in unet_log[:: max(1, len(unet_log) // 8)])
    card = f"""---
library_name: diffusers
pipeline_tag: image-to-image
tags: [dbb_hf, stable-diffusion, inpainting, miniature, toy]
license: apache-2.0
---

# dbb_hf miniature inpainting prior

A `StableDiffusionInpaintPipeline` for dbb_hf's embedded toy world (32x32 images of a
horizontal or vertical bar over land or water), trained from scratch on the CPU by
`recipes/train_miniature_prior.py`, so that dbb_hf's real diffusion path (textual
inversion, text-conditioned inpainting, integrated-gradient pruning) runs offline through
the same `from_pretrained` calls as with Stable Diffusion 2. It knows nothing but the toy
world.

```python
from diffusers import StableDiffusionInpaintPipeline
from dbb_hf.miniature import PRIOR_PATH
pipe = StableDiffusionInpaintPipeline.from_pretrained(PRIOR_PATH)   # float32 on the CPU
edit = pipe("a photo of a vertical bar", image=image, mask_image=mask, height=32, width=32,
            num_inference_steps=20, guidance_scale=5.0).images[0]
```

## Architecture ({folder_megabytes(pipeline_dir):.1f} MB, weights saved in {config['save_dtype']})

| component | what | parameters |
|---|---|---:|
| unet | `UNet2DConditionModel`, 9 input channels (latents, mask, masked-image latents), blocks {list(arch['unet_channels'])}, {arch['unet_layers_per_block']} layer(s) per block, heads {list(arch['unet_heads'])}, cross-attention on every block, SD2-style linear projections, 16x16 latents | {counts['unet']:,} |
| vae | `AutoencoderKL`, 2 blocks {list(arch['vae_channels'])} (2x downsampling: 32x32x3 <-> 16x16x{arch['latent_channels']}), `scaling_factor` {pre.get('scaling_factor', float('nan')):.4f} (1 / std of the training latents) | {counts['vae']:,} |
| text_encoder | `CLIPTextModel`, width {arch['text_hidden_size']}, {arch['text_layers']} layers, {arch['text_heads']} heads, {arch['max_prompt_tokens']} positions; frozen at its seeded random initialisation | {counts['text_encoder']:,} |
| tokenizer | `CLIPTokenizer` (byte-level BPE from `dbb_hf.tiny.diffusion.build_clip_tokenizer`), every caption word a single token | - |
| scheduler | `DPMSolverMultistepScheduler` (DPM-Solver++) on SD2's scaled-linear betas (0.00085-0.012, 1000 steps, epsilon prediction); 20-25 steps make good edits | - |

## Data

{config['num_images']:,} images rendered by `dbb_hf.data.toy.render` (the toy benchmark's own
drawing code), balanced over the four (object, background) groups, image `i` drawn from
seed `({config['seed']}, i)`; {config['masks_per_image']} edit masks per image
({config['num_images'] * config['masks_per_image']:,} training pairs): with probability
{config['object_mask_fraction']} the bar's bounding box grown to a square
(`dbb_hf.masking.region_mask(mask, "square_box")`, the region dbb_hf repaints) and dilated
by 0-{config['max_mask_dilation']} px, otherwise a random rectangle. Masked images and
latent masks are prepared as `StableDiffusionInpaintPipeline` prepares them.

Captions name the object and the background: {templates}; with probability
{config['generic_caption_probability']} a caption without the orientation ({generic}), and with probability
{config['caption_dropout']} the empty caption (classifier-free guidance).

## Training

- VAE: {config['vae_steps']} steps, batch {config['vae_batch_size']}, AdamW {config['vae_learning_rate']}, MSE + {config['kl_weight']} x KL; final reconstruction MSE {vae_log[-1]['mse'] if vae_log else float('nan'):.4f} (images in [-1, 1]); then frozen. Its decoder alone then trained {config.get('decoder_steps', 0)} more steps on the frozen encoder's latents (the UNet's latents do not change){decoder_note}.
- Precomputed once: latents of every image and masked image, latent masks, caption embeddings.
- UNet: {config['max_train_steps']} steps, batch {config['train_batch_size']}, AdamW {config['learning_rate']} (warmup {config['lr_warmup_steps']}, cosine to {config['min_lr_ratio']} x), min-SNR weighting (gamma {config['snr_gamma']}), gradient clipping 1.0, EMA {config['ema_decay']} (the EMA weights are saved).
- Loss (min-SNR weighted, mean of 50 steps) by step: {loss_curve}.
- Time on 2 shared CPU cores (1 torch thread, other jobs beside it): {timing}.
- Commands, in order (each run resumes from the latest checkpoint; the learning-rate schedule follows each run's `max_train_steps`): {launches}.

## Quality gates

<!-- gates -->
Not measured yet: `python benchmarks/miniature_gates.py --update_card`.
<!-- /gates -->
"""
    (Path(pipeline_dir) / "README.md").write_text(card)


def main(argv=None) -> int:
    parser = HfArgumentParser((PriorTrainingConfig, PriorArchitecture))
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--config_file":
        config, arch = parser.parse_yaml_file(args[1])
    else:
        config, arch = parser.parse_args_into_dataclasses(args)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"

    def log(record):
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    command = "python recipes/train_miniature_prior.py " + " ".join(args)
    (out / "config.json").write_text(
        json.dumps({"training": asdict(config), "architecture": asdict(arch), "command": command}, indent=2)
    )
    log({"stage": "launch", "command": command})
    began = time.time()
    components = build_components(arch, out / "tokenizer", seed=config.seed)
    figures = {}
    vae_dir = out / "vae"
    if (vae_dir / "config.json").exists():
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(vae_dir)
        components["vae"].requires_grad_(False).eval()
    else:
        images = np.stack([s.image for s in world.render_pool(config.num_images, config.seed, arch.image_size)])
        figures.update(train_vae(components["vae"], images, config, log))
        log({"stage": "timing", "part": "render + VAE", "seconds": round(time.time() - began, 1)})
    part_began = time.time()
    had_pool = (out / "pool.safetensors").exists()
    pool = precompute(config, arch, components, out, log)
    if not had_pool:
        log({"stage": "timing", "part": "precompute", "seconds": round(time.time() - part_began, 1)})
    if not (vae_dir / "config.json").exists():
        components["vae"].save_pretrained(vae_dir)  # scaling_factor set by precompute
    specific, generic, strings = caption_table(components)
    components["text_encoder"].requires_grad_(False).eval()
    caption_embeds = embed_captions(components["tokenizer"], components["text_encoder"], strings)
    index = {s: i for i, s in enumerate(strings)}
    caption_ids = ([[index[c] for c in row] for row in specific], [[index[c] for c in row] for row in generic],
                   index[""])
    part_began = time.time()
    figures.update(train_unet(config, components, pool, caption_embeds, caption_ids, out, log))
    log({"stage": "timing", "part": "UNet", "seconds": round(time.time() - part_began, 1)})
    components["unet"].eval()
    decoder_dir = out / "vae-decoder-finetuned"
    if config.decoder_steps and (decoder_dir / "config.json").exists():
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(decoder_dir)
    elif config.decoder_steps:
        part_began = time.time()
        images = np.stack([s.image for s in world.render_pool(config.num_images, config.seed, arch.image_size)])
        figures.update(finetune_decoder(components["vae"], images, config, log))
        components["vae"].save_pretrained(decoder_dir)
        log({"stage": "timing", "part": "decoder", "seconds": round(time.time() - part_began, 1)})
    export = Path(config.export_dir or out / "pipeline")
    if export.exists():
        shutil.rmtree(export)
    save_pipeline(components, export, dtype=getattr(torch, config.save_dtype))
    figures["seconds_this_run"] = round(time.time() - began, 1)
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    log({"stage": "done", **figures})
    write_card(str(export), out)
    if config.grid_images:
        edit_grid(str(export), out / "edits.png", count=config.grid_images)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
