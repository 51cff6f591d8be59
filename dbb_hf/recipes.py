"""What the scripts in ``recipes/`` share: YAML defaults beside the script, a ``--preset
tiny`` that swaps every model for a tiny random one built offline, and the pipeline run.

A recipe is ``accelerate launch recipes/<dataset>.py --data_dir DIR [--flags]``; every
flag is a config field (``--<section>_<field>``, or unprefixed for ``data`` and ``run``),
so ``--help`` lists them all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .config import load_yaml, merge_sections, pop_flag
from .processes import process_state

PRESETS = ("tiny",)


def _flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def build_tiny_models(models_dir: str | os.PathLike) -> dict[str, str]:
    """Tiny random SD (text-to-image and inpainting), GroundingDINO and SAM, saved once."""
    from .tiny.detection import save_tiny_grounding_dino, save_tiny_sam
    from .tiny.diffusion import save_tiny_inpaint_pipeline, save_tiny_text2img_pipeline

    models_dir = Path(models_dir)
    builders = {
        "text2img": save_tiny_text2img_pipeline,
        "inpaint": save_tiny_inpaint_pipeline,
        "detector": save_tiny_grounding_dino,
        "segmenter": save_tiny_sam,
    }
    state = process_state()  # the first state of a recipe's processes: the run's long barrier timeout
    paths = {name: str(models_dir / name) for name in builders}
    if state.is_main_process:
        for name, build in builders.items():
            done = models_dir / f"{name}.done"
            if not done.exists():
                build(paths[name])
                done.touch()
    state.wait_for_everyone()
    return paths


def tiny_overrides(models_dir: str | os.PathLike) -> dict:
    """Config sections that run the whole method in seconds on a CPU with tiny models."""
    paths = build_tiny_models(models_dir)
    fast_training = {"num_epochs": 1, "train_batch_size": 8, "eval_batch_size": 16, "optimizer": "adam",
                     "learning_rate": 1e-3, "augmentation": "none", "num_workers": 0}
    return {
        "classifier": {"model_name": "resnet10t", "pretrained": False, "image_size": 32, "crop_pct": 1.0},
        "erm": fast_training,
        "selection": {"lowest_loss": "3", "ti_num_images": 2, "ti_source": "train_high_loss"},
        "textual_inversion": {"model_id": paths["text2img"], "initializer_token": "bird", "max_train_steps": 2,
                              "resolution": 32, "gradient_accumulation_steps": 1, "checkpointing_steps": 1},
        "masking": {"backend": "grounded_sam", "detector_id": paths["detector"], "segmenter_id": paths["segmenter"],
                    "box_threshold": 0.0, "text_threshold": 0.0},
        "inpainting": {"backend": "diffusers", "model_id": paths["inpaint"], "num_inference_steps": 2,
                       "resolution": 32, "batch_size": 4},
        "pruning": {"n_steps": 4, "batch_size": 8},
        "retraining": fast_training,
        "run": {"shard_size": 4, "num_grid_examples": 4},
    }


def run_recipe(recipe_yaml: str, argv: list[str] | None = None) -> int:
    """Run the pipeline with ``recipe_yaml`` as defaults, then the command-line flags."""
    from .cli import run_pipeline

    argv = list(sys.argv[1:] if argv is None else argv)
    preset, argv = pop_flag(argv, "--preset")
    defaults = load_yaml(recipe_yaml)
    if preset is not None:
        if preset not in PRESETS:
            raise SystemExit(f"--preset must be one of {PRESETS}, got {preset!r}")
        output_dir = _flag_value(argv, "--output_dir") or defaults.get("run", {}).get("output_dir", "runs/dbb")
        defaults = merge_sections(defaults, tiny_overrides(Path(output_dir) / "tiny_models"))
    report = run_pipeline(argv, defaults=defaults)
    if report is not None:
        erm, retrained = report["erm"], report["retrained"]
        print(f"worst-group accuracy: ERM {erm['worst_group_accuracy']} -> retrained {retrained['worst_group_accuracy']}")
    return 0
