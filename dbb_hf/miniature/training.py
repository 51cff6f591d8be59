"""Train a miniature inpainting prior on one of its worlds (the toy bars, or real faces).

One training code for every world; a world (:mod:`.world` for the toy, :mod:`.faces` for
CelebA faces) only says what the images, the edit masks and the captions are. Steps:

1. the world's images (rendered toy images, or real faces squeezed to the prior's square
   side as the inpainting stage squeezes them) with edit masks of two kinds: the world's
   object region (the toy bar's square box, the hair template of an aligned face) and
   random rectangles;
2. the VAE trained briefly (reconstruction + a small KL term), frozen, its
   ``scaling_factor`` set to 1 / std of the pool's latents;
3. what never changes between steps precomputed: the VAE latents of every image and of
   every masked image, the latent-resolution masks, and the embeddings of every caption
   (the text encoder stays frozen at its seeded random initialisation: the captions are a
   few hundred fixed strings, a frozen encoder still gives each word its own vectors for
   the UNet's cross-attention to read, and textual inversion later learns tokens against
   exactly this encoder);
4. the 9-channel UNet trained with the denoising loss (epsilon prediction, min-SNR
   weighting), caption dropout for classifier-free guidance and an EMA of its weights, in
   an Accelerate loop with periodic checkpoints (a rerun resumes from the latest; every
   step's randomness is a function of (seed, step), so a resumed run equals an
   uninterrupted one);
5. the VAE decoder trained further on the frozen encoder's latents (sharper images; the
   UNet's latents do not change);
6. the pipeline saved (EMA UNet, fp16 safetensors, DPM-Solver++ scheduler) with
   ``save_pretrained``, its card (``dbb_hf/hub/templates/miniature_prior_card.md``) and a picture grid
   of edits.

``recipes/train_miniature_prior.py`` is the command line; its YAML files hold the
settings of the shipped priors.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from .architecture import PriorArchitecture, build_components, build_training_scheduler, save_pipeline
from .card import write_card

CHECKPOINT_PREFIX = "checkpoint-"
DECODER_DIR = "vae-decoder-finetuned"
WORLDS = ("toy", "face")


@dataclass
class PriorTrainingConfig:
    output_dir: str = field(default="runs/miniature_prior", metadata={"help": "Working folder: checkpoints, caches, logs."})
    export_dir: Optional[str] = field(
        default=None, metadata={"help": "Where the final pipeline folder is written (default: <output_dir>/pipeline)."}
    )
    world: str = field(
        default="toy", metadata={"help": "toy (rendered bars, dbb_hf.miniature.world) or face (real CelebA faces)."}
    )
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "face world: a CelebA folder in the official layout (with identity_CelebA.txt)."}
    )
    partition_seed: int = field(
        default=0,
        metadata={"help": "face world: seed of the prior/experiment identity partition (dbb_hf.miniature.faces)."},
    )
    horizontal_flip: bool = field(
        default=True, metadata={"help": "face world: add every face's mirror image to the pool."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the pool, masks, initialisation and every step."})
    num_images: int = field(
        default=20000,
        metadata={"help": "toy: rendered training images (balanced over the 4 groups); face: at most this many "
                  "of the prior identities' faces (before mirroring)."},
    )
    masks_per_image: int = field(default=2, metadata={"help": "Edit masks drawn per image (each a training pair)."})
    object_mask_fraction: float = field(
        default=0.7,
        metadata={"help": "Probability that a mask is the world's object region (toy: the bar's square box; "
                  "face: the jittered hair template), else a random rectangle."},
    )
    max_mask_dilation: int = field(default=2, metadata={"help": "Object masks are dilated by 0..this many pixels."})
    generic_caption_probability: float = field(
        default=0.1,
        metadata={"help": "Probability of a caption without the class attribute ('a photo of a bar', "
                  "'a photo of a hair')."},
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
    keep_checkpoints_every: int = field(
        default=0,
        metadata={"help": "Also keep every checkpoint whose step is a multiple of this (0: none), beyond the limit, "
                  "so intermediate priors can be exported and measured."},
    )
    only_decoder: bool = field(
        default=False,
        metadata={"help": "Only fine-tune the decoder of the run's trained VAE (decoder_steps), e.g. in a second "
                  "process beside the UNet's training: the encoder and so the UNet's latents stay as they are, "
                  "and the main run then uses this decoder."},
    )
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)."})
    grid_images: int = field(default=16, metadata={"help": "Test images in the edits.png grid (0: no grid)."})
    save_dtype: str = field(default="float16", metadata={"help": "dtype of the saved weights (float16 or float32)."})

    def __post_init__(self):
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {WORLDS}, got {self.world!r}")
        if self.world == "face" and not self.data_dir:
            raise ValueError("world 'face' needs data_dir (a CelebA folder in the official layout)")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"save_dtype must be float16 or float32, got {self.save_dtype!r}")
        for name in ("num_images", "masks_per_image", "max_train_steps", "train_batch_size", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.world == "toy" and self.num_images < 4:
            raise ValueError("num_images must be at least 4 (one per group)")
        for name in ("object_mask_fraction", "caption_dropout", "generic_caption_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def make_world(config: PriorTrainingConfig, arch: PriorArchitecture):
    """The world object of ``config.world`` (see :class:`dbb_hf.miniature.world.ToyWorld`)."""
    if config.world == "face":
        from .faces import FaceWorld

        return FaceWorld(config, arch)
    from .world import ToyWorld

    return ToyWorld(config, arch)


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
    """Train the decoder further on the frozen encoder's sampled latents (sharper images).

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


