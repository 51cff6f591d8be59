"""Scale: peak memory of the sharded stages over N and over 4N images.

Masking (tiny GroundingDINO + SAM), generation (tiny SD2 inpainting pipeline) and
pruning (tiny timm resnet, integrated gradients) each run through the resumable sharded
runner (``run_masking`` / ``run_inpainting`` / ``score_edits`` with ``output_dir``, i.e.
``dbb_hf.stages.run_resumable``) on a toy dataset saved to disk, once over N images and
once over 4N, each run in a fresh Python process. A thread samples the process's
resident memory (RSS, from /proc) every few milliseconds while the stage runs; the peak
of 4N over the peak of N must stay at most 1.2 (a stage that streams holds one shard,
not the dataset). RSS is also split into anonymous memory (what the process allocated)
and file-backed pages (memory-mapped Arrow files, which the kernel can drop at will).

    python benchmarks/scale_memory.py
    python benchmarks/scale_memory.py --num-images 512 --image-size 64 --shard-size 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import base_parser, finish, print_machine, verdict

STAGES = ("masking", "generation", "pruning")
CLASS_NAMES = ["horizontal bar", "vertical bar"]


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--num-images", type=int, default=256, help="N (the large run has 4N)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the toy images")
    parser.add_argument("--shard-size", type=int, default=64, help="rows per shard")
    parser.add_argument("--target", type=float, default=1.2, help="largest peak(4N) / peak(N) allowed")
    # A run of one stage in this fresh process (used by the benchmark itself).
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


# ------------------------------------------------------------------ memory sampling


def memory_kib() -> dict:
    """Current RSS and its anonymous and file-backed parts, in KiB (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0])
    return values


