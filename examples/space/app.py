"""The dbb_hf Space: one image through masking, inpainting and pruning, with the verdict.

Upload an image (or pick an example), say which class it shows (or let the classifier
decide) and which class it should become. The app masks the object of the source class
(GroundingDINO + SAM), repaints it with Stable Diffusion inpainting and the target class's
learned token, and scores the edit as the method's pruning stage does: ``psi`` (the
source-class probability on the edit) against ``Psi`` of the source class and ``rho``
(integrated gradients of the target logit inside the edited region) against ``P`` of the
target class. An edit is kept iff psi < Psi and rho > P.

Every model id is configuration: ``SpaceConfig`` fields, read from ``DBB_SPACE_<FIELD>``
environment variables (a Space's "Variables") and overridable by ``--<field>`` flags.
``--tiny`` (or ``DBB_SPACE_TINY=1``) builds tiny random models into a temporary folder at
start and loads them with the same ``from_pretrained`` calls: the UI runs offline, and
its outputs are noise.

    python examples/space/app.py --tiny
    DBB_SPACE_CLASSIFIER=hf-hub:<user>/<erm-classifier> DBB_SPACE_PSI=0.97,0.93 python examples/space/app.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import tempfile
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import HfArgumentParser

from dbb_hf.devices import resolve_device
from dbb_hf.images import to_rgb
from dbb_hf.inpainting import InpaintingConfig, inpaint_batch, load_inpainting_pipeline
from dbb_hf.masking import OK, MaskingConfig, MaskingModels, load_masking_models, mask_batch
from dbb_hf.modeling import label_names, load_classifier
from dbb_hf.pruning import PruningConfig, explain_edit, image_transform, prune_reason, thresholds_per_class
from dbb_hf.textual_inversion import load_tokens

ENV_PREFIX = "DBB_SPACE_"
PREDICTED = "predicted by the classifier"
DISPLAY_SIDE = 256
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass
class SpaceConfig:
    tiny: bool = field(
        default=False,
        metadata={"help": "Build tiny random models in a temporary folder and use them (offline; outputs are noise)."},
    )
    tiny_dir: Optional[str] = field(
        default=None, metadata={"help": "Where --tiny writes its models (default: a new temporary folder)."}
    )
    classifier: str = field(
        default="",
        metadata={"help": "The ERM classifier: a save_classifier folder (dbb_hf.modeling) or hf-hub:<repo id>."},
    )
    class_names: Optional[list[str]] = field(
        default=None, metadata={"help": "Class names, in label order (default: the classifier's label_names)."}
    )
    object_names: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "What the detector looks for, and the {class_name} of the inpainting prompt: one for all "
            "classes or one per class (paper: 'bird' on Waterbirds, 'hair' on CelebA). Default: the class names."
        },
    )
    class_prompts: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Words standing in for each class's learned token when no tokens are given (default: none)."},
    )
    tokens: str = field(
        default="",
        metadata={"help": "Learned class tokens: a learn_tokens output folder, an embeddings file, or a Hub repo id."},
    )
    tokens_revision: str = field(default="main", metadata={"help": "Hub revision of tokens (a Hub repo id)."})
    inpainting_model_id: str = field(
        default=InpaintingConfig.model_id, metadata={"help": "Stable Diffusion inpainting pipeline (Hub id or folder)."}
    )
    inpainting_revision: str = field(
        default=InpaintingConfig.revision, metadata={"help": "Hub revision of inpainting_model_id."}
    )
    num_inference_steps: int = field(default=InpaintingConfig.num_inference_steps, metadata={"help": "Denoise steps."})
    guidance_scale: float = field(default=InpaintingConfig.guidance_scale, metadata={"help": "Guidance scale."})
    resolution: int = field(default=InpaintingConfig.resolution, metadata={"help": "Side the pipeline runs at."})
    mask_dilation: int = field(default=0, metadata={"help": "Grow the mask by this many pixels before inpainting."})
    detector_id: str = field(default=MaskingConfig.detector_id, metadata={"help": "GroundingDINO checkpoint."})
    detector_revision: str = field(default=MaskingConfig.detector_revision, metadata={"help": "Its Hub revision."})
    segmenter_id: str = field(default=MaskingConfig.segmenter_id, metadata={"help": "SAM or SAM 2 checkpoint."})
    segmenter_revision: str = field(default=MaskingConfig.segmenter_revision, metadata={"help": "Its Hub revision."})
    box_threshold: float = field(default=MaskingConfig.box_threshold, metadata={"help": "Detector box threshold."})
    text_threshold: float = field(default=MaskingConfig.text_threshold, metadata={"help": "Detector text threshold."})
    Psi: Optional[list[float]] = field(
        default=None,
        metadata={
            "help": "Psi per class: the mean probability of class i over its training images (Eq. 3; "
            "dbb_hf.pruning.class_confidence). Required unless --tiny."
        },
    )
    P: list[float] = field(
        default_factory=lambda: [0.0],
        metadata={"help": "IG threshold P per target class, or one for all (paper: Waterbirds 1,1; CelebA 2,0.3)."},
    )
    ig_steps: int = field(default=PruningConfig.n_steps, metadata={"help": "Integrated-gradients steps."})
    seed: int = field(default=0, metadata={"help": "Base seed; an image's seed hashes it with the image's bytes."})
    max_image_side: int = field(default=768, metadata={"help": "Larger uploads are scaled down to this side first."})
    max_upload_bytes: int = field(
        default=10 * 1024 * 1024, metadata={"help": "Largest upload accepted, in bytes (default 10 MiB)."}
    )
    max_upload_pixels: int = field(
        default=25_000_000,
        metadata={"help": "Largest upload accepted, in pixels (width x height), read from the header before decoding."},
    )
    max_upload_side: int = field(default=8192, metadata={"help": "Longest side of an upload accepted, in pixels."})
    examples_dir: str = field(default="", metadata={"help": "A folder of example images shown under the input."})
    device: Optional[str] = field(default=None, metadata={"help": "Torch device (default: cuda if available)."})
    server_name: Optional[str] = field(
        default=None, metadata={"help": "Address to serve on (default: gradio's, GRADIO_SERVER_NAME or 127.0.0.1)."}
    )
    server_port: Optional[int] = field(
        default=None, metadata={"help": "Port to serve on (default: gradio's, GRADIO_SERVER_PORT or 7860)."}
    )

    def __post_init__(self):
        if not self.tiny and not self.classifier:
            raise ValueError(
                f"no classifier given: set {ENV_PREFIX}CLASSIFIER or --classifier (a save_classifier folder or "
                "hf-hub:<repo id>), or run with --tiny"
            )
        if not self.tiny and self.Psi is None:
            raise ValueError(
                f"no Psi given: set {ENV_PREFIX}PSI or --Psi to the mean training confidence of each class "
                "(dbb_hf.pruning.class_confidence), or run with --tiny"
            )
        if self.max_image_side < 16:
            raise ValueError(f"max_image_side must be at least 16, got {self.max_image_side}")
        for name in ("max_upload_bytes", "max_upload_pixels", "max_upload_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        # The stage configs validate their own fields: fail at start, not on the first click.
        self.masking_config(), self.inpainting_config(), self.pruning_config()

    def masking_config(self) -> MaskingConfig:
        return MaskingConfig(
            detector_id=self.detector_id,
            detector_revision=self.detector_revision,
            segmenter_id=self.segmenter_id,
            segmenter_revision=self.segmenter_revision,
            box_threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            batch_size=1,
        )

    def inpainting_config(self) -> InpaintingConfig:
        return InpaintingConfig(
            model_id=self.inpainting_model_id,
            revision=self.inpainting_revision,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            resolution=self.resolution,
            mask_dilation=self.mask_dilation,
            batch_size=1,
            seed=self.seed,
        )

    def pruning_config(self) -> PruningConfig:
        return PruningConfig(P=self.P, n_steps=self.ig_steps, batch_size=1, device=self.device)


# ----------------------------------------------------------------------------- configuration sources


def _from_text(hint: Any, text: str, name: str) -> Any:
    """An environment variable's text as a value of the field type ``hint``."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if text == "":
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return [_from_text(item, part.strip(), name) for part in text.split(",") if part.strip()]
    if hint is bool:
        if text.strip().lower() not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"{name}={text!r} is not a boolean (use 1 or 0)")
        return text.strip().lower() in TRUE_WORDS
    try:
        return hint(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {hint.__name__}") from None


def config_from_env(environ: typing.Mapping[str, str] = os.environ) -> dict:
    """The ``SpaceConfig`` fields set as ``DBB_SPACE_<FIELD>`` variables (lists comma-separated)."""
    hints = typing.get_type_hints(SpaceConfig)
    values = {}
    for spec in dataclasses.fields(SpaceConfig):
        name = ENV_PREFIX + spec.name.upper()
        if name in environ:
            values[spec.name] = _from_text(hints[spec.name], environ[name], name)
    return values


def parse_config(args: Sequence[str] | None = None, environ: typing.Mapping[str, str] = os.environ) -> SpaceConfig:
    """A ``SpaceConfig`` from the environment, with command-line flags taking precedence."""
    parser = HfArgumentParser(SpaceConfig)
    parser.set_defaults(**config_from_env(environ))
    (config,) = parser.parse_args_into_dataclasses(args=args)
    return config


# ----------------------------------------------------------------------------- tiny offline models


def build_tiny(config: SpaceConfig) -> SpaceConfig:
    """Save tiny random models and toy examples to ``config.tiny_dir``; the config that loads them.

    The classifier is an untrained timm ``resnet10t``, the detector, segmenter and
    inpainting pipeline are dbb_hf.tiny's seeded random checkpoints: every output is
    noise, but it flows through exactly the code a real Space runs.
    """
    from dbb_hf.data.toy import ToyConfig, load_toy
    from dbb_hf.modeling import ClassifierConfig, create_classifier, save_classifier
    from dbb_hf.pruning import compute_class_confidence
    from dbb_hf.tiny.detection import save_tiny_grounding_dino, save_tiny_sam
    from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline

    root = Path(config.tiny_dir or tempfile.mkdtemp(prefix="dbb-space-tiny-"))
    toy = load_toy(ToyConfig(num_train=32, num_validation=4, num_test=4, image_size=64, seed=0))
    names = toy["train"].features["label"].names
    torch.manual_seed(0)
    untrained = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32)
    classifier = create_classifier(untrained, len(names))
    save_classifier(classifier, str(root / "classifier"), names)
    examples = root / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    for row in toy["test"]:
        row["image"].save(examples / f"{row['example_id']}_{names[row['label']]}.png")
    return dataclasses.replace(
        config,
        tiny_dir=str(root),
        classifier=str(root / "classifier"),
        # The tiny GroundingDINO needs inputs of 128 px: at 64 its coarsest feature map is
        # 1x1, which its GroupNorm rejects for a single image.
        detector_id=save_tiny_grounding_dino(root / "grounding-dino", image_size=128),
        segmenter_id=save_tiny_sam(root / "sam"),
        inpainting_model_id=save_tiny_inpaint_pipeline(root / "sd-inpainting"),
        object_names=["bar"],
        class_prompts=["horizontal", "vertical"],
        # A random detector scores every box near zero: threshold 0 keeps its best box.
        box_threshold=0.0,
        text_threshold=0.0,
        num_inference_steps=2,
        resolution=32,
        ig_steps=16,
        max_image_side=64,
        examples_dir=str(examples),
        Psi=compute_class_confidence(load_classifier(str(root / "classifier")), toy["train"], batch_size=32),
        device=config.device or "cpu",
    )


