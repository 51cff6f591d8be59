"""One image through the method's stages, as the pipeline runs them on a dataset: the object
of the source class masked, repainted as the target class, and the edit scored and judged."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from dbb_hf.images import to_rgb
from dbb_hf.inpainting import inpaint_batch
from dbb_hf.mask_arithmetic import mask_image
from dbb_hf.masking import OK, mask_batch
from dbb_hf.pruning import explain_edit, image_transform, prune_reason

from .models import SpaceModels
from .settings import Settings


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


def fit(image: Image.Image, side: int) -> Image.Image:
    """``image`` in RGB, scaled down (keeping its aspect) so that its longer side is at most ``side``."""
    image = to_rgb(image)  # 16-bit uploads scaled, not clipped to white
    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


@torch.no_grad()
def probabilities(classifier: torch.nn.Module, image: Image.Image) -> np.ndarray:
    """The classifier's class probabilities on ``image`` (its evaluation preprocessing)."""
    parameter = next(classifier.parameters())
    x = image_transform(classifier)(image)[None].to(parameter.device, parameter.dtype)
    return classifier(x).softmax(-1)[0].float().cpu().numpy()


def run_edit(
    image: Image.Image,
    target_class: str,
    source_class: Optional[str] = None,
    *,
    models: SpaceModels,
    config: Settings,
) -> EditResult:
    """Mask, inpaint and score one image: the Space's whole computation, without the UI.

    ``source_class`` (a class name) is what the image shows; None takes the classifier's
    prediction. The edit's seed hashes ``inpainting.seed`` with the image's pixels, so the
    same image and target give the same edit.
    """
    names = models.class_names
    target = _class_index(target_class, names, "target class")
    image = fit(image, config.space.max_image_side)
    scores = probabilities(models.classifier, image)
    source = int(scores.argmax()) if source_class is None else _class_index(source_class, names, "source class")
    if source == target:
        raise ValueError(f"the image is already {names[source]!r}: pick a different target class")
    example_id = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()[:16]
    batch = {"image": [image], "label": [source]}
    if config.masking.backend == "column":
        # The column backend turns a found object into the run's region (a square box, say).
        batch[config.masking.mask_column] = [mask_image(models.find_object(image))]
    masks = mask_batch(batch, models=models.masking, config=config.masking, class_names=models.object_names)
    result = dict(
        image=image,
        source=source,
        target=target,
        source_probability=float(scores[source]),
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
            config=config.inpainting,
            class_names=models.object_names,
            tokens=models.tokens,
        )
        result.update(prompt=painted["prompt"][0], edit=painted["generated"][0], changed=painted["generated_mask"][0])
    if result["edit"] is not None:
        explained = explain_edit(
            models.classifier, image, result["edit"], result["changed"], source, target, config.pruning
        )
        result.update(psi=explained["psi"], rho=explained["rho"], heatmap=explained["heatmap"])
    reason = prune_reason(result["psi"], result["rho"], result["Psi"], result["P"])
    return EditResult(**result, keep=reason == "", reason=reason)
