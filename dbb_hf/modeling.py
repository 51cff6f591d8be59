"""The classifier: a timm model by name, its own preprocessing, saved in timm's Hub format.

A saved classifier folder is exactly what a timm Hub repository holds (``config.json`` +
``model.safetensors``), so it loads back without dbb_hf through
``timm.create_model("local-dir:<folder>", pretrained=True)`` and, once pushed, through
``timm.create_model("hf-hub:<repo id>", pretrained=True)``. The class names travel in the
config's ``label_names``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torchvision.transforms import v2 as T

from .hub_access import reaching

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ClassifierConfig:
    model_name: str = field(
        default="resnet50",
        metadata={"help": "timm model name, 'hf-hub:<repo id>' or 'local-dir:<folder>'."},
    )
    pretrained: bool = field(
        default=True, metadata={"help": "Start from the model's pretrained weights (downloads from the Hub)."}
    )
    image_size: Optional[int] = field(
        default=None, metadata={"help": "Input resolution; default: the model's own data config."}
    )
    crop_pct: Optional[float] = field(
        default=None, metadata={"help": "Centre-crop fraction of evaluation preprocessing; default: the model's."}
    )
    crop_mode: Optional[str] = field(
        default=None,
        metadata={"help": "Evaluation preprocessing: center (resize the short side, centre crop) or squash "
                  "(resize the whole image to the square input, as the inpainting stage does); default: the model's."},
    )
    drop_rate: float = field(default=0.0, metadata={"help": "Dropout before the classifier head."})

    def __post_init__(self):
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_mode not in (None, "center", "squash"):
            raise ValueError(f"crop_mode must be center or squash, got {self.crop_mode!r}")


def create_classifier(config: ClassifierConfig, num_classes: int) -> torch.nn.Module:
    """A timm model with a fresh ``num_classes`` head, its data config set to ``image_size``."""
    with reaching(config.model_name, None, "classifier (pretrained weights; --classifier_pretrained false trains from scratch)"):
        model = timm.create_model(
            config.model_name, pretrained=config.pretrained, num_classes=num_classes, drop_rate=config.drop_rate
        )
    # The data config (resolved from pretrained_cfg) drives preprocessing everywhere, so
    # overrides are written there once and saved with the model.
    overrides = {}
    if config.image_size is not None:
        overrides["input_size"] = (3, config.image_size, config.image_size)
    if config.crop_pct is not None:
        overrides["crop_pct"] = config.crop_pct
    if config.crop_mode is not None:
        overrides["crop_mode"] = config.crop_mode
    if overrides:
        model.pretrained_cfg = dict(model.pretrained_cfg, **overrides)
        model.pretrained_cfg.pop("test_input_size", None)
        model.pretrained_cfg.pop("test_crop_pct", None)
    return model


def data_config(model: torch.nn.Module) -> dict:
    return resolve_data_config({}, model=model)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the classifier's weights and preprocessing: what its scores depend on.

    It names the classifier in stage fingerprints (ERM scores, pruning's scores): the ERM
    model is usually a local fine-tuned checkpoint that no Hub id and revision identify,
    but its tensors' bytes do (pickling the module would not be stable). It reads every
    tensor once (0.2 s for ResNet-50's 94 MB on a CPU), so rescoring with the same weights
    reuses the cached scores whatever folder or object they came from.
    """
    model = getattr(model, "module", model)
    digest = hashlib.sha256(json.dumps(data_config(model), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def eval_transform(model: torch.nn.Module):
    """Deterministic evaluation preprocessing (PIL image -> normalised tensor)."""
    return create_transform(**data_config(model), is_training=False)


@torch.no_grad()
def image_probabilities(model: torch.nn.Module, images, batch_size: int = 64):
    """Softmax of ``model`` on PIL images through :func:`eval_transform`, a numpy ``(n, classes)``
    array: the verdicts of a judge such as the miniature priors' oracles on edits."""
    import numpy as np

    transform = eval_transform(model)
    out = [model(torch.stack([transform(image.convert("RGB")) for image in images[start : start + batch_size]]))
           .softmax(dim=1).numpy() for start in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.num_classes))


def train_transform(model: torch.nn.Module):
    """The model's training augmentation (random resized crop, flip) from its data config."""
    return create_transform(**data_config(model), is_training=True)


def geometric_transform(model: torch.nn.Module, *, nearest: bool = False):
    """The resize and centre crop of :func:`eval_transform`, without normalisation.

    Images, edits and masks that go through this land on the same pixel grid as the
    classifier's input (masks with ``nearest=True``), which integrated gradients need.
    """
    cfg = data_config(model)
    size = cfg["input_size"][-1]
    scale = int(size / cfg.get("crop_pct", 1.0))
    interpolation = T.InterpolationMode.NEAREST if nearest else T.InterpolationMode(cfg["interpolation"])
    if cfg.get("crop_mode") == "squash":  # timm's squash: both sides to the crop's scale, then the centre crop
        return T.Compose([T.Resize((scale, scale), interpolation=interpolation), T.CenterCrop(size)])
    return T.Compose([T.Resize(scale, interpolation=interpolation), T.CenterCrop(size)])


def save_classifier(model: torch.nn.Module, directory: str, label_names: list[str], metadata: dict | None = None):
    """Save in timm's Hub format; ``metadata`` goes to ``dbb_hf.json`` beside it."""
    unwrapped = getattr(model, "module", model)
    timm.models.save_for_hf(
        unwrapped,
        directory,
        model_config={"label_names": list(label_names)},
        safe_serialization=True,
        data_config=data_config(unwrapped),
    )
    if metadata is not None:
        with open(os.path.join(directory, "dbb_hf.json"), "w") as f:
            json.dump(metadata, f, indent=2, default=str)


def load_classifier(name_or_path: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a saved classifier (a folder, or a Hub id as ``hf-hub:<id>``), in eval mode."""
    if os.path.isdir(name_or_path):
        if not os.path.exists(os.path.join(name_or_path, CONFIG_NAME)):
            raise FileNotFoundError(f"{name_or_path!r} has no {CONFIG_NAME}: not a saved classifier folder")
        name_or_path = f"local-dir:{name_or_path}"
    elif not name_or_path.startswith(("hf-hub:", "local-dir:")):
        raise FileNotFoundError(f"classifier folder {name_or_path!r} not found (use hf-hub:<id> for the Hub)")
    with reaching(name_or_path, None, "classifier"):
        model = timm.create_model(name_or_path, pretrained=True)
    return model.to(device).eval()


def saved_label_names(name_or_path: str) -> list[str] | None:
    """The ``label_names`` of a saved classifier (folder or ``hf-hub:<id>``), read from its config only.

    Lets a run compare the classifier's classes with the dataset's before loading weights.
    """
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name_or_path!r} has no {CONFIG_NAME}: not a saved classifier folder")
    elif name_or_path.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        repo_id = name_or_path[len("hf-hub:"):]
        with reaching(repo_id, None, "classifier"):
            path = hf_hub_download(repo_id, CONFIG_NAME)
    else:
        raise FileNotFoundError(f"classifier folder {name_or_path!r} not found (use hf-hub:<id> for the Hub)")
    with open(path) as f:
        names = json.load(f).get("label_names")
    return None if names is None else list(names)


def label_names(model: torch.nn.Module) -> list[str]:
    names = model.pretrained_cfg.get("label_names")
    if names is None:
        raise ValueError("the classifier's config has no label_names; save it with save_classifier")
    return list(names)