# ----------------------------------------------------------------------------- models and the edit


@dataclass
class SpaceModels:
    """Everything ``run_edit`` runs, loaded once at start."""

    classifier: torch.nn.Module
    masking: MaskingModels
    pipe: Any
    class_names: list[str]
    object_names: list[str]
    tokens: list[str]
    Psi: list[float]
    P: list[float]


def _per_class(values: Sequence[str] | None, default: list[str], n: int, what: str) -> list[str]:
    if values is None:
        return default
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} classes; give one or {n}")
    return list(values)


def _tokens_path(config: SpaceConfig) -> str:
    if os.path.exists(config.tokens):
        return config.tokens
    from huggingface_hub import snapshot_download

    # Only what load_tokens reads: no pickle (a .bin or .pt) is even downloaded.
    return snapshot_download(config.tokens, revision=config.tokens_revision, allow_patterns=["*.safetensors", "*.json"])


def load_models(config: SpaceConfig) -> SpaceModels:
    """Load the classifier, detector + segmenter and inpainting pipeline of ``config`` once."""
    device = resolve_device(config.device)
    classifier = load_classifier(config.classifier, device=device)
    class_names = list(config.class_names or label_names(classifier))
    n = len(class_names)
    if classifier.num_classes != n:
        raise ValueError(f"the classifier has {classifier.num_classes} outputs but {n} class names: {class_names}")
    object_names = _per_class(config.object_names, [c.replace("_", " ") for c in class_names], n, "object_names")
    pipe = load_inpainting_pipeline(config.inpainting_config(), device=device)
    if config.tokens:
        tokens = load_tokens(pipe, _tokens_path(config))
        if len(tokens) != n:
            raise ValueError(f"{config.tokens} holds {len(tokens)} tokens {tokens} for {n} classes {class_names}")
    else:
        tokens = _per_class(config.class_prompts, [""] * n, n, "class_prompts")
    Psi = [float(p) for p in config.Psi]
    if len(Psi) != n:
        raise ValueError(f"Psi has {len(Psi)} values for {n} classes {class_names}")
    return SpaceModels(
        classifier=classifier,
        masking=load_masking_models(config.masking_config(), device),
        pipe=pipe,
        class_names=class_names,
        object_names=object_names,
        tokens=tokens,
        Psi=Psi,
        P=thresholds_per_class(config.P, n),
    )


