"""The miniature prior's training world: the toy benchmark's rendering, balanced and captioned.

Images come from :func:`dbb_hf.data.toy.render` itself (the same bars and backgrounds the
toy benchmark draws), balanced over the four (object, background) combinations instead of
correlated. Each image gets edit masks of two kinds:

- object masks: the bar's bounding box grown to a square (:func:`dbb_hf.masking.region_mask`
  with ``square_box``, the region the demo repaints, since a horizontal bar's own pixels
  cannot hold a vertical one), optionally dilated by a pixel or two; the masked image
  then shows no bar at all, so the caption alone says which bar to paint;
- random rectangles anywhere, which teach completing whatever they cover.

Captions name the object and the background in several phrasings, including the class
word alone and the inpainting prompt's form ``"A photo of a {token} {class_name}"`` (with
an empty token it tokenizes as ``"a photo of a {class_name}"``); an empty caption (the unconditional prompt of classifier-free guidance)
replaces them in training with a configured probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.toy import render
from ..masking import dilate, region_mask

OBJECT_WORDS = ("horizontal bar", "vertical bar")
BACKGROUND_WORDS = ("land", "water")
CAPTION_TEMPLATES = (
    "{object}",
    "a {object}",
    "a photo of a {object}",  # also the inpainting prompt template with an empty token
    "a {object} on {background}",
    "a photo of a {object} on {background}",
    "{object} on {background}",
    "a {object} in the {background}",
)
# Generic captions without the orientation: "a photo of a <learned token> bar" then reads
# like a caption the prior knows, the token adding what the generic word leaves out.
GENERIC_TEMPLATES = ("a bar", "a photo of a bar", "a bar on {background}", "a photo of a bar on {background}")


def captions(label: int, background: int) -> list[str]:
    """Every training caption of an image of class ``label`` on ``background``."""
    words = {"object": OBJECT_WORDS[label], "background": BACKGROUND_WORDS[background]}
    return [t.format(**words) for t in CAPTION_TEMPLATES]


def generic_captions(background: int) -> list[str]:
    return [t.format(background=BACKGROUND_WORDS[background]) for t in GENERIC_TEMPLATES]


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    object_mask: np.ndarray  # (H, W) bool: the bar's pixels
    label: int
    background: int


def render_pool(num_images: int, seed: int, size: int = 32) -> list[Sample]:
    """``num_images`` toy images, balanced over the 4 groups; image ``i`` depends only on ``(seed, i)``."""
    samples = []
    for i in range(num_images):
        group = i % 4
        label, background = group // 2, group % 2
        image, mask = render(np.random.default_rng([seed, i]), label, background, size)
        samples.append(Sample(np.asarray(image), np.asarray(mask) > 127, label, background))
    return samples


def object_edit_mask(object_mask: np.ndarray, dilation: int = 0) -> np.ndarray:
    """The region the demo repaints: the object's square box, grown by ``dilation`` pixels."""
    return dilate(region_mask(object_mask, "square_box"), dilation)


def random_rectangle(rng: np.random.Generator, size: int, min_side: int = 4, max_side: int | None = None) -> np.ndarray:
    max_side = max_side or int(0.75 * size)
    height, width = (int(rng.integers(min_side, max_side + 1)) for _ in range(2))
    top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def edit_masks(
    sample: Sample, rng: np.random.Generator, count: int, object_fraction: float, max_dilation: int
) -> list[np.ndarray]:
    """``count`` training masks for ``sample``: object square boxes with probability ``object_fraction``."""
    size = sample.image.shape[0]
    masks = []
    for _ in range(count):
        if rng.random() < object_fraction:
            masks.append(object_edit_mask(sample.object_mask, int(rng.integers(0, max_dilation + 1))))
        else:
            masks.append(random_rectangle(rng, size))
    return masks
