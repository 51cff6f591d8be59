"""Stage 3: a binary mask of each image's causal object, found from its class name.

The paper masks with LangSAM: GroundingDINO turns the text prompt (the class name, e.g.
"bird.") into boxes, and SAM segments the object inside a box. The ``grounded_sam``
backend is the same model pair loaded through transformers (LangSAM's own defaults:
``IDEA-Research/grounding-dino-base`` with ``facebook/sam2.1-hiera-small``; set
``segmenter_id="facebook/sam-vit-huge"`` for the SAM ViT-H of LangSAM's first release),
with LangSAM's thresholds (box 0.3, text 0.25) and box prompts with
``multimask_output=False``. Three other backends: ``column`` copies a mask column the
dataset already has (the toy benchmark's ground truth), ``lang_sam`` calls the
``lang_sam`` package itself when it is installed, and ``template`` draws the hair region
of an aligned face (CelebA, FFHQ crops) from a fixed template in the image's own
coordinates, with no model: the offline stand-in for "hair." detection
(:mod:`dbb_hf.masking_template`).

Which mask is kept (``mask_policy``):
- ``first``: the mask of the highest-scoring box. The authors' code keeps ``masks[0]`` of
  LangSAM's output, which lists boxes in GroundingDINO's query order (queries come from
  the encoder's most confident proposals, not re-sorted by final score); the highest
  score is the deterministic reading of "the first detection".
- ``union``: the masks of all detected boxes OR-ed together.

Columns added: ``mask`` (Image, mode "L", 0/255, the image's size), ``mask_box`` (list of
4 float32, xyxy pixels: the chosen box, or the box enclosing all boxes for ``union``, or
the mask's own bounding box for ``column``; empty when nothing was detected),
``mask_score`` (float32: the chosen box's detection score, the best score for ``union``,
1.0 for a non-empty ``column`` or ``template`` mask, 0.0 when nothing was found) and ``mask_status``
("ok", "no_detection": no box above the threshold, "empty_mask": a box but no mask
pixel, "failed: unreadable image: <error>" / "failed: missing mask": the row's image
or source mask could not be read; "failed: mask size mismatch: ...": the ``column`` mask
is not the image's size). Every row is kept; a row without a mask gets an
all-zero mask and its status (no mask at all when its image could not be read).

``region`` turns the object's mask into the region the generator may repaint, after
detection/segmentation and before dilation, for every backend: ``mask`` (the object's
pixels), ``box`` (its bounding box) or ``square_box`` (that box grown to a square, see
:func:`region_mask`). A mask that hugs the object leaves no room for an object of another
shape (a horizontal bar's pixels cannot hold a vertical bar), so an edit into the other
class needs the box or the square. ``mask_box`` stays the detector's box (``column``:
the bounding box of the final mask, as before).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Image as ImageFeature, List, Value
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    Sam2Model,
    SamModel,
)

from .checks import require_columns
from .devices import resolve_device
from .hub_access import reaching
from .images import to_rgb
from .mask_arithmetic import REGIONS, binary_mask, dilate, mask_bbox, mask_image, region_mask
from .masking_template import FACE_ELLIPSE, HEAD_ELLIPSE, NECK_WIDTH, HairTemplate, check_ellipse
from .stages import ImageGuard, ShardPlan, run_stage

BACKENDS = ("grounded_sam", "column", "lang_sam", "template")
MODEL_FREE_BACKENDS = ("column", "template")
MASK_POLICIES = ("first", "union")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# SAM and SAM 2 take the same box prompts and return masks of the same layout; the
# checkpoint's model_type says which of the two classes holds its weights.
SEGMENTER_CLASSES = {"sam": SamModel, "sam2": Sam2Model}

OK, NO_DETECTION, EMPTY_MASK = "ok", "no_detection", "empty_mask"
MASK_FEATURES = {
    "mask": ImageFeature(),
    "mask_box": List(Value("float32")),
    "mask_score": Value("float32"),
    "mask_status": Value("string"),
}


@dataclass
class MaskingConfig:
    backend: str = field(
        default="grounded_sam",
        metadata={
            "help": "grounded_sam (GroundingDINO + SAM in transformers), column (copy the mask column "
            "`mask_column`), lang_sam (the lang_sam package, if installed) or template (the hair region of "
            "an aligned face, no model: see template_* and dbb_hf.masking_template)."
        },
    )
    detector_id: str = field(
        default="IDEA-Research/grounding-dino-base",
        metadata={"help": "GroundingDINO checkpoint (Hub id or folder); LangSAM uses grounding-dino-base."},
    )
    detector_revision: str = field(
        default="12bdfa3120f3e7ec7b434d90674b3396eccf88eb",
        metadata={"help": "Hub revision (commit) of detector_id."},
    )
    segmenter_id: str = field(
        default="facebook/sam2.1-hiera-small",
        metadata={"help": "SAM or SAM 2 checkpoint (Hub id or folder); the class follows its model_type."},
    )
    segmenter_revision: str = field(
        default="ee5bba1d82bb8749febdf90f45e84b687142ba03",
        metadata={"help": "Hub revision (commit) of segmenter_id."},
    )
    box_threshold: float = field(
        default=0.3, metadata={"help": "Keep boxes whose best token score is above this (LangSAM: 0.3)."}
    )
    text_threshold: float = field(
        default=0.25, metadata={"help": "Token score for a box's text label (LangSAM: 0.25); never drops a box."}
    )
    mask_policy: str = field(
        default="first",
        metadata={"help": "first: the mask of the highest-scoring box; union: all boxes' masks OR-ed."},
    )
    region: str = field(
        default="mask",
        metadata={
            "help": "Region to repaint, made from the object's mask before dilation: mask (its pixels), "
            "box (its bounding box) or square_box (the box grown to a square of side max(h, w), centred, "
            "kept inside the image)."
        },
    )
    dilation: int = field(
        default=0, metadata={"help": "Grow the mask by this many pixels (square neighbourhood)."}
    )
    prompt_template: str = field(
        default="{class_name}.",
        metadata={"help": "Text prompt; {class_name} is the row's class name, lower-cased, '_' as spaces."},
    )
    mask_column: str = field(
        default="mask", metadata={"help": "Backend column: the existing mask column to copy."}
    )
    template_head_ellipse: list[float] = field(
        default_factory=lambda: list(HEAD_ELLIPSE),
        metadata={"help": "Backend template: the head ellipse (centre x, centre y, half width, half height) as "
                  "fractions of the image's width and height (default: CelebA's aligned crops)."},
    )
    template_face_ellipse: list[float] = field(
        default_factory=lambda: list(FACE_ELLIPSE),
        metadata={"help": "Backend template: the face ellipse kept out of the mask (same form)."},
    )
    template_neck_width: float = field(
        default=NECK_WIDTH,
        metadata={"help": "Backend template: width of the band kept out below the face's centre (chin, neck), "
                  "as a fraction of the face ellipse's width (0: none)."},
    )
    lang_sam_type: str = field(
        default="sam2.1_hiera_small", metadata={"help": "Backend lang_sam: LangSAM's sam_type."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per detector/segmenter forward pass."})
    torch_dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16."})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.mask_policy not in MASK_POLICIES:
            raise ValueError(f"mask_policy must be one of {MASK_POLICIES}, got {self.mask_policy!r}")
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {self.region!r}")
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {self.dilation}")
        if "{class_name}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{class_name}}', got {self.prompt_template!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {sorted(DTYPES)}, got {self.torch_dtype!r}")
        check_ellipse("template_head_ellipse", self.template_head_ellipse)
        check_ellipse("template_face_ellipse", self.template_face_ellipse)
        if not 0.0 <= self.template_neck_width <= 1.0:
            raise ValueError(f"template_neck_width must be in [0, 1], got {self.template_neck_width}")

    def hair_template(self) -> HairTemplate:
        """The ``template`` backend's ellipses and neck band (textual inversion's template too)."""
        return HairTemplate(tuple(self.template_head_ellipse), tuple(self.template_face_ellipse),
                            self.template_neck_width)

    def loads_models(self) -> bool:
        """Whether the backend runs models (detector and segmenter, or LangSAM) to load first."""
        return self.backend not in MODEL_FREE_BACKENDS

    def copies_mask_column(self) -> bool:
        """Whether the stage writes the input's ``mask`` column back unchanged (column backend
        reading ``mask`` with no region or dilation): the one input column it may write again."""
        return self.backend == "column" and self.mask_column == "mask" and self.dilation == 0 and self.region == "mask"


@dataclass
class MaskingModels:
    """Everything a masking backend runs, loaded once and passed to :func:`mask_batch`."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    detector_processor: Any = None
    detector: Any = None
    segmenter_processor: Any = None
    segmenter: Any = None
    lang_sam: Any = None