@dataclass
class EditResult:
    """What one edit shows: the mask, the edit, the scores, the verdict and the heatmap."""

    image: Image.Image  # the input as edited (RGB, scaled down to max_image_side)
    source: int
    target: int
    source_probability: float  # the classifier's probability of the source class on the input
    predicted: bool  # whether the source class came from the classifier
    mask: Image.Image  # mode "L", 0/255, the image's size
    mask_status: str
    prompt: Optional[str]  # None when nothing was edited
    edit: Optional[Image.Image]  # RGB, the image's size; None when nothing was edited
    changed: Optional[Image.Image]  # mode "L": the region the generator was allowed to change
    heatmap: Optional[Image.Image]  # signed IG over the edit, on the classifier's input grid
    psi: float
    rho: float
    Psi: float  # of the source class
    P: float  # of the target class
    keep: bool
    reason: str  # "" when kept; "psi>=Psi", "rho<=P", both, or "not_generated"


def _class_index(name: str, class_names: list[str], what: str) -> int:
    if name not in class_names:
        raise ValueError(f"{what} {name!r} is not one of the classes {class_names}")
    return class_names.index(name)


def _fit(image: Image.Image, side: int) -> Image.Image:
    image = to_rgb(image)  # 16-bit uploads scaled, not clipped to white
    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


