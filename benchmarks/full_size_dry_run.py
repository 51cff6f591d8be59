"""Full-size dry run: every default model at its real architecture, through the recipe's code.

The stage configs are the CelebA recipe's (``recipes/celeba.yaml``) under the
``full_size_random`` preset, read by ``dbb_hf.config.resolve_layers`` as every recipe
reads them: its builder makes SD 2 base (textual inversion), SD 2 inpainting,
GroundingDINO-base, SAM 2.1 hiera-small from the configs kept in the package
(``dbb_hf.full_size``: the published config values, synthetic tokenizers with the real
vocabulary sizes) with random weights in the Hub's layout, and the classifier is the
recipe's ResNet-50 with random weights. dbb_hf's own loaders read them and the stages
the recipes run go over ``--images`` real CelebA faces (only ``--steps`` and
``--ig-steps`` shorten the recipe's values):

- masking: ``load_masking_models`` + ``run_masking`` (GroundingDINO at its own 800 px
  shortest edge, SAM 2.1 at 1024 px; the prompt "hair.", box and text thresholds 0 so
  that the random detector's best box reaches the segmenter);
- textual_inversion: ``learn_tokens`` for both classes at 512 px, ``--steps`` optimizer
  steps of 4 micro-batches each (the recipe's accumulation);
- inpainting: ``load_inpainting_pipeline`` + ``load_tokens`` + ``run_inpainting`` at
  512 px, ``--steps`` denoising steps, guidance 7.5;
- pruning: ``create_classifier`` (resnet50) saved and read back with ``load_classifier``,
  then ``score_edits`` (integrated gradients at 224 px, ``--ig-steps``, default the
  recipe's 50) and ``apply_thresholds``.

Each stage prints one JSON line: status ("ok" or the error; a failed stage does not stop
the others, which then get a stand-in input), parameters, seconds (the stage's work,
model loading apart in ``load_seconds``), peak RSS during the stage (the kernel's
high-water mark, reset before each stage), peak GPU memory on CUDA, and FLOPs counted
with the formulas of ``torch.utils.flop_counter`` (plus PyTorch's CPU attention kernel,
which its table misses; see ``_common.FlopCounter``). Then the FLOPs of one edit at the recipe defaults (masking +
inpainting at 50 steps + pruning), and the edits/s that projects at stated fractions of
stated device peaks. On CUDA it also reports the measured edits/s, textual-inversion
steps/s and peak GPU memory.

    python benchmarks/full_size_dry_run.py --data_dir ../shared/data/celeba-mini --images 2 --steps 1
    python benchmarks/full_size_dry_run.py --device cuda --images 16 --steps 50 --json full_size.json

``--models DIR`` keeps the built models (about 12 GB, in ``DIR/full_size_models``) for the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import FlopCounter, base_parser, start_device, synchronize

STAGES = ("masking", "textual_inversion", "inpainting", "pruning")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "celeba.yaml"
PRESET = "full_size_random"
# Dense bf16 tensor-core peaks (vendors' data sheets, TFLOP/s) for the projection.
PEAKS = {"H100 SXM": 989.0, "A100": 312.0}
FRACTIONS = (0.22, 0.4, 0.55)  # 0.22: what the paper's A100 rate implies (1.29 s per edit)


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--data_dir", default="../shared/data/celeba-mini", help="CelebA in its official layout")
    parser.add_argument("--images", type=int, default=2, help="real faces to edit (half of each class when possible)")
    parser.add_argument("--steps", type=int, default=1,
                        help="textual-inversion optimizer steps per class and inpainting denoising steps")
    parser.add_argument("--ig-steps", type=int, default=None, help="integrated-gradients steps (default: the recipe's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ti-precision", choices=["no", "fp16", "bf16"], default=None,
                        help="textual inversion's mixed_precision (default: bf16 on CUDA, no on the CPU)")
    parser.add_argument("--inpainting-dtype", default="auto", help="InpaintingConfig.torch_dtype (auto: fp16 on CUDA)")
    parser.add_argument("--attention", default=None, help="InpaintingConfig.attention (default: the config's)")
    parser.add_argument("--scheduler", default=None, help="InpaintingConfig.scheduler (default: the model's own)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--models", default=None,
                        help="folder whose full_size_models/ keeps the built models (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the per-stage figures to this file")
    parser.set_defaults(threads=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    args = parser.parse_args()
    if args.ti_precision is None:
        args.ti_precision = "bf16" if args.device.startswith("cuda") else "no"
    return args


# ----------------------------------------------------------------------------- measuring


def reset_peak_rss() -> None:
    """Start a new high-water mark of this process's RSS (Linux: clear_refs 5)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def params(*models) -> int:
    return int(sum(p.numel() for m in models for p in m.parameters()))


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Stage:
    """One stage's figures; ``run`` times and counts a call, ``load`` times a model load."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.figures = {"stage": name, "status": "ok", "params": 0, "seconds": 0.0, "load_seconds": 0.0,
                        "peak_rss_gb": 0.0, "tflop": 0.0}
        self.counter = FlopCounter()

    def load(self, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        synchronize(self.device)
        self.figures["load_seconds"] += time.perf_counter() - start
        return result

    def run(self, function, *args, **kwargs):
        synchronize(self.device)
        start = time.perf_counter()
        before = self.counter.total
        with self.counter:
            result = function(*args, **kwargs)
        synchronize(self.device)
        self.figures["seconds"] += time.perf_counter() - start
        self.figures["tflop"] += (self.counter.total - before) / 1e12
        return result


@contextlib.contextmanager
def stage(name: str, device: torch.device, results: dict):
    """Measure a stage; an error becomes its status and the run goes on."""
    free(device)
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measured = Stage(name, device)
    try:
        yield measured
    except Exception as error:  # noqa: BLE001 - a failed stage is reported, the others still run
        traceback.print_exc()
        measured.figures["status"] = f"{type(error).__name__}: {error}".strip()[:500]
    measured.figures["peak_rss_gb"] = peak_rss_gb()
    if device.type == "cuda":
        measured.figures["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    measured.figures["seconds"] = round(measured.figures["seconds"], 3)
    measured.figures["load_seconds"] = round(measured.figures["load_seconds"], 3)
    print(json.dumps(measured.figures), flush=True)
    results[name] = measured.figures


# ----------------------------------------------------------------------------- inputs


def real_faces(data_dir: str, n: int):
    """``n`` CelebA training faces through dbb_hf's loader, alternating the two classes."""
    from dbb_hf.data import load_benchmark

    train = load_benchmark("celeba", data_dir)["train"]
    labels = np.asarray(train["label"])
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    picks = [int(by_class[k % 2][k // 2]) for k in range(n)]
    rows = train.select(picks)
    return rows.add_column("target_label", [1 - y for y in rows["label"]], feature=rows.features["label"])


def _box_mask(size) -> Image.Image:
    """A stand-in mask: the upper middle of an aligned face (where the hair is)."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    mask[: height * 2 // 5, width // 5 : width * 4 // 5] = 255
    return Image.fromarray(mask, mode="L")


def usable_masks(masked):
    """Rows whose random-weight mask is missing, empty or the whole image get the stand-in box,
    so that every row reaches the generator (returns the dataset and how many were replaced)."""
    from datasets import Image as ImageFeature

    replaced = 0

    def fix(batch):
        nonlocal replaced
        masks, statuses = list(batch["mask"]), list(batch["mask_status"])
        for i, (mask, image) in enumerate(zip(masks, batch["image"])):
            pixels = None if mask is None else np.asarray(mask)
            if statuses[i] != "ok" or pixels is None or not pixels.any() or pixels.all():
                masks[i], statuses[i] = _box_mask(image.size), "ok"
                replaced += 1
        return {"mask": masks, "mask_status": statuses}

    features = masked.features.copy()
    features["mask"] = ImageFeature()
    fixed = masked.map(fix, batched=True, features=features, desc="stand-in masks")
    return fixed, replaced


def stand_in_edits(masked):
    """Generated images when inpainting failed: the masked region inverted."""
    from datasets import Image as ImageFeature, Value

    def edit(batch):
        generated = []
        for image, mask in zip(batch["image"], batch["mask"]):
            pixels = np.asarray(image.convert("RGB")).copy()
            inside = np.asarray(mask) > 127
            pixels[inside] = 255 - pixels[inside]
            generated.append(Image.fromarray(pixels))
        return {"generated": generated, "generated_mask": batch["mask"], "generation_status": ["ok"] * len(generated)}

    features = masked.features.copy()
    features.update({"generated": ImageFeature(), "generated_mask": ImageFeature(), "generation_status": Value("string")})
    return masked.map(edit, batched=True, features=features, desc="stand-in edits")


# ----------------------------------------------------------------------------- stages


def stage_config(cls, sections: dict, section: str, **changes):
    """``cls`` with the recipe's and the preset's ``section``, then ``changes``."""
    return cls(**{**sections.get(section, {}), **changes})


def run_masking_stage(measured: Stage, faces, sections, work: Path, device, context) -> None:
    from dbb_hf.masking import MaskingConfig, load_masking_models, run_masking
    from dbb_hf.stages import ShardPlan

    config = stage_config(MaskingConfig, sections, "masking")
    models = measured.load(load_masking_models, config, device)
    measured.figures["params"] = params(models.detector, models.segmenter)
    masked = measured.run(run_masking, faces, config, class_names=context["prompts"], models=models,
                          output_dir=work / "masks", shards=ShardPlan(shard_size=64))
    measured.figures["statuses"] = sorted(set(masked["mask_status"]))
    context["masked"], measured.figures["stand_in_masks"] = usable_masks(masked)
    measured.figures["tflop_per_image"] = measured.figures["tflop"] / len(faces)


def run_textual_inversion_stage(measured: Stage, faces, sections, work: Path, device, context, args) -> None:
    import dbb_hf.textual_inversion.train as training
    from dbb_hf.textual_inversion import TextualInversionConfig, learn_tokens

    recipe = stage_config(TextualInversionConfig, sections, "textual_inversion")
    config = dataclasses.replace(recipe, max_train_steps=args.steps, checkpointing_steps=args.steps,
                                 mixed_precision=args.ti_precision)
    original = training.load_components
    loaded = {}

    def timed_load(*a, **k):  # model loading is timed apart from the training steps
        components = measured.load(original, *a, **k)
        loaded["params"] = params(components["unet"], components["vae"], components["text_encoder"])
        return components

    training.load_components = timed_load
    try:
        names = faces.features["label"].names
        per_class = {c: faces.select_columns(["image"]) for c in range(len(names))}
        tokens = measured.run(learn_tokens, per_class, names, config, str(work / "tokens"),
                              prompt_name=context["prompts"])
    finally:
        training.load_components = original
    steps = len(names) * args.steps
    measured.figures["params"] = loaded.get("params", 0)
    measured.figures["optimizer_steps"] = steps
    measured.figures["micro_batches_per_step"] = config.gradient_accumulation_steps * config.train_batch_size
    measured.figures["tflop_per_step"] = measured.figures["tflop"] / steps
    measured.figures["tflop_per_class_at_defaults"] = (
        measured.figures["tflop_per_step"] * recipe.max_train_steps)
    measured.figures["recipe_steps_per_class"] = recipe.max_train_steps
    measured.figures["steps_per_s"] = steps / max(measured.figures["seconds"] - measured.figures["load_seconds"], 1e-9)
    measured.figures["precision"] = args.ti_precision
    context["tokens"] = [tokens[c] for c in range(len(names))]
    context["tokens_dir"] = work / "tokens"


def _denoising_calls(scheduler, steps: int) -> int:
    """UNet calls of one generation with ``steps`` steps (PNDM's PLMS makes steps + 1)."""
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def run_inpainting_stage(measured: Stage, sections, work: Path, device, context, args) -> None:
    from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline, run_inpainting
    from dbb_hf.stages import ShardPlan
    from dbb_hf.textual_inversion import load_tokens

    overrides = {k: v for k, v in (("attention", args.attention), ("scheduler", args.scheduler)) if v is not None}
    recipe = stage_config(InpaintingConfig, sections, "inpainting", **overrides)
    config = dataclasses.replace(recipe, num_inference_steps=args.steps, torch_dtype=args.inpainting_dtype)
    pipe = measured.load(load_inpainting_pipeline, config, device)
    measured.figures["params"] = params(pipe.unet, pipe.vae, pipe.text_encoder)
    measured.figures["dtype"] = str(pipe.unet.dtype)
    measured.figures["attention"] = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    measured.figures["scheduler"] = type(pipe.scheduler).__name__
    tokens = context.get("tokens")
    if tokens is not None:
        measured.load(load_tokens, pipe, context["tokens_dir"])
    else:
        tokens = context["prompts"]  # textual inversion failed: the plain word stands in for the token
    masked = context["masked"]
    calls = []
    hooks = [pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1)), *measured.counter.scope("unet", pipe.unet)]
    try:
        generated = measured.run(run_inpainting, masked, config, pipe=pipe, class_names=context["prompts"], tokens=tokens,
                                 output_dir=work / "generation", shards=ShardPlan(shard_size=64))
    finally:
        for hook in hooks:
            hook.remove()
    edited = sum(s == "ok" for s in generated["generation_status"])
    unet = measured.counter.scoped["unet"] / 1e12
    batches = -(-edited // config.batch_size)
    per_call = len(calls) // max(batches, 1)
    at_defaults = _denoising_calls(pipe.scheduler, recipe.num_inference_steps)
    rest = measured.figures["tflop"] - unet
    measured.figures.update({
        "edited": edited, "statuses": sorted(set(generated["generation_status"])),
        "unet_tflop": unet, "unet_calls_per_image": per_call,
        "unet_tflop_per_edit_at_defaults": unet / max(edited, 1) * at_defaults / max(per_call, 1),
        "other_tflop_per_edit": rest / max(edited, 1),
    })
    measured.figures["tflop_per_edit_at_defaults"] = (
        measured.figures["unet_tflop_per_edit_at_defaults"] + measured.figures["other_tflop_per_edit"])
    context["generated"] = generated


def run_pruning_stage(measured: Stage, sections, work: Path, device, context, args) -> None:
    from dbb_hf.modeling import ClassifierConfig, create_classifier, load_classifier, save_classifier
    from dbb_hf.pruning import PruningConfig, apply_thresholds, score_edits, sized_for
    from dbb_hf.stages import ShardPlan

    names = context["names"]

    def build_and_load():
        torch.manual_seed(args.seed)
        created = create_classifier(stage_config(ClassifierConfig, sections, "classifier"), num_classes=len(names))
        save_classifier(created, str(work / "classifier"), names)
        return load_classifier(str(work / "classifier"), device=device)

    model = measured.load(build_and_load)
    measured.figures["params"] = params(model)
    defaults = stage_config(PruningConfig, sections, "pruning")
    config = dataclasses.replace(defaults, n_steps=args.ig_steps or defaults.n_steps, device=str(device))
    edits = context["generated"]
    pruned = measured.run(
        lambda: apply_thresholds(score_edits(edits, model, config, Psi=[0.5, 0.5], output_dir=work / "pruning",
                                             shards=ShardPlan(shard_size=64)), config.P, Psi=[0.5, 0.5]))
    scored = sum(s == "ok" for s in pruned["score_status"])
    measured.figures.update({"scored": scored, "ig_steps": config.n_steps,
                             "internal_batch_size": sized_for(model, config).internal_batch_size})
    measured.figures["tflop_per_edit_at_defaults"] = (
        measured.figures["tflop"] / max(scored, 1) * defaults.n_steps / config.n_steps)


# ----------------------------------------------------------------------------- the run


def projections(per_edit: float) -> list[str]:
    lines = []
    for device, peak in PEAKS.items():
        rates = ", ".join(f"{f:.0%} of peak: {f * peak / per_edit:.2f} edits/s" for f in FRACTIONS)
        lines.append(f"  {device} ({peak:g} TFLOP/s bf16 dense): {rates}")
    return lines


def main() -> int:
    args = parse_args()
    device = start_device(args, "full-size dry run: every default model at its real architecture, random weights")
    if device is None:
        return 0
    from dbb_hf.config import resolve_layers
    from dbb_hf.devices import use_tf32

    use_tf32(device)
    results: dict = {}
    context: dict = {}
    with tempfile.TemporaryDirectory(prefix="full-size-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        # The recipe's YAML under the preset, its models built (once) under the folder.
        sections = resolve_layers([RECIPE], presets=[PRESET], build_root=args.models or work)
        models = {f"{s}.{k}": sections[s][k] for s, k in (("textual_inversion", "model_id"), ("inpainting", "model_id"),
                                                      ("masking", "detector_id"), ("masking", "segmenter_id"))}
        print(json.dumps({"built_models_seconds": round(time.perf_counter() - start, 1), "models": models}), flush=True)
        faces = real_faces(args.data_dir, args.images)
        context["names"] = faces.features["label"].names
        context["prompts"] = sections["run"]["class_prompts"]
        if "masking" in args.stages:
            with stage("masking", device, results) as measured:
                run_masking_stage(measured, faces, sections, work, device, context)
        if "masked" not in context:
            context["masked"] = usable_masks(faces.add_column("mask", [None] * len(faces)).add_column(
                "mask_status", ["stand-in"] * len(faces)))[0]
        if "textual_inversion" in args.stages:
            with stage("textual_inversion", device, results) as measured:
                run_textual_inversion_stage(measured, faces, sections, work, device, context, args)
        if "inpainting" in args.stages:
            with stage("inpainting", device, results) as measured:
                run_inpainting_stage(measured, sections, work, device, context, args)
        if "generated" not in context:
            context["generated"] = stand_in_edits(context["masked"])
        if "pruning" in args.stages:
            with stage("pruning", device, results) as measured:
                run_pruning_stage(measured, sections, work, device, context, args)

    per_edit = sum(results[s].get(key, 0.0) for s, key in (
        ("masking", "tflop_per_image"), ("inpainting", "tflop_per_edit_at_defaults"),
        ("pruning", "tflop_per_edit_at_defaults")) if s in results)
    print(f"RESULT TFLOP per edit at the recipe defaults (masking + 50-step guided inpainting + IG): {per_edit:.2f}")
    for s, key in (("masking", "tflop_per_image"), ("inpainting", "unet_tflop_per_edit_at_defaults"),
                   ("inpainting", "other_tflop_per_edit"), ("pruning", "tflop_per_edit_at_defaults")):
        if s in results:
            print(f"  {s} {key}: {results[s].get(key, 0.0):.2f}")
    if "textual_inversion" in results:
        ti = results["textual_inversion"]
        print(f"  textual inversion: {ti.get('tflop_per_step', 0.0):.2f} TFLOP per optimizer step, "
              f"{ti.get('tflop_per_class_at_defaults', 0.0):.0f} TFLOP per class at the recipe's "
              f"{ti.get('recipe_steps_per_class', 0)} steps (not per edit)")
    if per_edit > 0:
        print("RESULT projected edits/s (masking + inpainting + IG) from the FLOPs alone:")
        print("\n".join(projections(per_edit)))
    if device.type == "cuda" and all(s in results for s in ("masking", "inpainting", "pruning")):
        seconds = sum(results[s]["seconds"] for s in ("masking", "inpainting", "pruning"))
        rate = args.images / seconds
        print(f"RESULT measured on {torch.cuda.get_device_name(device)}: {rate:.2f} complete edits/s at "
              f"{args.steps} denoising steps (target >= 5 at 50 steps); textual inversion "
              f"{results.get('textual_inversion', {}).get('steps_per_s', 0.0):.3f} steps/s; peak GPU memory "
              f"{max(r.get('peak_gpu_gb', 0.0) for r in results.values()):.1f} GiB")
    if args.json:
        keys = ("status", "params", "seconds", "peak_rss_gb", "tflop")
        Path(args.json).write_text(json.dumps(
            {"stages": {name: {k: results[name][k] for k in keys} for name in results}, "tflop_per_edit": per_edit},
            indent=2))
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