@torch.no_grad()
def embed_captions(tokenizer, text_encoder, strings: list[str]) -> torch.Tensor:
    ids = tokenizer(strings, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def caption_index(world) -> tuple[list[str], tuple]:
    """Every distinct caption string (the empty one included) and, per caption class, the
    indices of its specific and generic captions, and the empty caption's index."""
    specific, generic = world.caption_table()
    strings = sorted({c for row in specific + generic for c in row} | {""})
    index = {s: i for i, s in enumerate(strings)}
    ids = ([[index[c] for c in row] for row in specific], [[index[c] for c in row] for row in generic], index[""])
    return strings, ids


def precompute(world, components, out: Path, log) -> dict:
    """The tensors the UNet trains on, cached in ``out/pool.safetensors``."""
    cache = out / "pool.safetensors"
    if cache.exists():
        return load_file(cache)
    images, masks, image_index, caption_class = world.training_pairs()
    vae = components["vae"]
    image_mean, _ = encode(vae, images)
    masked_mean, masked_std = encode(vae, images[image_index], masks)
    scaling = 1.0 / image_mean.std().item()
    vae.register_to_config(scaling_factor=scaling)
    log({"stage": "precompute", "scaling_factor": scaling, "images": len(images), "pairs": len(image_index),
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
        "caption_class": torch.from_numpy(caption_class).long(),
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
    # Caption: empty (dropout), generic (no class attribute), or one naming it.
    classes = pool["caption_class"][image]
    u = torch.rand(len(pair), generator=gen)
    specific, generic, empty = caption_ids
    pick = torch.randint(1 << 30, (len(pair),), generator=gen)
    ids = []
    for c, draw, p in zip(classes.tolist(), u.tolist(), pick.tolist()):
        if draw < config.caption_dropout:
            ids.append(empty)
        elif draw < config.caption_dropout + config.generic_caption_probability:
            ids.append(generic[c][p % len(generic[c])])
        else:
            ids.append(specific[c][p % len(specific[c])])
    return {
        "model_input": torch.cat([noisy, mask, masked], dim=1),
        "noise": noise,
        "timesteps": timesteps,
        "caption": torch.tensor(ids),
    }


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints in ``out``, oldest first."""
    return sorted(out.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
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
            save_checkpoint(accelerator, out, done, config.checkpoints_total_limit, config.keep_checkpoints_every)
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


def save_checkpoint(accelerator, out: Path, step: int, keep: int, keep_every: int = 0) -> None:
    """Write ``checkpoint-<step>`` atomically (temporary folder, then rename); keep the newest
    ``keep``, and those whose step is a multiple of ``keep_every``."""
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    partial = out / f".partial-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(partial, ignore_errors=True)
    accelerator.save_state(str(partial))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in checkpoints(out)[:-keep]:
        if not (keep_every and int(old.name[len(CHECKPOINT_PREFIX):]) % keep_every == 0):
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- export


def export_checkpoint(run_dir: str | Path, step: int, export_dir: str | Path, dtype: str = "float16") -> str:
    """The pipeline of an intermediate ``checkpoint-<step>`` (its EMA UNet) with the run's VAE.

    For measuring a prior while it trains (``benchmarks/miniature_gates.py --prior``); it
    gets no card, since the run's log describes the finished prior.
    """
    from diffusers import AutoencoderKL
    from diffusers.training_utils import EMAModel

    run_dir = Path(run_dir)
    settings = json.loads((run_dir / "config.json").read_text())
    config, arch = PriorTrainingConfig(**settings["training"]), PriorArchitecture(**settings["architecture"])
    checkpoint = run_dir / f"{CHECKPOINT_PREFIX}{step}"
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint} not found; the run has {[p.name for p in checkpoints(run_dir)]}")
    components = build_components(arch, run_dir / "tokenizer", seed=config.seed,
                                  words=make_world(config, arch).tokenizer_words)
    decoder_dir = run_dir / DECODER_DIR
    components["vae"] = AutoencoderKL.from_pretrained(decoder_dir if decoder_dir.is_dir() else run_dir / "vae")
    ema = EMAModel(components["unet"].parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
    # accelerate saves a registered object's state_dict (tensors and numbers) as custom_checkpoint_0.pkl.
    ema.load_state_dict(torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=True))
    ema.copy_to(components["unet"].parameters())
    export_dir = Path(export_dir)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    return save_pipeline(components, export_dir, dtype=getattr(torch, dtype))


def parse_args(argv: list[str]) -> tuple[PriorTrainingConfig, PriorArchitecture]:
    """``[--config_file YAML] [--field value ...]``: the YAML's ``training`` and ``architecture``
    mappings are the defaults, the flags override them."""
    from ..config import load_yaml, pop_flag

    parser = HfArgumentParser((PriorTrainingConfig, PriorArchitecture))
    config_file, argv = pop_flag(list(argv), "--config_file")
    if config_file is not None:
        settings = load_yaml(config_file)
        unknown = sorted(set(settings) - {"training", "architecture"})
        if unknown:
            raise ValueError(f"{config_file}: unknown section(s) {unknown}; expected training and architecture")
        defaults = {**settings.get("training", {}), **settings.get("architecture", {})}
        known = {action.dest for action in parser._actions}
        if sorted(set(defaults) - known):
            raise ValueError(f"{config_file}: unknown field(s) {sorted(set(defaults) - known)}")
        parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(argv)


def train_decoder(world, config: PriorTrainingConfig, out: Path, log) -> dict:
    """Fine-tune the decoder of the run's saved VAE into ``out/vae-decoder-finetuned``.

    Written aside and renamed, so a run that looks for it never finds half of it.
    """
    from diffusers import AutoencoderKL

    if not (out / "vae" / "config.json").exists():
        raise FileNotFoundError(f"{out / 'vae'} not found: the run has not trained its VAE yet")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    began = time.time()
    figures = finetune_decoder(vae, world.images(), config, log)
    partial = out / f".partial-{DECODER_DIR}"
    shutil.rmtree(partial, ignore_errors=True)
    vae.save_pretrained(partial)
    shutil.rmtree(out / DECODER_DIR, ignore_errors=True)
    partial.rename(out / DECODER_DIR)
    log({"stage": "timing", "part": "decoder", "seconds": round(time.time() - began, 1)})
    return figures


def train_prior(config: PriorTrainingConfig, arch: PriorArchitecture, command: str) -> dict:
    """Train (or resume) the prior of ``config.world`` and export it; the run's figures."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"

    def log(record):
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    world = make_world(config, arch)
    if config.only_decoder:  # beside the main run: its config.json stays the main run's
        log({"stage": "launch", "command": command, "note": "decoder only, beside the UNet's training"})
        return train_decoder(world, config, out, log)
    (out / "config.json").write_text(
        json.dumps({"training": asdict(config), "architecture": asdict(arch), "command": command}, indent=2)
    )
    log({"stage": "launch", "command": command})
    began = time.time()
    components = build_components(arch, out / "tokenizer", seed=config.seed, words=world.tokenizer_words)
    figures = {}
    vae_dir = out / "vae"
    if (vae_dir / "config.json").exists():
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(vae_dir)
        components["vae"].requires_grad_(False).eval()
    else:
        figures.update(train_vae(components["vae"], world.images(), config, log))
        log({"stage": "timing", "part": "images + VAE", "seconds": round(time.time() - began, 1)})
    part_began = time.time()
    had_pool = (out / "pool.safetensors").exists()
    pool = precompute(world, components, out, log)
    if not had_pool:
        log({"stage": "timing", "part": "precompute", "seconds": round(time.time() - part_began, 1)})
    if not (vae_dir / "config.json").exists():
        components["vae"].save_pretrained(vae_dir)  # scaling_factor set by precompute
    strings, caption_ids = caption_index(world)
    components["text_encoder"].requires_grad_(False).eval()
    caption_embeds = embed_captions(components["tokenizer"], components["text_encoder"], strings)
    part_began = time.time()
    figures.update(train_unet(config, components, pool, caption_embeds, caption_ids, out, log))
    log({"stage": "timing", "part": "UNet", "seconds": round(time.time() - part_began, 1)})
    components["unet"].eval()
    if config.decoder_steps:
        from diffusers import AutoencoderKL

        if not (out / DECODER_DIR / "config.json").exists():
            figures.update(train_decoder(world, config, out, log))
        components["vae"] = AutoencoderKL.from_pretrained(out / DECODER_DIR)
    export = Path(config.export_dir or out / "pipeline")
    if export.exists():
        shutil.rmtree(export)
    save_pipeline(components, export, dtype=getattr(torch, config.save_dtype))
    figures["seconds_this_run"] = round(time.time() - began, 1)
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    log({"stage": "done", **figures})
    write_card(world, str(export), out)
    if config.grid_images:
        world.edit_grid(str(export), out / "edits.png", count=config.grid_images)
    return figures


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config, arch = parse_args(args)
    figures = train_prior(config, arch, "python recipes/train_miniature_prior.py " + " ".join(args))
    print(json.dumps(figures, indent=2))
    return 0