@torch.no_grad()
def _probabilities(classifier: torch.nn.Module, image: Image.Image) -> np.ndarray:
    parameter = next(classifier.parameters())
    x = image_transform(classifier)(image)[None].to(parameter.device, parameter.dtype)
    return classifier(x).softmax(-1)[0].float().cpu().numpy()


def run_edit(
    image: Image.Image,
    target_class: str,
    source_class: Optional[str] = None,
    *,
    models: SpaceModels,
    config: SpaceConfig,
) -> EditResult:
    """Mask, inpaint and score one image: the Space's whole computation, without the UI.

    ``source_class`` (a class name) is what the image shows; None takes the classifier's
    prediction. The edit's seed hashes ``config.seed`` with the image's pixels, so the
    same image and target give the same edit.
    """
    names = models.class_names
    target = _class_index(target_class, names, "target class")
    image = _fit(image, config.max_image_side)
    probabilities = _probabilities(models.classifier, image)
    source = int(probabilities.argmax()) if source_class is None else _class_index(source_class, names, "source class")
    if source == target:
        raise ValueError(f"the image is already {names[source]!r}: pick a different target class")
    example_id = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()[:16]
    masks = mask_batch(
        {"image": [image], "label": [source]},
        models=models.masking,
        config=config.masking_config(),
        class_names=models.object_names,
    )
    result = dict(
        image=image,
        source=source,
        target=target,
        source_probability=float(probabilities[source]),
        predicted=source_class is None,
        mask=masks["mask"][0],
        mask_status=masks["mask_status"][0],
        Psi=models.Psi[source],
        P=models.P[target],
        prompt=None,
        edit=None,
        changed=None,
        heatmap=None,
        psi=math.nan,
        rho=math.nan,
    )
    if result["mask_status"] == OK:
        painted = inpaint_batch(
            {
                "image": [image],
                "mask": [result["mask"]],
                "mask_status": [result["mask_status"]],
                "target_label": [target],
                "example_id": [example_id],
            },
            pipe=models.pipe,
            config=config.inpainting_config(),
            class_names=models.object_names,
            tokens=models.tokens,
        )
        result.update(prompt=painted["prompt"][0], edit=painted["generated"][0], changed=painted["generated_mask"][0])
    if result["edit"] is not None:
        scores = explain_edit(
            models.classifier, image, result["edit"], result["changed"], source, target, config.pruning_config()
        )
        result.update(psi=scores["psi"], rho=scores["rho"], heatmap=scores["heatmap"])
    reason = prune_reason(result["psi"], result["rho"], result["Psi"], result["P"])
    return EditResult(**result, keep=reason == "", reason=reason)


