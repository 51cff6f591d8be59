"""The Gradio page: the input, the three pictures and the verdict; and ``main``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import gradio as gr
import numpy as np
from PIL import Image

from .edit import EditResult, run_edit
from .models import SpaceModels, load_models
from .settings import Settings, build_tiny, parse_config, with_run_examples
from .uploads import checked_image

PREDICTED = "predicted by the classifier"
DISPLAY_SIDE = 256
TINY_NOTICE = (
    "**Tiny mode.** Every model here is a tiny, randomly initialised network built at start "
    "(an untrained resnet10t, a random GroundingDINO + SAM, a random Stable Diffusion). "
    "The masks, edits, scores and verdicts are noise: they show the data flow, not results."
)

# What finds the object to repaint, per masking backend (the page's heading).
MASKING_WORDS = {
    "grounded_sam": "GroundingDINO + SAM",
    "lang_sam": "LangSAM",
    "template": "the hair template of an aligned face",
    "column": "its solid colour, the toy world's object",
}


def run_notice(settings: Settings, models: SpaceModels) -> str:
    """What the page runs in ``--run_dir`` mode: the run's models and thresholds."""
    Psi = ", ".join(f"{name} {value:.4f}" for name, value in zip(models.class_names, models.Psi))
    P = ", ".join(f"{name} {value:g}" for name, value in zip(models.class_names, models.P))
    tokens = ", ".join(f"`{token}`" for token in models.tokens)
    return (
        f"**Run folder** `{settings.space.run_dir}`: its ERM classifier, its learned tokens ({tokens}), "
        f"the inpainting model `{settings.inpainting.model_id}`, masks by the `{settings.masking.backend}` backend "
        f"(region `{settings.masking.region}`), Psi per source class ({Psi}) and P per target class ({P}), "
        "all as the run used them. Nothing is downloaded."
    )


def summary_markdown(result: EditResult, class_names: list[str]) -> str:
    """The verdict and its two conditions, as Markdown."""
    source, target = class_names[result.source], class_names[result.target]
    origin = f"predicted, p = {result.source_probability:.3f}" if result.predicted else "as given"
    lines = [f"**{source}** ({origin}) → **{target}**", ""]
    if result.edit is None:
        return "\n".join(lines + [f"**Verdict: not edited** (masking: `{result.mask_status}`): nothing to score."])
    psi_ok, rho_ok = result.psi < result.Psi, result.rho > result.P
    verdict = "keep" if result.keep else f"prune ({result.reason.replace(';', ', ')})"
    return "\n".join(
        lines
        + [
            f"**Verdict: {verdict}**",
            "",
            "| score | value | threshold | kept needs |",
            "|---|---|---|---|",
            f"| psi | {result.psi:.4f} | Psi = {result.Psi:.4f} | psi < Psi {'✓' if psi_ok else '✗'} |",
            f"| rho | {result.rho:.4f} | P = {result.P:.4f} | rho > P {'✓' if rho_ok else '✗'} |",
            "",
            f"psi: the probability of {source} on the edit; Psi: its mean over the training images of {source}. "
            f"rho: the integrated gradients of the {target} logit inside the edited region; P: the threshold "
            f"of {target}.",
            "",
            f"Prompt: `{result.prompt}`",
        ]
    )


def _display(image: Optional[Image.Image]) -> Optional[Image.Image]:
    """Small images enlarged with nearest-neighbour, so their pixels stay visible."""
    if image is None or max(image.size) >= DISPLAY_SIDE:
        return image
    factor = -(-DISPLAY_SIDE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with its masked pixels tinted red."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    inside = (np.asarray(mask.convert("L")) > 127)[..., None]
    tinted = np.where(inside, 0.45 * pixels + 0.55 * np.array([255.0, 0.0, 0.0]), pixels)
    return Image.fromarray(tinted.round().astype(np.uint8))


def _example_rows(folder: str, class_names: list[str]) -> list[list[str]]:
    """Example images of a folder; a file named ``..._<class name>.png`` also sets the source class."""
    if not folder:
        return []
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"examples_dir {folder!r} is not a folder")
    rows = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
            source = next((name for name in class_names if path.stem.endswith("_" + name)), PREDICTED)
            rows.append([str(path), source])
    return rows


def build_demo(settings: Settings, models: Optional[SpaceModels] = None) -> gr.Blocks:
    """The Gradio page; ``models`` default to ``load_models(settings)``."""
    models = models or load_models(settings)
    names = models.class_names

    def on_edit(image, source_choice, target_choice):
        if image is None:
            raise gr.Error("Upload an image or pick an example first.")
        if target_choice is None:
            raise gr.Error("Pick a target class.")
        source = None if source_choice in (None, PREDICTED) else source_choice
        try:
            result = run_edit(image, target_choice, source, models=models, config=settings)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return (
            _display(_overlay(result.image, result.mask)),
            _display(result.edit),
            _display(result.heatmap),
            summary_markdown(result, names),
        )

    with gr.Blocks(title="dbb_hf: diffusion-based balancing") as demo:
        gr.Markdown(
            "# Diffusion-based balancing: one edit\n"
            f"The object of the source class is masked ({MASKING_WORDS[settings.masking.backend]}) and repainted "
            "as the target class "
            "(Stable Diffusion inpainting with the class's learned token); the background stays pixel for pixel. "
            "The edit is kept for retraining iff `psi < Psi` (the classifier no longer sees the source class) "
            "and `rho > P` (the integrated gradients of the target class inside the mask exceed P)."
        )
        if settings.space.tiny:
            gr.Markdown(TINY_NOTICE, elem_id="tiny-notice")
        if settings.space.run_dir:
            gr.Markdown(run_notice(settings, models), elem_id="run-notice")
        with gr.Row():
            with gr.Column():
                image = checked_image(settings.space, sources=["upload"], label="Image", height=256,
                                      elem_id="input-image")
                source = gr.Radio([PREDICTED, *names], value=PREDICTED, label="It shows", elem_id="source-class")
                target = gr.Radio(names, value=None, label="Make it", elem_id="target-class")
                button = gr.Button("Edit and score", variant="primary", elem_id="run-edit")
            with gr.Column():
                verdict = gr.Markdown(
                    "Upload an image or pick an example, choose the class to make it and press **Edit and score**.",
                    elem_id="verdict",
                )
        with gr.Row():
            outputs = [
                gr.Image(label=label, format="png", height=256, interactive=False, elem_id=elem_id)
                for label, elem_id in (
                    ("Mask (red)", "mask-output"),
                    ("Edit", "edit-output"),
                    ("Integrated gradients (red: for the target class)", "heatmap-output"),
                )
            ]
        rows = _example_rows(settings.space.examples_dir, names)
        if rows:
            gr.Examples(rows, inputs=[image, source], label="Examples")
        # Checking on upload shows a bad file's message at once, not at the first click.
        image.upload(lambda _: None, inputs=image, outputs=None, show_progress="hidden")
        button.click(on_edit, inputs=[image, source, target], outputs=[*outputs, verdict])
    return demo


def main(args: Sequence[str] | None = None) -> None:
    settings = parse_config(args)
    if settings.space.tiny:
        settings = build_tiny(settings)
    elif settings.space.run_dir:
        settings = with_run_examples(settings)
    demo = build_demo(settings)
    space = settings.space
    # gradio refuses larger files before they are stored; open_upload checks again.
    demo.launch(server_name=space.server_name, server_port=space.server_port, max_file_size=space.max_upload_bytes)
