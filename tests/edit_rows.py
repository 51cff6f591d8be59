"""Rows as the selection and masking stages hand them to generation and pruning (images and
masks as PIL images or raw bytes, labels, targets, statuses), a tiny linear classifier with
timm's data config, the tiny inpainting pipeline, and compose edits of such rows: the bad-input
and run-mechanics tests build their cases from these."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, Value
from PIL import Image

from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline, prepare_donors, run_inpainting
from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline

NAMES = ["horizontal_bar", "vertical_bar"]
INPUT = 16


def noise(width, height, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(width, height, box=None, fill=None) -> Image.Image:
    """A 0/255 mask: ``box`` (l, t, r, b) set, or every pixel ``fill``."""
    mask = np.zeros((height, width), np.uint8)
    if fill is not None:
        mask[:] = fill
    else:
        left, top, right, bottom = box or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        mask[top:bottom, left:right] = 255
    return Image.fromarray(mask, mode="L")


def rows_dataset(images, masks, *, labels=None, targets=None, statuses=None) -> Dataset:
    """A selected-rows dataset (image cells may be PIL images or raw bytes)."""
    n = len(images)
    labels = labels if labels is not None else [0] * n
    columns = {
        "image": [{"bytes": v, "path": None} if isinstance(v, bytes) else v for v in images],
        "mask": [{"bytes": v, "path": None} if isinstance(v, bytes) else v for v in masks],
        "label": labels,
        "target_label": targets if targets is not None else [1 - y for y in labels],
        "example_id": [f"ex-{k}" for k in range(n)],
    }
    features = {
        "image": ImageFeature(),
        "mask": ImageFeature(),
        "label": ClassLabel(names=NAMES),
        "target_label": ClassLabel(names=NAMES),
        "example_id": Value("string"),
    }
    if statuses is not None:
        columns["mask_status"] = statuses
        features["mask_status"] = Value("string")
    return Dataset.from_dict(columns, features=Features(features))


def linear_model(seed=0):
    """A tiny classifier with timm's data config: f(x) = W flatten(x) + b at INPUT px."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * INPUT * INPUT, 2))
    model.pretrained_cfg = {"input_size": (3, INPUT, INPUT), "crop_pct": 1.0, "interpolation": "bilinear",
                            "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    return model.eval()


def donors_of(label, n=2, size=(24, 20)) -> Dataset:
    return rows_dataset([noise(*size, seed=50 + k) for k in range(n)], [box_mask(*size) for _ in range(n)],
                        labels=[label] * n).add_column("mask_status", ["ok"] * n)


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    model_dir = save_tiny_inpaint_pipeline(tmp_path_factory.mktemp("tiny-inpaint"))
    config = InpaintingConfig(model_id=model_dir, num_inference_steps=2, resolution=32, batch_size=4)
    return config, load_inpainting_pipeline(config, device="cpu")


def compose_edits(dataset, **overrides):
    config = InpaintingConfig(backend="compose", batch_size=4, **overrides)
    return run_inpainting(dataset, config, donors=prepare_donors(donors_of(1)))
