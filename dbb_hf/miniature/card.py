"""The miniature prior's card: ``dbb_hf/hub/templates/miniature_prior_card.md`` filled from the run's own
config and log, with the world's sections (what it knows, its data, its terms)."""

from __future__ import annotations

import json
from pathlib import Path


def parameter_counts(pipeline_dir: str) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    models = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    return {name: sum(p.numel() for p in cls.from_pretrained(pipeline_dir, subfolder=name).parameters())
            for name, cls in models.items()}


def folder_megabytes(path: str) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


CARD_TEMPLATE = "miniature_prior_card.md"


def loss_curve(unet_log: list[dict], points: int = 8) -> list[dict]:
    """About ``points`` evenly spaced UNet loss records, the last one always included."""
    curve = unet_log[:: max(1, len(unet_log) // points)]
    if unet_log and curve[-1] is not unet_log[-1]:
        curve.append(unet_log[-1])
    return curve


def unet_seconds(unet_log: list[dict]) -> float | None:
    """The UNet's time over every run: each run logs its own elapsed seconds with its losses,
    so the last record of each run holds that run's time (a run stopped before its end, then
    resumed, never logs its timing record)."""
    if not unet_log or any("seconds" not in r for r in unet_log):
        return None
    total, last = 0.0, 0.0
    for r in unet_log:
        if r["seconds"] < last:  # a new run began
            total += last
        last = r["seconds"]
    return total + last


def card_fields(pipeline_dir: str, run_dir: Path) -> dict:
    """What the card says about how the prior was made, from the run's own config and log."""
    settings = json.loads((run_dir / "config.json").read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    # Records a run marked as a discarded branch (not in the saved weights) stay out of the card.
    records = [r for r in records if "branch" not in r]
    unet_log = [r for r in records if r.get("stage") == "unet" and "loss" in r]
    vae_log = [r for r in records if r.get("stage") == "vae"]
    decoder_log = [r for r in records if r.get("stage") == "decoder"]
    seconds = {}
    for r in records:
        if r.get("stage") == "timing":
            seconds[r["part"]] = seconds.get(r["part"], 0.0) + r["seconds"]
    if unet_seconds(unet_log) is not None:
        seconds["UNet"] = unet_seconds(unet_log)
    launches = [{"command": r["command"], "note": r.get("note")} for r in records if r.get("stage") == "launch"]
    arch = settings["architecture"]
    vae_factor = 2 ** (len(arch["vae_channels"]) - 1)
    return {
        "vae_factor": vae_factor,
        "latent_side": arch["image_size"] // vae_factor,
        "training": settings["training"],
        "architecture": settings["architecture"],
        "megabytes": folder_megabytes(pipeline_dir),
        "parameters": parameter_counts(pipeline_dir),
        "precompute": next((r for r in records if r.get("stage") == "precompute"), {}),
        "vae_final_mse": vae_log[-1]["mse"] if vae_log else None,
        "decoder_final_mse": decoder_log[-1]["mse"] if decoder_log else None,
        "decoder_steps": decoder_log[-1]["step"] if decoder_log else settings["training"]["decoder_steps"],
        "loss_curve": loss_curve(unet_log),
        "timing": {part: value / 60 for part, value in seconds.items()},
        "launches": launches or [{"command": settings.get("command"), "note": None}],
    }


def write_card(world, pipeline_dir: str, run_dir: Path) -> None:
    """The pipeline's ``README.md``: the shared card template with the world's own sections."""
    from huggingface_hub import ModelCard, ModelCardData

    from ..hub.cards import render_card

    world_fields = world.card_fields()
    card_data = ModelCardData(library_name="diffusers", pipeline_tag="image-to-image", license=world_fields["license"],
                              tags=["dbb_hf", "stable-diffusion", "inpainting", "miniature", *world_fields["tags"]])
    fields = {**card_fields(pipeline_dir, run_dir), **world_fields}
    render_card(ModelCard, card_data, CARD_TEMPLATE, **fields).save(Path(pipeline_dir) / "README.md")