def _require_lang_sam():
    if importlib.util.find_spec("lang_sam") is None:
        raise ImportError(
            "backend 'lang_sam' needs the lang_sam package, which is not installed (it is not on PyPI: "
            "pip install git+https://github.com/luca-medeiros/lang-segment-anything). Backend "
            "'grounded_sam' runs the same model pair (GroundingDINO + SAM 2) through transformers."
        )
    from lang_sam import LangSAM

    return LangSAM


def load_masking_models(config: MaskingConfig, device: str | torch.device | None = None) -> MaskingModels:
    """Load the detector and segmenter of ``config`` (or LangSAM) onto ``device``."""
    device = resolve_device(device)
    dtype = DTYPES[config.torch_dtype]
    if not config.loads_models():
        raise ValueError(f"backend {config.backend!r} loads no models")
    if config.backend == "lang_sam":
        return MaskingModels(device=device, lang_sam=_require_lang_sam()(sam_type=config.lang_sam_type))

    detector_source = {"pretrained_model_name_or_path": config.detector_id, "revision": config.detector_revision}
    segmenter_source = {"pretrained_model_name_or_path": config.segmenter_id, "revision": config.segmenter_revision}
    # An unreachable id fails here, on its config, with an error naming it.
    with reaching(config.detector_id, config.detector_revision, "masking detector"):
        detector_type = AutoConfig.from_pretrained(**detector_source).model_type
    if detector_type != "grounding-dino":
        raise ValueError(f"detector_id {config.detector_id!r} is a {detector_type!r} checkpoint, not grounding-dino")
    with reaching(config.segmenter_id, config.segmenter_revision, "masking segmenter"):
        segmenter_type = AutoConfig.from_pretrained(**segmenter_source).model_type
    if segmenter_type not in SEGMENTER_CLASSES:
        raise ValueError(
            f"segmenter_id {config.segmenter_id!r} is a {segmenter_type!r} checkpoint; "
            f"expected one of {sorted(SEGMENTER_CLASSES)}"
        )
    detector = GroundingDinoForObjectDetection.from_pretrained(**detector_source, dtype=dtype)
    segmenter = SEGMENTER_CLASSES[segmenter_type].from_pretrained(**segmenter_source, dtype=dtype)
    return MaskingModels(
        device=device,
        dtype=dtype,
        detector_processor=GroundingDinoProcessor.from_pretrained(**detector_source),
        detector=detector.to(device).eval(),
        # AutoProcessor: SAM and SAM 2 checkpoints name their own processor class.
        segmenter_processor=AutoProcessor.from_pretrained(**segmenter_source),
        segmenter=segmenter.to(device).eval(),
    )


