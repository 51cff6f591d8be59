"""The models the Space runs, loaded once at start from the settings' ids (``from_pretrained``).

Which models they are is configuration only (:mod:`.settings`): a Space offline with
models shipped in a package is a preset that names their folders, loaded by the same calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from dbb_hf.devices import resolve_device
from dbb_hf.inpainting import load_inpainting_pipeline
from dbb_hf.masking import MaskingModels, load_masking_models
from dbb_hf.modeling import label_names, load_classifier
from dbb_hf.pruning import thresholds_per_class
from dbb_hf.textual_inversion import load_tokens

from .settings import OBJECT_FINDERS, Settings


@dataclass
class SpaceModels:
    """Everything ``run_edit`` runs, loaded once at start."""

    classifier: torch.nn.Module
    masking: Optional[MaskingModels]
    pipe: Any
    class_names: list[str]
    object_names: list[str]
    tokens: list[str]
    Psi: list[float]
    P: list[float]
    # For the column masking backend: the object mask of an upload, which has no mask column.
    find_object: Optional[Callable[[Image.Image], np.ndarray]] = None


def _per_class(values: Sequence[str] | None, default: list[str], n: int, what: str) -> list[str]:
    if values is None:
        return default
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} classes; give one or {n}")
    return list(values)


def _tokens_path(tokens: str, revision: str) -> str:
    if os.path.exists(tokens):
        return tokens
    from huggingface_hub import snapshot_download

    # Only what load_tokens reads: no pickle (a .bin or .pt) is even downloaded.
    return snapshot_download(tokens, revision=revision, allow_patterns=["*.safetensors", "*.json"])


def load_models(settings: Settings) -> SpaceModels:
    """Load the classifier, detector + segmenter and inpainting pipeline of ``settings`` once."""
    space = settings.space
    device = str(resolve_device(space.device))
    classifier = load_classifier(space.classifier, device=device)
    class_names = list(space.class_names or label_names(classifier))
    n = len(class_names)
    if classifier.num_classes != n:
        raise ValueError(f"the classifier has {classifier.num_classes} outputs but {n} class names: {class_names}")
    object_names = _per_class(space.object_names, [c.replace("_", " ") for c in class_names], n, "object_names")
    pipe = load_inpainting_pipeline(settings.inpainting, device=device)
    if space.tokens:
        tokens = load_tokens(pipe, _tokens_path(space.tokens, space.tokens_revision))
        if len(tokens) != n:
            raise ValueError(f"{space.tokens} holds {len(tokens)} tokens {tokens} for {n} classes {class_names}")
    else:
        tokens = _per_class(space.class_prompts, [""] * n, n, "class_prompts")
    Psi = [float(p) for p in space.Psi]
    if len(Psi) != n:
        raise ValueError(f"Psi has {len(Psi)} values for {n} classes {class_names}")
    return SpaceModels(
        classifier=classifier,
        # The template and column backends run no model.
        masking=load_masking_models(settings.masking, device) if settings.masking.loads_models() else None,
        pipe=pipe,
        class_names=class_names,
        object_names=object_names,
        tokens=tokens,
        Psi=Psi,
        P=thresholds_per_class(settings.pruning.P, n),
        find_object=OBJECT_FINDERS[space.find_object] if space.find_object else None,
    )
