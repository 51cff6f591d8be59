"""Integrated gradients for many edits: one batched captum call versus one call per image.

Pruning scores every edit with IG (n_steps forward/backward passes each). captum's usual
pattern is one ``attribute`` call per image; ``dbb_hf.pruning.integrated_gradients``
scores a whole batch of edits in one call (inputs = edits, baselines = originals,
target = per-row classes). Both compute the same attributions; this measures the speed-up
and checks the attributions agree.

    python benchmarks/ig_batched.py --model resnet18 --image-size 64 --num-images 32 --n-steps 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from dbb_hf.devices import resolve_device
from dbb_hf.pruning import integrated_gradients


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="timm model name (random weights)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument(
        "--internal-batch-size", type=int, default=None, help="images per pass in the batched call (default: all)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--target-speedup", type=float, default=3.0)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max abs attribution difference allowed")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":
        # TF32 would make batched and per-image results differ by more than rounding.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    model = model.to(device, dtype).eval()
    shape = (args.num_images, 3, args.image_size, args.image_size)
    originals = torch.randn(shape, device=device, dtype=dtype)
    # Edits change a central square, as inpainting changes the masked object.
    edits = originals.clone()
    lo, hi = args.image_size // 4, 3 * args.image_size // 4
    edits[:, :, lo:hi, lo:hi] = torch.randn_like(edits[:, :, lo:hi, lo:hi])
    targets = torch.randint(0, args.num_classes, (args.num_images,), device=device)

    def per_image():
        return torch.cat(
            [
                integrated_gradients(
                    model, edits[b : b + 1], originals[b : b + 1], targets[b : b + 1], n_steps=args.n_steps
                )
                for b in range(args.num_images)
            ]
        )

    def batched():
        return integrated_gradients(
            model, edits, originals, targets, n_steps=args.n_steps, internal_batch_size=args.internal_batch_size
        )

    per_image(), batched()  # warm-up: kernels, allocator, oneDNN primitives
    per_image_times, batched_times, max_diff, scale = [], [], 0.0, 0.0
    for _ in range(args.repeats):
        t_single, a_single = timed(per_image, device)
        t_batched, a_batched = timed(batched, device)
        per_image_times.append(t_single)
        batched_times.append(t_batched)
        max_diff = max(max_diff, float((a_single - a_batched).abs().max()))
        scale = max(scale, float(a_single.abs().max()))
    t_single, t_batched = statistics.median(per_image_times), statistics.median(batched_times)
    speedup = t_single / t_batched
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"model={args.model} image={args.image_size}px images={args.num_images} n_steps={args.n_steps} "
        f"internal_batch_size={args.internal_batch_size or 'all'} dtype={args.dtype} device={device} "
        f"cpu_threads={threads} repeats={args.repeats}"
    )
    print(f"per-image calls: median {t_single:.3f} s  ({1000 * t_single / args.num_images:.1f} ms/edit)")
    print(f"one batched call: median {t_batched:.3f} s  ({1000 * t_batched / args.num_images:.1f} ms/edit)")
    print(f"speed-up: {speedup:.2f}x (target >= {args.target_speedup}x)")
    print(f"max |attribution difference|: {max_diff:.3g} (tolerance {args.tolerance:g}; max |attribution| {scale:.3g})")
    passed = speedup >= args.target_speedup and max_diff <= args.tolerance
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