# --- adapters over transformers' post-processing (argument names changed across releases) ---


def post_process_grounded_detection(
    processor, outputs, input_ids, *, box_threshold: float, text_threshold: float, target_sizes
) -> list[dict]:
    """GroundingDINO outputs -> per image ``{"boxes" (n, 4) xyxy pixels, "scores" (n,), "text_labels"}``.

    The box threshold is called ``threshold`` in recent transformers and ``box_threshold``
    in older ones, and the phrases moved from ``labels`` to ``text_labels``.
    """
    method = processor.post_process_grounded_object_detection
    keyword = "threshold" if "threshold" in inspect.signature(method).parameters else "box_threshold"
    results = method(
        outputs, input_ids, **{keyword: box_threshold}, text_threshold=text_threshold, target_sizes=target_sizes
    )
    return [
        {
            "boxes": result["boxes"],
            "scores": result["scores"],
            "text_labels": result["text_labels"] if "text_labels" in result else result["labels"],
        }
        for result in results
    ]


def post_process_masks(processor, pred_masks, inputs) -> list[torch.Tensor]:
    """Segmenter outputs -> per image boolean masks ``(num_boxes, 1, H, W)`` at the original size.

    SAM needs the resized (unpadded) input sizes to crop its padding; SAM 2 resizes without
    padding and takes only the original sizes.
    """
    method = processor.image_processor.post_process_masks
    sizes = [inputs["original_sizes"]]
    if "reshaped_input_sizes" in inspect.signature(method).parameters:
        sizes.append(inputs["reshaped_input_sizes"])
    return method(pred_masks.float().cpu(), *sizes)


