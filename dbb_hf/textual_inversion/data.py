"""What the token is trained on: the class's images as a reproducible stream of samples.

Randomness is a function of (seed, global sample index), not of stateful generators: any
sample (its image, flip, prompt, mask and noise) can be drawn again without replaying the
ones before it, so a run resumed from a checkpoint reproduces the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..images import to_rgb
from ..masking_template import HairTemplate, jittered_template

# Where an inpainting UNet's token learns to paint: "box" (random boxes, and the whole image
# with full_mask_probability) or "template" (the hair region of an aligned face).
MASK_REGIONS = ("box", "template")


def template_record(mask_region: str, template: HairTemplate) -> dict | None:
    """``template`` as recorded (fingerprints, resume key, provenance) where ``mask_region`` draws
    it, else None: a box run does not depend on the masking template."""
    return dataclasses.asdict(template) if mask_region == "template" else None


def as_pil_list(images) -> list[Image.Image]:
    """The images to learn from as RGB PIL images: a list of them, or a Dataset's ``image`` column."""
    if hasattr(images, "column_names"):  # a datasets.Dataset
        if "image" not in images.column_names:
            raise ValueError(f"the dataset has no 'image' column (columns: {images.column_names})")
        images = list(images["image"])
    images = list(images)
    if not images:
        raise ValueError("no images to learn the token from")
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"image {index} is a {type(image).__name__}, expected a PIL image")
    return [to_rgb(image) for image in images]


DATA_STREAM, NOISE_STREAM, ORDER_STREAM, MASK_STREAM = 0, 1, 2, 3


def sample_seed(seed: int, index: int, stream: int) -> int:
    """An independent 63-bit seed for one (sample, purpose): data and noise never share a stream."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def inpainting_mask(rng: np.random.Generator, resolution: int, full_probability: float) -> torch.Tensor:
    """A training mask ``(1, resolution, resolution)``, 1 = repaint, for an inpainting UNet.

    With ``full_probability`` the whole image: the UNet then sees no context and the token
    alone must carry the class's appearance, as in text-to-image textual inversion (Stable
    Diffusion's inpainting models were trained with 25 % fully masked samples). Otherwise
    one box with sides uniform between a quarter of the image and all of it, anywhere: the
    kind of region (``region="box"``/``"square_box"`` masks) the generator repaints, at
    every scale, so the token also learns to fill a region consistently with its context.
    """
    mask = torch.zeros(1, resolution, resolution)
    if rng.random() < full_probability:
        mask[:] = 1.0
        return mask
    low = max(1, resolution // 4)
    height, width = (int(v) for v in rng.integers(low, resolution + 1, size=2))
    top, left = int(rng.integers(0, resolution - height + 1)), int(rng.integers(0, resolution - width + 1))
    mask[:, top : top + height, left : left + width] = 1.0
    return mask


class CausalTokenDataset(torch.utils.data.Dataset):
    """One long pass over the images: item ``i`` is global training sample ``start + i``.

    Sample ``g`` shows image ``perm_e[g % n]`` (a fresh permutation for every pass
    ``e = g // n``), with a template and a horizontal flip drawn from a generator seeded
    by ``(seed, g)``, so any sample can be reproduced without replaying the ones before it.
    With ``full_mask_probability`` set (inpainting UNets) each sample also gets a mask drawn
    from its own stream of ``(seed, g)``: an :func:`inpainting_mask`, or with
    ``mask_region="template"`` the hair region of an aligned face
    (:func:`dbb_hf.masking_template.jittered_template` of ``hair_template``, as the face prior was trained),
    every sample, so that the token learns to paint what the generator will repaint.
    """

    def __init__(self, images, tokenizer, prompts: Sequence[str], resolution: int, seed: int, start: int, length: int,
                 full_mask_probability: float | None = None, mask_region: str = "box",
                 hair_template: HairTemplate = HairTemplate()):
        if mask_region not in MASK_REGIONS:
            raise ValueError(f"mask_region must be one of {MASK_REGIONS}, got {mask_region!r}")
        self.full_mask_probability = full_mask_probability
        self.mask_region, self.hair_template = mask_region, hair_template
        self.images = images
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.resolution = resolution
        self.seed = seed
        self.start = start
        self.length = length

    def __len__(self):
        return self.length

    def _image_index(self, sample: int) -> int:
        n = len(self.images)
        order = np.random.default_rng(sample_seed(self.seed, sample // n, ORDER_STREAM)).permutation(n)
        return int(order[sample % n])

    def __getitem__(self, i):
        sample = self.start + i
        rng = np.random.default_rng(sample_seed(self.seed, sample, DATA_STREAM))
        image = self.images[self._image_index(sample)]
        mask_rng = np.random.default_rng(sample_seed(self.seed, sample, MASK_STREAM))
        hair = None
        if self.full_mask_probability is not None and self.mask_region == "template":
            # In the image's own coordinates, then cropped, resized and flipped with it.
            hair = jittered_template(image.height, image.width, mask_rng, template=self.hair_template)
            hair = Image.fromarray(hair.astype(np.uint8) * 255)
        # Center crop to a square, then resize, as the recipe's --center_crop.
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        box = (left, top, left + side, top + side)
        image = image.crop(box).resize((self.resolution, self.resolution), resample=Image.Resampling.BICUBIC)
        if hair is not None:
            hair = hair.crop(box).resize((self.resolution, self.resolution), resample=Image.Resampling.NEAREST)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if hair is not None:
                hair = hair.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        prompt = self.prompts[int(rng.integers(len(self.prompts)))]
        input_ids = self.tokenizer(
            prompt, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids[0]
        item = {"pixel_values": pixels, "input_ids": input_ids, "sample_index": sample}
        if hair is not None:
            item["mask"] = torch.from_numpy(np.asarray(hair) > 127).float()[None]
        elif self.full_mask_probability is not None:
            item["mask"] = inpainting_mask(mask_rng, self.resolution, self.full_mask_probability)
        return item