# ----------------------------------------------------------------------------- uploads


def _file_size(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


def open_upload(path: str | os.PathLike, config: SpaceConfig) -> Image.Image:
    """An uploaded file as a decoded image, or a ``gr.Error`` that says what is wrong with it.

    The size in bytes and the dimensions (read from the header: nothing is decoded yet)
    are checked against the config's limits first, so neither a huge file nor a
    decompression bomb (a small file that decodes to billions of pixels) is ever decoded.
    The messages never repeat the file's name: gradio renders them as HTML.
    """
    size = os.path.getsize(path)
    if size > config.max_upload_bytes:
        raise gr.Error(
            f"The upload is {_file_size(size)}; this Space accepts images up to {_file_size(config.max_upload_bytes)}."
        )
    too_large = (
        f"this Space accepts images of at most {config.max_upload_pixels:,} pixels "
        f"and {config.max_upload_side} pixels a side."
    )
    try:
        with warnings.catch_warnings():
            # The limits below decide; PIL still refuses outright what is twice its own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise gr.Error(f"The upload has too many pixels; {too_large}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise gr.Error("The upload is not an image this Space can read: use a PNG, JPEG or WebP file.") from None
    width, height = image.size
    if width * height > config.max_upload_pixels or max(width, height) > config.max_upload_side:
        raise gr.Error(f"The upload is {width} x {height} pixels; {too_large}")
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise gr.Error(f"The upload is a damaged or truncated image that cannot be decoded ({error}).") from None


def checked_image(config: SpaceConfig, **kwargs) -> gr.Image:
    """A ``gr.Image`` whose uploads go through :func:`open_upload` instead of gradio's decoding.

    The page gets a clear message for an oversize, non-image or damaged upload instead of
    a bare "Error", and the limits hold for the page and its API alike.
    """
    component = gr.Image(type="pil", **kwargs)

    def preprocess(payload) -> Optional[Image.Image]:
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("Upload the image as a file.")
        return open_upload(payload.path, config)

    # gradio calls the instance's preprocess; a gr.Image subclass would instead make gradio
    # write a type stub (app.pyi) beside this file whenever it is imported.
    component.preprocess = preprocess
    return component


# ----------------------------------------------------------------------------- the page


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


TINY_NOTICE = (
    "**Tiny mode.** Every model here is a tiny, randomly initialised network built at start "
    "(an untrained resnet10t, a random GroundingDINO + SAM, a random Stable Diffusion). "
    "The masks, edits, scores and verdicts are noise: they show the data flow, not results."
)


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


def build_demo(config: SpaceConfig, models: Optional[SpaceModels] = None) -> gr.Blocks:
    """The Gradio page; ``models`` default to ``load_models(config)``."""
    models = models or load_models(config)
    names = models.class_names

    def on_edit(image, source_choice, target_choice):
        if image is None:
            raise gr.Error("Upload an image or pick an example first.")
        if target_choice is None:
            raise gr.Error("Pick a target class.")
        source = None if source_choice in (None, PREDICTED) else source_choice
        try:
            result = run_edit(image, target_choice, source, models=models, config=config)
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
            "The object of the source class is masked (GroundingDINO + SAM) and repainted as the target class "
            "(Stable Diffusion inpainting with the class's learned token); the background stays pixel for pixel. "
            "The edit is kept for retraining iff `psi < Psi` (the classifier no longer sees the source class) "
            "and `rho > P` (the integrated gradients of the target class inside the mask exceed P)."
        )
        if config.tiny:
            gr.Markdown(TINY_NOTICE, elem_id="tiny-notice")
        with gr.Row():
            with gr.Column():
                image = checked_image(config, sources=["upload"], label="Image", height=256, elem_id="input-image")
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
        rows = _example_rows(config.examples_dir, names)
        if rows:
            gr.Examples(rows, inputs=[image, source], label="Examples")
        # Checking on upload shows a bad file's message at once, not at the first click.
        image.upload(lambda _: None, inputs=image, outputs=None, show_progress="hidden")
        button.click(on_edit, inputs=[image, source, target], outputs=[*outputs, verdict])
    return demo


def main(args: Sequence[str] | None = None) -> None:
    config = parse_config(args)
    if config.tiny:
        config = build_tiny(config)
    demo = build_demo(config)
    # gradio refuses larger files before they are stored; open_upload checks again.
    demo.launch(server_name=config.server_name, server_port=config.server_port, max_file_size=config.max_upload_bytes)


if __name__ == "__main__":
    main(sys.argv[1:])
