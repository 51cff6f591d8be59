"""GPU generation: images per second of full-size SD 2 inpainting, as a fraction of the
GPU's bf16 roofline.

Builds the Stable Diffusion 2 inpainting UNet, VAE and text encoder from their
published configurations (written out below) with random weights, nothing downloaded,
saves them as a pipeline folder and loads it through the library
(``dbb_hf.inpainting.load_inpainting_pipeline``: bf16, PyTorch SDPA attention, optional
``torch.compile`` of the UNet). Then it times the library's generation map function
(``inpaint_batch``) on batches of 512x512 images and masks, for 50 and 25 denoising
steps with classifier-free guidance, and reports images per second and the fraction of
the GPU's dense bf16 peak this reaches:

    UNet FLOPs per image and step (counted with FlopCounterMode on one guided step,
    i.e. the UNet on the conditional and unconditional halves) x steps x images/s
    / peak FLOP/s.

The VAE and the text encoder run too but are not counted, so the fraction slightly
understates the real utilisation. Random weights cost the same FLOPs as trained ones.

Without a CUDA device it prints "skipped: no CUDA device" and exits 0. ``--device cpu``
forces a (very slow) run on the CPU to check the code path, e.g.
``--device cpu --dtype float32 --resolution 64 --steps 1 --batch-size 1 --repeats 1``.

    python benchmarks/gpu_generation.py
    python benchmarks/gpu_generation.py --compile --batch-size 16
    python benchmarks/gpu_generation.py --peak-tflops 989
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import base_parser, print_machine

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s,
# matched against torch.cuda.get_device_name(); the first match wins.
PEAK_BF16_TFLOPS = (
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

# stabilityai/stable-diffusion-2-inpainting, unet/config.json
UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": (5, 10, 20, 20),
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-2-inpainting, vae/config.json
VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "scaling_factor": 0.18215,
}

# The OpenCLIP ViT-H/14 text tower as SD 2 ships it (text_encoder/config.json), except
# vocab_size, which follows the offline tokenizer (its embedding lookup costs no FLOPs).
TEXT_ENCODER_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "hidden_act": "gelu",
    "projection_dim": 512,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-05,
}

# The noise schedule of SD 2 (scheduler/scheduler_config.json), sampled with DDIM.
SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default; skips without one) or cpu (code-path check)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 25], help="denoising step counts to time")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (the library's compile_unet)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak; default: by GPU name")
    parser.set_defaults(repeats=3)
    return parser.parse_args()


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def save_full_size_pipeline(path: Path, device: torch.device, dtype: torch.dtype) -> str:
    """SD 2 inpainting with random weights, saved in the Hub's layout (``from_pretrained``-able)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dbb_hf.tiny.diffusion import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(path / "tokenizer")
    text_config = CLIPTextConfig(
        **TEXT_ENCODER_CONFIG,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with device:  # initialise on the device: a CPU initialises 1.3 B parameters slowly
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(text_config)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae.to(dtype),
        text_encoder=text_encoder.to(dtype),
        tokenizer=tokenizer,
        unet=unet.to(dtype),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return str(path)


def unet_flops_per_image_step(pipe, resolution: int) -> int:
    """FLOPs of one guided denoising step for one image: the UNet on a batch of 2 (CFG)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    latent = resolution // pipe.vae_scale_factor
    parameter = next(unet.parameters())
    sample = torch.randn(2, unet.config.in_channels, latent, latent, device=parameter.device, dtype=parameter.dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=parameter.device, dtype=parameter.dtype)
    timestep = torch.tensor([500] * 2, device=parameter.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(sample, timestep, encoder_hidden_states=context)
    return counter.get_total_flops()


def toy_batch(batch_size: int, resolution: int, seed: int) -> dict:
    """Images and centred rectangular masks at the pipeline's resolution, in the stage's columns."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(batch_size):
        images.append(Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)))
        mask = np.zeros((resolution, resolution), np.uint8)
        mask[resolution // 4 : 3 * resolution // 4, resolution // 3 : 2 * resolution // 3] = 255
        masks.append(Image.fromarray(mask, mode="L"))
    return {
        "image": images,
        "mask": masks,
        "target_label": [k % 2 for k in range(batch_size)],
        "example_id": [f"bench-{k}" for k in range(batch_size)],
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device (this benchmark needs a GPU; --device cpu only checks the code path)")
        return 0
    torch.set_num_threads(args.threads)
    from dbb_hf.inpainting import InpaintingConfig, inpaint_batch, load_inpainting_pipeline

    print_machine("GPU generation: full-size SD 2 inpainting, images/s and fraction of bf16 roofline", vars(args))
    dtype = getattr(torch, args.dtype)
    peak = peak_tflops(device, args.peak_tflops)
    class_names, tokens = ["horizontal bar", "vertical bar"], ["horizontal", "vertical"]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_full_size_pipeline(Path(tmp) / "sd2-inpainting-random", device, dtype)
        config = InpaintingConfig(model_id=model_dir, torch_dtype=args.dtype, resolution=args.resolution, batch_size=args.batch_size)
        pipe = load_inpainting_pipeline(config, device)
        processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
        flops = unet_flops_per_image_step(pipe, args.resolution)
        if args.compile:
            pipe.unet.compile()  # what InpaintingConfig(compile_unet=True) does, after the FLOPs are counted
        print(f"UNet parameters {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f} M, attention {sorted(processors)}, "
              f"{flops / 1e12:.3f} TFLOP per image per guided step at {args.resolution}px; "
              f"peak {peak if peak is not None else 'unknown (pass --peak-tflops)'} TFLOP/s")
        batch = toy_batch(args.batch_size, args.resolution, args.seed)
        for steps in args.steps:
            step_config = dataclasses.replace(config, num_inference_steps=steps)
            inpaint_batch(batch, pipe=pipe, config=step_config, class_names=class_names, tokens=tokens)  # warm-up / compile
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = []
            for _ in range(args.repeats):
                synchronize(device)
                start = time.perf_counter()
                out = inpaint_batch(batch, pipe=pipe, config=step_config, class_names=class_names, tokens=tokens)
                synchronize(device)
                seconds.append(time.perf_counter() - start)
            if out["generation_status"] != ["ok"] * args.batch_size:
                raise RuntimeError(f"generation failed: {out['generation_status']}")
            rate = args.batch_size / statistics.median(seconds)
            achieved = flops * steps * rate / 1e12
            memory = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
            fraction = f"{achieved / peak:.3f} of the {peak:g} TFLOP/s peak" if peak else "fraction n/a"
            print(f"RESULT {steps} steps, batch {args.batch_size}, {args.dtype}{', compiled' if args.compile else ''}: "
                  f"{rate:.3f} images/s (median of {args.repeats}: {', '.join(f'{s:.2f}' for s in seconds)} s per batch); "
                  f"UNet {achieved:.1f} TFLOP/s = {fraction}{memory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
