"""Stage overhead: a stage run through ``datasets.map`` versus its models called directly.

For masking (tiny GroundingDINO + SAM), generation (tiny SD2 inpainting pipeline) and
pruning (tiny timm resnet, integrated gradients), this times

- ``map``: the library's stage (``run_masking`` / ``run_inpainting`` / ``score_edits``,
  i.e. ``dbb_hf.stages.apply_stage``) over a toy dataset saved to disk, as a real run
  reads it (PNG bytes in Arrow), writing its result to a fresh cache file;
- ``function``: the stage's own map function called on the same batches already
  decoded into Python objects (no ``datasets``), which splits the overhead between the
  function's own work and ``datasets``;
- ``direct``: the same models called on the same batches, already decoded and
  preprocessed into tensors before the clock starts (the pure model calls);

alternately over ``--repeats`` rounds, and reports throughput(map) / throughput(direct)
(target >= 0.9). Everything the map adds (decoding, processors, post-processing, PNG
encoding of the new image columns, the Arrow writer, fingerprinting) is overhead.

    python benchmarks/stage_overhead.py
    python benchmarks/stage_overhead.py --stages pruning --num-images 64 --profile
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import pstats
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Image as ImageFeature, load_from_disk
from PIL import Image

from _common import base_parser, describe_times, finish, interleaved, median, paired_ratios, print_machine, verdict
from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.inpainting import (
    InpaintingConfig,
    class_prompt,
    example_seed,
    inpaint_batch,
    inpainting_features,
    load_inpainting_pipeline,
    run_inpainting,
)
from dbb_hf.masking import MASK_FEATURES, MaskingConfig, detect, load_masking_models, mask_batch, prompt_for, run_masking
from dbb_hf.modeling import ClassifierConfig, create_classifier
from dbb_hf.pruning import SCORE_FEATURES, PruningConfig, _prepare_rows, integrated_gradients, score_batch, score_edits
from dbb_hf.stages import with_new_features
from dbb_hf.tiny.detection import save_tiny_grounding_dino, save_tiny_sam
from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline

PROFILE_FILTER = "dbb_hf|datasets|processing|image_processing|tokeniz|post_process|PIL"
STAGES = ("masking", "generation", "pruning")
CLASS_NAMES = ["horizontal bar", "vertical bar"]


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--num-images", type=int, default=64, help="images per timed run of a stage")
    parser.add_argument("--image-size", type=int, default=32, help="side of the toy images")
    parser.add_argument("--target", type=float, default=0.9, help="throughput(map) / throughput(direct) needed")
    parser.add_argument("--generation-steps", type=int, default=10, help="denoising steps of the tiny SD pipeline")
    parser.add_argument("--generation-resolution", type=int, default=32, help="side the tiny SD pipeline runs at")
    parser.add_argument("--ig-steps", type=int, default=50, help="integrated-gradient steps (the library default)")
    parser.add_argument("--classifier-size", type=int, default=32, help="input side of the pruning classifier")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one map run per stage")
    parser.add_argument(
        "--plain-map",
        action="store_true",
        help="also time the stage function in a plain datasets.map that writes every column back "
        "(re-encoding the images the function reads), which apply_stage avoids",
    )
    return parser.parse_args()


def toy_on_disk(root: Path, num_images: int, image_size: int) -> Dataset:
    """The toy training split, saved and loaded back: images are PNG bytes in Arrow files."""
    train = load_toy(ToyConfig(num_train=num_images, num_validation=4, num_test=4, image_size=image_size))["train"]
    train.save_to_disk(root / "toy")
    return load_from_disk(root / "toy")


def decoded_batches(data: Dataset, columns: list[str], batch_size: int) -> list[dict]:
    """The batches ``map`` would hand the stage function, decoded once, up front."""
    data = data.select_columns(columns)
    return [data[start : start + batch_size] for start in range(0, len(data), batch_size)]


def plain_map(data: Dataset, function, new_features, fn_kwargs: dict, batch_size: int, root: Path):
    """The stage function in a plain batched ``datasets.map`` that writes every column back."""

    def run():
        out_dir = fresh_dir(root, "plain-")
        return data.map(
            function,
            batched=True,
            batch_size=batch_size,
            features=with_new_features(data, new_features),
            fn_kwargs=fn_kwargs,
            # An explicit fingerprint, as apply_stage gives: hashing the models would cost time.
            new_fingerprint=hashlib.sha256(out_dir.encode()).hexdigest()[:32],
            cache_file_name=str(Path(out_dir) / "out.arrow"),
        )

    return run


def fresh_dir(root: Path, prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=root)


# ------------------------------------------------------------------ masking


def masking_variants(root: Path, data: Dataset, args):
    config = MaskingConfig(
        detector_id=save_tiny_grounding_dino(root / "grounding-dino"),
        segmenter_id=save_tiny_sam(root / "sam"),
        # Random weights: thresholds at 0 make every image get a box and a mask.
        box_threshold=0.0,
        text_threshold=0.0,
        batch_size=8,
    )
    models = load_masking_models(config, "cpu")
    # The ground-truth mask stays in the data, under another name, unread by the stage.
    data = data.rename_column("mask", "gt_mask")
    images = [image.convert("RGB") for image in data["image"]]
    prompts = [prompt_for(CLASS_NAMES[label], config.prompt_template) for label in data["label"]]
    batches = []
    for start in range(0, len(images), config.batch_size):
        chunk = slice(start, start + config.batch_size)
        detector_inputs = models.detector_processor(images=images[chunk], text=prompts[chunk], padding=True, return_tensors="pt")
        # The boxes the stage segments (policy "first": the best box of each image).
        boxes = [b[np.argmax(s)][None].tolist() for b, s in detect(images[chunk], prompts[chunk], models=models, config=config)]
        segmenter_inputs = models.segmenter_processor(images=images[chunk], input_boxes=boxes, return_tensors="pt")
        batches.append((dict(detector_inputs), dict(segmenter_inputs)))

    @torch.inference_mode()
    def direct():
        for detector_inputs, segmenter_inputs in batches:
            models.detector(**detector_inputs)
            models.segmenter(**segmenter_inputs, multimask_output=False)

    decoded = decoded_batches(data, ["image", "label"], config.batch_size)

    def function():
        for batch in decoded:
            mask_batch(batch, models=models, config=config, class_names=CLASS_NAMES)

    def staged():
        return run_masking(data, config, class_names=CLASS_NAMES, models=models, cache_dir=fresh_dir(root, "masking-"))

    variants = {"map": staged, "function": function, "direct": direct}
    if args.plain_map:
        kwargs = {"models": models, "config": config, "class_names": CLASS_NAMES}
        variants["plain map"] = plain_map(data, mask_batch, MASK_FEATURES, kwargs, config.batch_size, root)
    return variants


# ------------------------------------------------------------------ generation


def _pixels(image: Image.Image, mode: str, side: int) -> torch.Tensor:
    resample = Image.BICUBIC if mode == "RGB" else Image.NEAREST
    return torch.from_numpy(np.asarray(image.convert(mode).resize((side, side), resample), np.float32))


def generation_variants(root: Path, data: Dataset, args):
    config = InpaintingConfig(
        model_id=save_tiny_inpaint_pipeline(root / "tiny-sd2-inpainting"),
        num_inference_steps=args.generation_steps,
        resolution=args.generation_resolution,
        batch_size=8,
    )
    pipe = load_inpainting_pipeline(config, "cpu")
    tokens = ["horizontal", "vertical"]  # plain words stand in for learned tokens
    data = data.add_column("target_label", [1 - label for label in data["label"]])
    side = config.resolution
    rows = data.select_columns(["image", "mask", "target_label", "example_id"])[:]
    images = torch.stack([_pixels(i, "RGB", side).permute(2, 0, 1) / 255 for i in rows["image"]])
    masks = torch.stack([(_pixels(m, "L", side)[None] > 127).float() for m in rows["mask"]])
    prompts = [class_prompt(config, CLASS_NAMES, tokens, t) for t in rows["target_label"]]
    seeds = [example_seed(config.seed, e, t) for e, t in zip(rows["example_id"], rows["target_label"])]

    def direct():
        for start in range(0, len(prompts), config.batch_size):
            chunk = slice(start, start + config.batch_size)
            pipe(
                prompt=prompts[chunk],
                image=images[chunk],
                mask_image=masks[chunk],
                height=side,
                width=side,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                strength=config.strength,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[chunk]],
                output_type="pt",
            )

    decoded = decoded_batches(data, ["image", "mask", "target_label", "example_id"], config.batch_size)

    def function():
        for batch in decoded:
            inpaint_batch(batch, pipe=pipe, config=config, class_names=CLASS_NAMES, tokens=tokens)

    def staged():
        return run_inpainting(
            data, config, pipe=pipe, class_names=CLASS_NAMES, tokens=tokens, cache_dir=fresh_dir(root, "generation-")
        )

    variants = {"map": staged, "function": function, "direct": direct}
    if args.plain_map:
        kwargs = {"pipe": pipe, "config": config, "class_names": CLASS_NAMES, "tokens": tokens}
        features = inpainting_features(config.backend)
        variants["plain map"] = plain_map(data, inpaint_batch, features, kwargs, config.batch_size, root)
    return variants


# ------------------------------------------------------------------ pruning


def with_edits(data: Dataset, seed: int) -> Dataset:
    """Add an edit of each image (the object repainted in a random colour), its mask and a target class."""
    rng = np.random.default_rng(seed)

    def edit(batch):
        generated = []
        for image, mask in zip(batch["image"], batch["mask"]):
            pixels = np.asarray(image.convert("RGB")).copy()
            pixels[np.asarray(mask) > 127] = rng.integers(0, 256, 3)
            generated.append(Image.fromarray(pixels))
        return {"generated": generated, "generated_mask": batch["mask"], "target_label": [1 - y for y in batch["label"]]}

    features = data.features.copy()
    features.update({"generated": ImageFeature(), "generated_mask": ImageFeature()})
    features["target_label"] = features["label"]
    return data.map(edit, batched=True, features=features, desc="toy edits")


def pruning_variants(root: Path, data: Dataset, args):
    torch.manual_seed(args.seed)
    classifier = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=args.classifier_size, crop_pct=1.0)
    model = create_classifier(classifier, num_classes=2).eval()
    config = PruningConfig(n_steps=args.ig_steps)
    Psi = [0.5, 0.5]
    with_edits(data, args.seed).save_to_disk(root / "edits")
    data = load_from_disk(root / "edits")
    rows = data.select_columns(["image", "generated", "generated_mask", "label", "target_label", "example_id"])[:]
    batches = []
    for start in range(0, len(data), config.batch_size):
        chunk = slice(start, start + config.batch_size)
        x, x_edit, m = _prepare_rows(model, rows["image"][chunk], rows["generated"][chunk], rows["generated_mask"][chunk], rows["example_id"][chunk])
        batches.append((x, x_edit, m, torch.as_tensor(rows["label"][chunk]), torch.as_tensor(rows["target_label"][chunk])))

    def direct():
        for x, x_edit, m, sources, targets in batches:
            with torch.no_grad():
                model(x_edit).softmax(-1)[torch.arange(len(sources)), sources]
            attributions = integrated_gradients(
                model, x_edit, x, targets, n_steps=config.n_steps, method=config.method,
                internal_batch_size=config.internal_batch_size,
            )
            (attributions.sum(1) * m).sum((1, 2))

    decoded = decoded_batches(data, list(rows), config.batch_size)

    def function():
        for batch in decoded:
            score_batch(batch, model=model, config=config, Psi=Psi)

    def staged():
        return score_edits(data, model, config, Psi=Psi, cache_dir=fresh_dir(root, "pruning-"))

    variants = {"map": staged, "function": function, "direct": direct}
    if args.plain_map:
        kwargs = {"model": model, "config": config, "Psi": Psi}
        variants["plain map"] = plain_map(data, score_batch, SCORE_FEATURES, kwargs, config.batch_size, root)
    return variants


VARIANTS = {"masking": masking_variants, "generation": generation_variants, "pruning": pruning_variants}


def profile(stage: str, run) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(PROFILE_FILTER, 40)
    print(f"--- cProfile of one {stage} map run (cumulative, library code only)")
    print(out.getvalue())


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    print_machine("stage overhead: datasets.map stage vs direct model calls", vars(args))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = toy_on_disk(root, args.num_images, args.image_size)
        for stage in args.stages:
            (root / stage).mkdir()
            variants = VARIANTS[stage](root / stage, data, args)
            times = interleaved(variants, args.repeats)
            print(f"{stage}: {args.num_images} images, {args.repeats} repeats")
            describe_times("map (apply_stage)", times["map"], args.num_images)
            if "plain map" in times:
                describe_times("plain map (all columns rewritten)", times["plain map"], args.num_images)
            describe_times("function on decoded batches", times["function"], args.num_images)
            describe_times("direct (models on tensors)", times["direct"], args.num_images)
            ratio_of_medians = median(times["direct"]) / median(times["map"])
            paired = median(paired_ratios(times["direct"], times["map"]))
            print(f"  throughput ratio map/direct: ratio of medians {ratio_of_medians:.3f}, median of paired ratios {paired:.3f}")
            if "plain map" in times:
                plain = median(paired_ratios(times["direct"], times["plain map"]))
                print(f"  plain map/direct (median of paired ratios) {plain:.3f}: apply_stage is "
                      f"{median(times['plain map']) / median(times['map']):.2f}x as fast as the plain map")
            results.append(verdict(f"{stage} map/direct throughput", paired, args.target))
            if args.profile:
                profile(stage, variants["map"])
    return finish(results)


if __name__ == "__main__":
    raise SystemExit(main())
