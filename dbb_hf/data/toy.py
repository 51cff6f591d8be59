"""The embedded toy benchmark: bars over landscapes, generated offline in seconds.

Two classes of objects (``horizontal_bar`` / ``vertical_bar``, random colour, length and
thickness) over two kinds of background (``land``: green noise; ``water``: blue waves).
In the training split the background agrees with the class (horizontal on land,
vertical on water) for a fraction ``correlation`` of each class; validation and test are
balanced over the four groups. ``num_classes=3`` adds a third class, ``square`` (a filled
square), with its own majority background, ``sand`` (warm stripes): nine groups, a
class's minority spread evenly over the other two backgrounds. A small network learns the bars' orientation from scratch
in minutes on a CPU, yet ERM still leans on the background, which is what the method has
to repair. The ground-truth object mask is a column (``mask``, mode "L", 0 or 255).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from datasets import DatasetDict, Image as ImageFeature
from PIL import Image

from .common import base_features, from_records

LABEL_NAMES = ["horizontal_bar", "vertical_bar"]
SPURIOUS_NAMES = ["land", "water"]
# num_classes=3: a third object and its majority background.
THREE_CLASS_LABEL_NAMES = LABEL_NAMES + ["square"]
THREE_CLASS_SPURIOUS_NAMES = SPURIOUS_NAMES + ["sand"]


@dataclass
class ToyConfig:
    num_train: int = field(default=3000, metadata={"help": "Training images (split evenly over the classes)."})
    num_validation: int = field(default=600, metadata={"help": "Validation images (balanced over the groups)."})
    num_test: int = field(default=1200, metadata={"help": "Test images (balanced over the groups)."})
    image_size: int = field(default=32, metadata={"help": "Side of the square images in pixels."})
    correlation: float = field(
        default=0.95,
        metadata={"help": "Fraction of each training class drawn on its majority background."},
    )
    seed: int = field(default=0, metadata={"help": "Seed: the same seed gives the same images."})
    num_classes: int = field(
        default=2, metadata={"help": "2 (bars on land / water) or 3 (and squares on sand): as many backgrounds."}
    )

    def __post_init__(self):
        if self.num_classes not in (2, 3):
            raise ValueError(f"num_classes must be 2 or 3, got {self.num_classes}")
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"correlation must be in [0, 1], got {self.correlation}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        for name in ("num_train", "num_validation", "num_test"):
            if getattr(self, name) < 4:
                raise ValueError(f"{name} must be at least 4, got {getattr(self, name)}")


def _background(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:  # land: green with coarse and fine noise
        base = rng.uniform([50, 110, 30], [100, 170, 80])
        coarse = rng.normal(0, 12, (size // 4 + 1, size // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)
        img = base + coarse[:size, :size] + rng.normal(0, 14, (size, size, 3))
    elif kind == 1:  # water: blue with waves
        base = rng.uniform([20, 60, 140], [70, 120, 210])
        freq = rng.uniform(0.5, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(freq * yy + 0.6 * np.sin(0.35 * xx + phase) + phase)
        img = base + 28 * wave[..., None] * np.array([0.4, 0.7, 1.0]) + rng.normal(0, 6, (size, size, 3))
    else:  # sand: warm yellow with diagonal stripes
        base = rng.uniform([170, 130, 50], [230, 180, 100])
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(0.5 * (xx + yy) + phase)
        img = base + 20 * stripes[..., None] + rng.normal(0, 8, (size, size, 3))
    return img


def _bar_mask(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    length = int(rng.integers(int(0.4 * size), int(0.7 * size) + 1))
    thickness = int(rng.integers(max(2, int(0.1 * size)), max(3, int(0.16 * size)) + 1))
    if label == 2:  # a square: as wide as it is tall
        side = int(rng.integers(int(0.25 * size), int(0.4 * size) + 1))
        height = width = side
    else:
        height, width = (thickness, length) if label == 0 else (length, thickness)
    top = int(rng.integers(1, size - height))
    left = int(rng.integers(1, size - width))
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def render(rng: np.random.Generator, label: int, background: int, size: int):
    """One image and its object mask (both PIL)."""
    img = _background(rng, background, size)
    mask = _bar_mask(rng, label, size)
    img[mask] = rng.uniform(0, 255, 3)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return Image.fromarray(img), Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


# Fewer pixels of one colour than this are background noise repeating, not an object: the
# smallest toy object is a bar of 0.4 x 0.1 of the side, 36 pixels at the smallest size (16 px: 12).
MIN_OBJECT_PIXELS = 12


def find_object(image: Image.Image) -> np.ndarray:
    """The object of a toy image that comes without its mask (an upload): a boolean ``(H, W)`` array.

    :func:`render` paints the object in one solid colour over a noisy background, in which a
    colour rarely repeats, so the object is the image's most frequent colour. The mask is
    exact on a toy image as rendered (PNG), and on one scaled up with nearest-neighbour;
    scaling down blends the object's edge, which a box or square region covers again. An
    image with no colour on at least ``MIN_OBJECT_PIXELS`` pixels gives an empty mask.
    """
    pixels = np.asarray(image.convert("RGB"))
    _, inverse, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_inverse=True, return_counts=True)
    if counts.max() < MIN_OBJECT_PIXELS:
        return np.zeros(pixels.shape[:2], dtype=bool)
    return (inverse.reshape(-1) == counts.argmax()).reshape(pixels.shape[:2])


def _split_design(rng: np.random.Generator, n: int, correlation: float | None, num_classes: int = 2):
    """(label, spurious) pairs: correlated for training, balanced groups otherwise.

    In training, class c lies on background c for a fraction ``correlation`` of its
    images; the rest are spread evenly over the other backgrounds.
    """
    pairs = []
    k = num_classes
    if correlation is None:
        for g in range(k * k):
            count = n // (k * k) + (1 if g < n % (k * k) else 0)
            pairs += [(g // k, g % k)] * count
    else:
        for label in range(k):
            count = n // k + (1 if label < n % k else 0)
            majority = int(round(correlation * count))
            pairs += [(label, label)] * majority
            others = [b for b in range(k) if b != label]
            for j, background in enumerate(others):
                share = (count - majority) // len(others) + (1 if j < (count - majority) % len(others) else 0)
                pairs += [(label, background)] * share
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


def load_toy(config: ToyConfig | None = None) -> DatasetDict:
    """Generate the toy benchmark (deterministic for ``config.seed``)."""
    config = config or ToyConfig()
    k = config.num_classes
    names = (LABEL_NAMES, SPURIOUS_NAMES) if k == 2 else (THREE_CLASS_LABEL_NAMES, THREE_CLASS_SPURIOUS_NAMES)
    features = base_features(*names, mask=ImageFeature())
    sizes = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}
    splits = {}
    for index, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([config.seed, index])
        design = _split_design(rng, n, config.correlation if split == "train" else None, k)
        records = {"image": [], "mask": [], "label": [], "spurious": [], "example_id": []}
        for i, (label, spurious) in enumerate(design):
            image, mask = render(rng, label, spurious, config.image_size)
            records["image"].append(image)
            records["mask"].append(mask)
            records["label"].append(label)
            records["spurious"].append(spurious)
            records["example_id"].append(f"toy-{split}-{i:06d}")
        splits[split] = from_records(records, features)
    return DatasetDict(splits)
