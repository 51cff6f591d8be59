"""The toy world of the miniature prior: the toy benchmark's rendering, balanced and captioned.

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
from functools import cached_property

import numpy as np

from ..data.toy import render
from ..mask_arithmetic import dilate, region_mask

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


class ToyWorld:
    """The toy world as :mod:`dbb_hf.miniature.training` trains on it (caption class = group)."""

    name = "toy"
    tokenizer_words = None  # the toy's own (architecture.toy_tokenizer_words)

    def __init__(self, config, arch):
        self.config = config
        self.size = arch.image_size

    @cached_property
    def samples(self) -> list[Sample]:
        return render_pool(self.config.num_images, self.config.seed, self.size)

    def images(self) -> np.ndarray:
        return np.stack([s.image for s in self.samples])

    def training_pairs(self):
        """Images, edit masks, the image of each mask, and each image's caption class (its group)."""
        config = self.config
        rng = np.random.default_rng([config.seed, 1])
        masks, image_index = [], []
        for i, sample in enumerate(self.samples):
            for mask in edit_masks(sample, rng, config.masks_per_image, config.object_mask_fraction,
                                   config.max_mask_dilation):
                masks.append(mask)
                image_index.append(i)
        groups = np.asarray([2 * s.label + s.background for s in self.samples])
        return self.images(), np.stack(masks), np.asarray(image_index), groups

    def caption_table(self) -> tuple[list[list[str]], list[list[str]]]:
        """Specific and generic captions of each of the 4 groups."""
        return [captions(g // 2, g % 2) for g in range(4)], [generic_captions(g % 2) for g in range(4)]

    def card_fields(self) -> dict:
        config = self.config
        return {
            "license": "apache-2.0",
            "tags": ["toy"],
            "title": "dbb_hf miniature inpainting prior",
            "summary": "A `StableDiffusionInpaintPipeline` for dbb_hf's embedded toy world (32x32 images of a\n"
                       "horizontal or vertical bar over land or water)",
            "knows": "It knows nothing but the toy\nworld.",
            "path_constant": "PRIOR_PATH",
            "example_prompt": "a photo of a vertical bar",
            "example_size": 32,
            "example_guidance": 5.0,
            "data_section": TOY_DATA_SECTION.format(
                num_images=config.num_images, seed=config.seed, masks=config.masks_per_image,
                pairs=config.num_images * config.masks_per_image, object_fraction=config.object_mask_fraction,
                dilation=config.max_mask_dilation, generic_probability=config.generic_caption_probability,
                dropout=config.caption_dropout,
                templates="; ".join(f'"{t}"' for t in CAPTION_TEMPLATES),
                generic="; ".join(f'"{t}"' for t in GENERIC_TEMPLATES)),
            "gates_command": "python benchmarks/miniature_gates.py --update_card",
            "terms": None,
            "training_figures": None,
        }

    def edit_grid(self, pipeline_dir: str, path, count: int = 16, steps: int = 20, guidance: float = 7.5,
                  seed: int = 0) -> None:
        """A PNG grid: test images, their square-box masks, and the edits to the other class."""
        import torch
        from PIL import Image

        from ..data.toy import LABEL_NAMES, ToyConfig, load_toy
        from ..inpainting import InpaintingConfig, load_inpainting_pipeline

        test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=max(4, count), seed=seed + 99))["test"]
        cfg = InpaintingConfig(model_id=pipeline_dir, resolution=32, num_inference_steps=steps,
                               guidance_scale=guidance, torch_dtype="float32")
        pipe = load_inpainting_pipeline(cfg, device="cpu")
        rows = [[], [], []]
        for i, row in enumerate(test):
            mask = object_edit_mask(np.asarray(row["mask"]) > 127, 1)
            target = 1 - row["label"]
            prompt = f"a photo of a {LABEL_NAMES[target].replace('_', ' ')}"
            edit = pipe(prompt=prompt, image=row["image"], mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
                        height=32, width=32, num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator().manual_seed(i)).images[0]
            source = np.asarray(row["image"])
            composite = np.where(mask[..., None], np.asarray(edit), source)
            rows[0].append(source)
            rows[1].append(np.where(mask[..., None], 128, source).astype(np.uint8))
            rows[2].append(composite)
        grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)


TOY_DATA_SECTION = """{num_images:,} images rendered by `dbb_hf.data.toy.render` (the toy benchmark's own
drawing code), balanced over the four (object, background) groups, image `i` drawn from
seed `({seed}, i)`; {masks} edit masks per image
({pairs:,} training pairs): with probability
{object_fraction} the bar's bounding box grown to a square
(`dbb_hf.masking.region_mask(mask, "square_box")`, the region dbb_hf repaints) and dilated
by 0-{dilation} px, otherwise a random rectangle. Masked images and
latent masks are prepared as `StableDiffusionInpaintPipeline` prepares them.

Captions name the object and the background: {templates}; with probability
{generic_probability} a caption without the orientation ({generic}), and with probability
{dropout} the empty caption (classifier-free guidance)."""