class PeakSampler(threading.Thread):
    """Samples :func:`memory_kib` every ``interval`` seconds and keeps each part's maximum."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = memory_kib()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for key, value in memory_kib().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.interval)

    def stop(self) -> dict:
        self.done.set()
        self.join()
        return self.peak


# ------------------------------------------------------------------ inputs (parent process)


def _edits(batch):
    """An edit per image (the object repainted magenta), its mask and a target class."""
    generated = []
    for image, mask in zip(batch["image"], batch["mask"]):
        pixels = np.asarray(image.convert("RGB")).copy()
        pixels[np.asarray(mask) > 127] = (255, 0, 255)
        generated.append(Image.fromarray(pixels))
    return {"generated": generated, "generated_mask": batch["mask"], "target_label": [1 - y for y in batch["label"]]}


def prepare(root: Path, args) -> None:
    """Tiny models and 4N-row inputs of each stage, on disk; a run over N reads the first N rows."""
    from datasets import Image as ImageFeature

    from dbb_hf.data.toy import ToyConfig, load_toy
    from dbb_hf.tiny.detection import save_tiny_grounding_dino, save_tiny_sam
    from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline

    save_tiny_grounding_dino(root / "grounding-dino")
    save_tiny_sam(root / "sam")
    save_tiny_inpaint_pipeline(root / "tiny-sd2-inpainting")
    config = ToyConfig(num_train=4 * args.num_images, num_validation=4, num_test=4, image_size=args.image_size)
    train = load_toy(config)["train"]
    features = train.features.copy()
    features.update({"generated": ImageFeature(), "generated_mask": ImageFeature(), "target_label": features["label"]})
    data = train.map(_edits, batched=True, features=features, desc="toy edits")
    inputs = {
        # Masking must not find a `mask` column: the ground truth stays under another name.
        "masking": data.rename_column("mask", "gt_mask").select_columns(["image", "label", "example_id", "gt_mask"]),
        "generation": data.select_columns(["image", "mask", "label", "target_label", "example_id"]),
        "pruning": data.select_columns(["image", "label", "target_label", "generated", "generated_mask", "example_id"]),
    }
    for stage, dataset in inputs.items():
        dataset.save_to_disk(root / f"input-{stage}")


# ------------------------------------------------------------------ one run (child process)


def setup_stage(stage: str, root: Path, args):
    """Models loaded and inputs opened; returns a function that runs the stage into a fresh folder."""
    import torch
    from datasets import load_from_disk

    torch.set_num_threads(args.threads)
    data = load_from_disk(root / f"input-{stage}").select(range(args.rows))
    output_dir = tempfile.mkdtemp(prefix=f"{stage}-", dir=root)
    from dbb_hf.stages import ShardPlan

    sharding = {"output_dir": output_dir, "shards": ShardPlan(shard_size=args.shard_size)}
    if stage == "masking":
        from dbb_hf.masking import MaskingConfig, load_masking_models, run_masking

        config = MaskingConfig(
            detector_id=str(root / "grounding-dino"), segmenter_id=str(root / "sam"), box_threshold=0.0, text_threshold=0.0
        )
        models = load_masking_models(config, "cpu")
        return lambda: run_masking(data, config, class_names=CLASS_NAMES, models=models, **sharding)
    if stage == "generation":
        from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline, run_inpainting

        config = InpaintingConfig(model_id=str(root / "tiny-sd2-inpainting"), num_inference_steps=2, resolution=32)
        pipe = load_inpainting_pipeline(config, "cpu")
        tokens = ["horizontal", "vertical"]
        return lambda: run_inpainting(data, config, pipe=pipe, class_names=CLASS_NAMES, tokens=tokens, **sharding)
    from dbb_hf.modeling import ClassifierConfig, create_classifier
    from dbb_hf.pruning import PruningConfig, score_edits

    torch.manual_seed(args.seed)
    model = create_classifier(ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32), 2).eval()
    config = PruningConfig(n_steps=8)
    return lambda: score_edits(data, model, config, Psi=[0.5, 0.5], **sharding)


def child(args) -> None:
    run = setup_stage(args.child, Path(args.root), args)
    baseline = memory_kib()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    if len(result) != args.rows:
        raise RuntimeError(f"{args.child}: {len(result)} rows out of {args.rows}")
    print("RESULT-JSON " + json.dumps({"baseline": baseline, "peak": peak, "seconds": seconds}))


def run_child(stage: str, rows: int, root: Path, args) -> dict:
    command = [
        sys.executable, __file__, "--child", stage, "--root", str(root), "--rows", str(rows),
        "--threads", str(args.threads), "--shard-size", str(args.shard_size), "--seed", str(args.seed),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} over {rows} rows failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT-JSON "))
    return json.loads(line[len("RESULT-JSON ") :])


def mib(kib: int) -> str:
    return f"{kib / 1024:7.1f} MiB"


def main():
    args = parse_args()
    if args.child:
        child(args)
        return 0
    torch.set_num_threads(args.threads)
    print_machine("scale: peak memory of the sharded stages over N and 4N images", vars(args))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, args)
        for stage in args.stages:
            runs = {n: run_child(stage, n, root, args) for n in (args.num_images, 4 * args.num_images)}
            print(f"{stage}:")
            for n, run in runs.items():
                grown = {k: run["peak"][k] - run["baseline"][k] for k in run["peak"]}
                print(
                    f"  {n:5d} images: peak RSS {mib(run['peak']['VmRSS'])} (anonymous {mib(run['peak']['RssAnon'])}, "
                    f"file-backed {mib(run['peak']['RssFile'])}); above the loaded-models baseline: RSS "
                    f"{mib(grown['VmRSS'])}, anonymous {mib(grown['RssAnon'])}; {run['seconds']:.1f} s"
                )
            small, large = runs[args.num_images]["peak"], runs[4 * args.num_images]["peak"]
            print(f"  peak 4N / N: RSS {large['VmRSS'] / small['VmRSS']:.3f}, anonymous {large['RssAnon'] / small['RssAnon']:.3f}")
            results.append(verdict(f"{stage} peak RSS 4N / N", large["VmRSS"] / small["VmRSS"], args.target, at_least=False))
    return finish(results)


if __name__ == "__main__":
    raise SystemExit(main())