def _select(scores: np.ndarray, policy: str) -> np.ndarray:
    """Indices of the boxes whose masks make up the result."""
    if len(scores) == 0:
        return np.zeros(0, dtype=int)
    return np.array([int(np.argmax(scores))]) if policy == "first" else np.arange(len(scores))


def _row(size: tuple[int, int], boxes: np.ndarray, scores: np.ndarray, masks: np.ndarray, config: MaskingConfig) -> dict:
    """One output row from the selected boxes, their scores and their masks ``(n, H, W)``."""
    width, height = size
    if len(boxes) == 0:
        empty = mask_image(np.zeros((height, width), bool))
        return {"mask": empty, "mask_box": [], "mask_score": 0.0, "mask_status": NO_DETECTION}
    mask = dilate(region_mask(np.any(masks, axis=0), config.region), config.dilation)
    box = [
        float(np.clip(boxes[:, 0].min(), 0, width)),
        float(np.clip(boxes[:, 1].min(), 0, height)),
        float(np.clip(boxes[:, 2].max(), 0, width)),
        float(np.clip(boxes[:, 3].max(), 0, height)),
    ]
    status = OK if mask.any() else EMPTY_MASK
    return {"mask": mask_image(mask), "mask_box": box, "mask_score": float(scores.max()), "mask_status": status}


def _columns(rows: list[dict]) -> dict:
    return {name: [row[name] for row in rows] for name in MASK_FEATURES}


# --- backends ---


def prompt_for(class_name: str, template: str) -> str:
    """The text prompt of a class: lower-cased, '_' as spaces, ending in '.' as GroundingDINO expects."""
    prompt = template.format(class_name=class_name.replace("_", " ").lower()).strip()
    # A prompt without the trailing "." would also be read by the processor as a list of labels.
    return prompt if prompt.endswith(".") else prompt + "."


def _to(inputs, device: torch.device, dtype: torch.dtype) -> dict:
    return {
        key: (value.to(device, dtype) if value.is_floating_point() else value.to(device))
        if isinstance(value, torch.Tensor)
        else value
        for key, value in inputs.items()
    }


@torch.inference_mode()
def detect(images: list[Image.Image], prompts: list[str], *, models: MaskingModels, config: MaskingConfig):
    """GroundingDINO boxes for one prompt per image: ``[(boxes (n, 4) float32, scores (n,))]``."""
    inputs = models.detector_processor(images=images, text=prompts, padding=True, return_tensors="pt")
    outputs = models.detector(**_to(inputs, models.device, models.dtype))
    results = post_process_grounded_detection(
        models.detector_processor,
        outputs,
        inputs["input_ids"].to(models.device),
        box_threshold=config.box_threshold,
        text_threshold=config.text_threshold,
        target_sizes=[image.size[::-1] for image in images],
    )
    return [
        (r["boxes"].float().cpu().numpy().reshape(-1, 4), r["scores"].float().cpu().numpy().reshape(-1))
        for r in results
    ]


@torch.inference_mode()
def segment(images: list[Image.Image], boxes: list[np.ndarray], *, models: MaskingModels) -> list[np.ndarray]:
    """SAM masks ``(n_i, H, W)`` for the ``n_i >= 1`` boxes of each image, one mask per box."""
    counts = [len(b) for b in boxes]
    most = max(counts)
    # The processors need the same number of boxes per image: repeat an image's first box,
    # whose duplicate masks are dropped below.
    padded = [np.concatenate([b, np.repeat(b[:1], most - len(b), axis=0)]).tolist() for b in boxes]
    inputs = models.segmenter_processor(images=images, input_boxes=padded, return_tensors="pt")
    outputs = models.segmenter(**_to(inputs, models.device, models.dtype), multimask_output=False)
    masks = post_process_masks(models.segmenter_processor, outputs.pred_masks, inputs)
    return [m[:n, 0].numpy().astype(bool) for m, n in zip(masks, counts)]


def _grounded_sam_rows(images, prompts, *, models: MaskingModels, config: MaskingConfig) -> list[dict]:
    detections = detect(images, prompts, models=models, config=config)
    chosen = [_select(scores, config.mask_policy) for _, scores in detections]
    todo = [i for i, idx in enumerate(chosen) if len(idx)]
    masks = {}
    if todo:
        found = segment([images[i] for i in todo], [detections[i][0][chosen[i]] for i in todo], models=models)
        masks = dict(zip(todo, found))
    rows = []
    for i, (image, (boxes, scores)) in enumerate(zip(images, detections)):
        empty = np.zeros((0, image.height, image.width), bool)
        rows.append(_row(image.size, boxes[chosen[i]], scores[chosen[i]], masks.get(i, empty), config))
    return rows


