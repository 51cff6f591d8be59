"""GPU generation: images per second of full-size SD 2 inpainting, as a fraction of the
GPU's bf16 roofline.

Builds the Stable Diffusion 2 inpainting UNet, VAE and text encoder from their
published configurations (``dbb_hf.full_size``) with random weights, nothing downloaded,
saves them as a pipeline folder and loads it through the library
(``dbb_hf.inpainting.load_inpainting_pipeline``: bf16, optional ``torch.compile`` of the
UNet). ``--attention`` times each attention kernel given (``InpaintingConfig.attention``),
alternating them (A B, B A, ...) in one process; ``--scheduler`` picks the sampler. Then it times the library's generation map function
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
    python benchmarks/gpu_generation.py --device cpu --dtype float32 --resolution 128 --steps 4 \
        --batch-size 1 --repeats 4 --attention sdpa eager
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import FlopCounter, base_parser, interleaved, start_device, synchronize

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

def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default; skips without one) or cpu (code-path check)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 25], help="denoising step counts to time")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (the library's compile_unet)")
    parser.add_argument("--attention", nargs="+", default=["sdpa"], help="attention kernels to time (sdpa, eager, xformers)")
    parser.add_argument("--scheduler", default=None, help="a diffusers scheduler class (default: the model's own, PNDM)")
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


def unet_flops_per_image_step(pipe, resolution: int) -> int:
    """FLOPs of one guided denoising step for one image: the UNet on a batch of 2 (CFG)."""
    unet = pipe.unet
    latent = resolution // pipe.vae_scale_factor
    parameter = next(unet.parameters())
    sample = torch.randn(2, unet.config.in_channels, latent, latent, device=parameter.device, dtype=parameter.dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=parameter.device, dtype=parameter.dtype)
    timestep = torch.tensor([500] * 2, device=parameter.device)
    with torch.inference_mode(), FlopCounter() as counter:
        unet(sample, timestep, encoder_hidden_states=context)
    return counter.total


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


def main():
    args = parse_args()
    device = start_device(args, "GPU generation: full-size SD 2 inpainting, images/s and fraction of bf16 roofline",
                          " (this benchmark needs a GPU; --device cpu only checks the code path)")
    if device is None:
        return 0
    from dbb_hf.full_size import save_sd2_pipelines
    from dbb_hf.inpainting import InpaintingConfig, inpaint_batch, load_inpainting_pipeline, set_attention

    peak = peak_tflops(device, args.peak_tflops)
    class_names, tokens = ["horizontal bar", "vertical bar"], ["horizontal", "vertical"]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "sd2-inpainting-random"
        save_sd2_pipelines(None, model_dir, seed=args.seed)
        config = InpaintingConfig(model_id=str(model_dir), torch_dtype=args.dtype, resolution=args.resolution,
                                  batch_size=args.batch_size, scheduler=args.scheduler)
        pipe = load_inpainting_pipeline(config, device)
        flops = unet_flops_per_image_step(pipe, args.resolution)
        if args.compile:
            pipe.unet.compile()  # what InpaintingConfig(compile_unet=True) does, after the FLOPs are counted
        print(f"UNet parameters {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f} M, scheduler "
              f"{type(pipe.scheduler).__name__}, {flops / 1e12:.3f} TFLOP per image per guided step at "
              f"{args.resolution}px; peak {peak if peak is not None else 'unknown (pass --peak-tflops)'} TFLOP/s")
        batch = toy_batch(args.batch_size, args.resolution, args.seed)
        for steps in args.steps:
            step_config = dataclasses.replace(config, num_inference_steps=steps)

            def generate(attention: str):
                set_attention(pipe, attention)
                synchronize(device)
                out = inpaint_batch(batch, pipe=pipe, config=step_config, class_names=class_names, tokens=tokens)
                synchronize(device)
                if out["generation_status"] != ["ok"] * args.batch_size:
                    raise RuntimeError(f"generation failed: {out['generation_status']}")

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            # Warm-up (and compilation) first, then the kernels alternate repeat by repeat.
            times = interleaved({a: (lambda a=a: generate(a)) for a in args.attention}, args.repeats)
            memory = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
            for attention, seconds in times.items():
                rate = args.batch_size / statistics.median(seconds)
                achieved = flops * steps * rate / 1e12
                fraction = f"{achieved / peak:.3f} of the {peak:g} TFLOP/s peak" if peak else "fraction n/a"
                print(f"RESULT {steps} steps, batch {args.batch_size}, {args.dtype}, attention {attention}"
                      f"{', compiled' if args.compile else ''}: {rate:.3f} images/s (median of {args.repeats}: "
                      f"{', '.join(f'{s:.2f}' for s in seconds)} s per batch); UNet {achieved:.1f} TFLOP/s = "
                      f"{fraction}{memory}")
            if len(times) > 1:
                first = args.attention[0]
                for other in args.attention[1:]:
                    ratios = [b / a for a, b in zip(times[first], times[other])]
                    print(f"RESULT seconds {other} / {first}: median of per-repeat ratios {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