def _lang_sam_rows(images, prompts, *, models: MaskingModels, config: MaskingConfig) -> list[dict]:
    results = models.lang_sam.predict(
        images, prompts, box_threshold=config.box_threshold, text_threshold=config.text_threshold
    )
    rows = []
    for image, result in zip(images, results):
        boxes = np.asarray(result["boxes"], dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(result["scores"], dtype=np.float32).reshape(-1)
        masks = np.asarray(result["masks"]).reshape(len(boxes), image.height, image.width) > 0
        idx = _select(scores, config.mask_policy)
        rows.append(_row(image.size, boxes[idx], scores[idx], masks[idx], config))
    return rows


def _column_rows(batch: dict, config: MaskingConfig) -> list[dict]:
    rows = []
    ids = batch.get("example_id") or [f"row {i} of the batch" for i in range(len(batch["image"]))]
    for image, source, example_id in zip(batch["image"], batch[config.mask_column], ids):
        # A mask made for another image (a resized copy, a wrong file) fails its own row only,
        # as an unreadable one does: the other rows' masks are still good.
        if source is None or source.size != image.size:
            found = "no mask" if source is None else f"a {source.width}x{source.height} mask"
            reason = (f"failed: mask size mismatch: column {config.mask_column!r} holds {found}, "
                      f"the image is {image.width}x{image.height}")
            warnings.warn(f"masking: {example_id}: {reason}", stacklevel=2)
            rows.append(failed_row(reason))
            continue
        rows.append(_given_mask_row(binary_mask(source), config))
    return rows


def _given_mask_row(mask: np.ndarray, config: MaskingConfig) -> dict:
    """The row of a mask that needs no detection (column, template): region, dilation, its own box."""
    mask = dilate(region_mask(mask, config.region), config.dilation)
    box = mask_bbox(mask)
    status, score = (OK, 1.0) if box else (EMPTY_MASK, 0.0)
    return {"mask": mask_image(mask), "mask_box": box, "mask_score": score, "mask_status": status}


def _template_rows(batch: dict, config: MaskingConfig) -> list[dict]:
    template = config.hair_template()
    return [_given_mask_row(template.mask(image.height, image.width), config) for image in batch["image"]]


def mask_batch(
    batch: dict, *, models: MaskingModels | None, config: MaskingConfig, class_names: Sequence[str]
) -> dict:
    """Map function: the ``mask*`` columns of a batch (prompt = class name of the row's ``label``)."""
    if config.backend == "column":
        return _columns(_column_rows(batch, config))
    if config.backend == "template":
        return _columns(_template_rows(batch, config))
    images = [to_rgb(image) for image in batch["image"]]
    prompts = [prompt_for(class_names[label], config.prompt_template) for label in batch["label"]]
    ids = batch.get("example_id") or [f"row {i} of the batch" for i in range(len(images))]
    backend_rows = _lang_sam_rows if config.backend == "lang_sam" else _grounded_sam_rows
    rows = []
    for start in range(0, len(images), config.batch_size):
        chunk = slice(start, start + config.batch_size)
        rows += _rows_or_failures(backend_rows, images[chunk], prompts[chunk], ids[chunk], models=models, config=config)
    return _columns(rows)


def _rows_or_failures(backend_rows, images, prompts, ids, **kwargs) -> list[dict]:
    """The backend's rows for a chunk; if the models refuse the chunk, each image alone, so
    that one they cannot take (a 1 x 500 strip, which the processor resizes to 0 pixels)
    fails its own row with the reason and the other rows are masked as usual."""
    try:
        return backend_rows(images, prompts, **kwargs)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError) as error:
        if len(images) > 1:
            return [row for one in zip(images, prompts, ids)
                    for row in _rows_or_failures(backend_rows, [one[0]], [one[1]], [one[2]], **kwargs)]
        reason = f"failed: the masking models cannot take this {images[0].width}x{images[0].height} image: " \
                 f"{type(error).__name__}: {error}"
        warnings.warn(f"masking: {ids[0]}: {reason}", stacklevel=2)
        return [failed_row(reason)]


def failed_rows(batch: dict, reasons: Sequence[str], **_) -> dict:
    """The mask columns of rows whose image (or mask) cannot be read: no mask, the reason as status."""
    n = len(reasons)
    return {"mask": [None] * n, "mask_box": [[] for _ in range(n)], "mask_score": [0.0] * n, "mask_status": list(reasons)}


def failed_row(reason: str) -> dict:
    """One row of :func:`failed_rows`."""
    return {name: values[0] for name, values in failed_rows({}, [reason]).items()}


def image_guard(config: MaskingConfig) -> ImageGuard:
    """Rows with an unreadable image (or, for ``column``, mask) fail alone, with the reason."""
    columns = ("image", config.mask_column) if config.backend == "column" else ("image",)
    return ImageGuard(columns=columns, required=columns, fail=failed_rows)


def _check_dataset(dataset: Dataset, config: MaskingConfig, class_names: Sequence[str] | None) -> list[str]:
    needed = {"column": ["image", config.mask_column], "template": ["image"]}.get(config.backend, ["image", "label"])
    require_columns(dataset, needed, f"masking (backend {config.backend!r})")
    # A stage adds columns and never rewrites its input; copying `mask` onto itself unchanged is the one exception.
    clashes = [c for c in MASK_FEATURES if c in dataset.column_names]
    if config.copies_mask_column():
        clashes = [c for c in clashes if c != "mask"]
    if clashes:
        raise ValueError(
            f"the dataset already has column(s) {clashes} that masking would overwrite; rename them first "
            f"(e.g. dataset.rename_column('mask', 'gt_mask')) or use backend='column' to reuse a mask column"
        )
    if config.backend in MODEL_FREE_BACKENDS:
        return list(class_names or [])
    if class_names is None:
        if not isinstance(dataset.features["label"], ClassLabel):
            raise ValueError("column 'label' is not a ClassLabel: pass class_names (one text prompt per label)")
        class_names = dataset.features["label"].names
    labels = set(dataset.unique("label"))
    if labels and (min(labels) < 0 or max(labels) >= len(class_names)):
        raise ValueError(f"labels {sorted(labels)} need {max(labels) + 1} class names, got {list(class_names)}")
    return list(class_names)


def keep_source_mask(dataset: Dataset, config: MaskingConfig) -> tuple[Dataset, MaskingConfig]:
    """The dataset with its own ``mask`` column (the toy's ground truth, Waterbirds'
    segmentations) kept as ``source_mask``, and the config reading it from there.

    Masking writes ``mask`` and never overwrites an input column; the pipeline and
    ``dbb-hf mask`` both make room this way (the one exception: the column backend copying
    ``mask`` unchanged).
    """
    if "mask" not in dataset.column_names or config.copies_mask_column():
        return dataset, config
    dataset = dataset.rename_column("mask", "source_mask")
    if config.backend == "column" and config.mask_column == "mask":
        config = dataclasses.replace(config, mask_column="source_mask")
    return dataset, config


def run_masking(
    dataset: Dataset,
    config: MaskingConfig,
    *,
    class_names: Sequence[str] | None = None,
    models: MaskingModels | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    shards: ShardPlan | None = None,
) -> Dataset:
    """Add the ``mask`` columns to every row of ``dataset``.

    ``class_names[label]`` is the text prompt of each label (default: the names of the
    ``label`` ClassLabel; the paper prompts "bird" for both Waterbirds classes, "animal"
    for MetaShift and "hair" for CelebA). Models are loaded from ``config`` unless given.
    With ``output_dir`` the stage runs shard by shard and resumes after a crash (``shards``:
    the shard size, and for several processes ``ShardPlan.for_processes``); otherwise it is
    one ``datasets.map``, cached in ``cache_dir`` if given.
    """
    class_names = _check_dataset(dataset, config, class_names)
    if config.backend == "column":
        parts = [config.mask_column]
    elif config.backend == "template":
        parts = ["template"]  # the template's fields are in the config, which the fingerprint covers
    else:
        models = models or load_masking_models(config, device)
        prompts = [prompt_for(name, config.prompt_template) for name in class_names]
        models_used = [config.detector_id, config.detector_revision, config.segmenter_id, config.segmenter_revision]
        parts = [*models_used, prompts]
    return run_stage(
        dataset,
        mask_batch,
        cache_dir=cache_dir,
        output_dir=output_dir,
        shards=shards,
        stage="masking",
        config=config,
        new_features=MASK_FEATURES,
        fn_kwargs={"models": models, "config": config, "class_names": class_names},
        batch_size=config.batch_size,
        fingerprint_parts=parts,
        guard=image_guard(config),
    )
