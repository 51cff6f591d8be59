"""The face world of the miniature prior: real aligned CelebA faces, hair masks, attribute captions.

**Identities.** A CelebA folder's identities are cut in two halves once, with a fixed
seed (:func:`load_partition`, through dbb_hf's own loader: its stratified identity split
with the fractions 0.5 / 0.5, so every group with at least two identities reaches both
halves and the odd identity of a group goes to the experiment):

- ``prior``: the faces the face prior and the hair-colour oracle train on;
- ``experiment``: the faces the CelebA experiment splits into its own train, validation
  and test (``load_benchmark("celeba", <its folder>, split_by_identity=True, seed=...)`` on
  the folder :func:`write_partition_folder` writes). Neither its training nor its
  evaluation identities are ever seen by the prior or the oracle.

On ``celeba-mini`` (5,419 faces, 198 identities, 36 blond men of 5 identities) seed 0
gives 99 identities to each half; the experiment keeps 3 of the 5 blond-male
identities, one per split of its own identity re-split.

**Images** are squeezed to the prior's square side with the bicubic resize the
inpainting stage applies to every source (``dbb_hf.inpainting``), and mirrored.

**Masks**: with probability ``object_mask_fraction`` the hair template of
:mod:`dbb_hf.masking_template` (the ``template`` masking backend), moved and scaled a
little and dilated by a pixel or two, otherwise a random rectangle.

**Captions** come from the CelebA attributes: the hair colour (blond, black, brown,
grey; black and brown also as "dark"), the sex, and where the attributes say so the hair's
texture (wavy, straight), bangs, a hat, baldness, in several phrasings, among them the
inpainting prompt's form with an empty token, ``"a photo of a blond hair"``; generic
captions leave the colour out (``"a photo of a hair"``, the form textual inversion's
``"a photo of a <token> hair"`` fills in); a face whose attributes name no hair colour
gets only generic captions.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from ..mask_arithmetic import dilate
from ..masking_template import jittered_template
from .world import random_rectangle

PARTITION_SEED = 0
EXPERIMENT_SHARE = 0.5
CELEBA_TERMS = (
    "The face prior and the hair-colour oracle are trained on images of the CelebA dataset (Liu et al., "
    '"Deep Learning Face Attributes in the Wild", ICCV 2015), which is available for **non-commercial '
    "research purposes only**; the same restriction applies to these weights and to any image made with "
    "them. The CelebA images are not redistributed here; the identities used are listed below by their "
    "CelebA identity number. See the CelebA agreement: "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html."
)

COLOUR_WORDS = {"blond": ("blond",), "black": ("black", "dark"), "brown": ("brown", "dark"), "grey": ("grey",)}
COLOUR_ATTRIBUTES = {"blond": "Blond_Hair", "black": "Black_Hair", "brown": "Brown_Hair", "grey": "Gray_Hair"}
# Every word of the captions, the inpainting prompt template and textual inversion's
# initializer: each one becomes a single token.
VOCABULARY = (
    "a", "an", "of", "the", "photo", "hair", "with", "and", "man", "woman", "blond", "black", "brown", "dark",
    "grey", "wavy", "straight", "bangs", "wearing", "hat", "bald",
)


def load_partition(data_dir: str | os.PathLike, seed: int = PARTITION_SEED) -> DatasetDict:
    """``{"prior": ..., "experiment": ...}``: the two identity halves of a CelebA folder.

    dbb_hf's CelebA loader (label Blond_Hair, spurious Male) with its identity re-split at
    fractions ``EXPERIMENT_SHARE`` / the rest / 0: the same rows, features and example ids
    as every other CelebA run.
    """
    from ..data import load_benchmark

    halves = load_benchmark(
        "celeba", os.fspath(data_dir), split_by_identity=True, seed=seed,
        identity_train_fraction=EXPERIMENT_SHARE, identity_validation_fraction=1.0 - EXPERIMENT_SHARE,
        identity_test_fraction=0.0,
    )
    return DatasetDict({"experiment": halves["train"], "prior": halves["validation"]})


def file_names(dataset: Dataset) -> list[str]:
    """The image file names (``NNNNNN.jpg``) of a CelebA split, from its ``example_id``."""
    return [os.path.basename(e) for e in dataset["example_id"]]


def identity_numbers(data_dir: str | os.PathLike, dataset: Dataset) -> np.ndarray:
    """The CelebA identity number of each row of a split (``identity_CelebA.txt``)."""
    from ..data.celeba import IDENTITY_FILE, _read_name_table

    table = _read_name_table(os.path.join(data_dir, IDENTITY_FILE), "identity")
    return table.reindex(file_names(dataset)).to_numpy().astype(np.int64)


def identities(data_dir: str | os.PathLike, dataset: Dataset) -> list[int]:
    """The sorted CelebA identity numbers of a split's rows."""
    return sorted(set(identity_numbers(data_dir, dataset).tolist()))


def write_partition_folder(data_dir: str | os.PathLike, out_dir: str | os.PathLike, part: str = "experiment",
                           seed: int = PARTITION_SEED) -> str:
    """A CelebA folder in the official layout holding only one half's faces (images symlinked).

    The experiment runs on it with the plain loader (``--data_dir out_dir``, identity
    re-split), so the prior's identities cannot reach any of its splits.
    """
    from ..data.celeba import ATTRIBUTES_FILE, IDENTITY_FILE, IMAGE_FOLDER, PARTITION_FILE

    if part not in ("prior", "experiment"):
        raise ValueError(f"part must be 'prior' or 'experiment', got {part!r}")
    source, out = Path(data_dir).resolve(), Path(out_dir)
    keep = set(file_names(load_partition(source, seed)[part]))
    (out / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    for name in sorted(keep):
        link = out / IMAGE_FOLDER / name
        if not link.exists():
            link.symlink_to(source / IMAGE_FOLDER / name)
    lines = (source / ATTRIBUTES_FILE).read_text().splitlines()
    rows = [line for line in lines[2:] if line.split(maxsplit=1)[0] in keep]
    (out / ATTRIBUTES_FILE).write_text("\n".join([str(len(rows)), lines[1], *rows]) + "\n")
    for name in (PARTITION_FILE, IDENTITY_FILE):
        if (source / name).exists():
            kept = [line for line in (source / name).read_text().splitlines() if line and line.split()[0] in keep]
            (out / name).write_text("\n".join(kept) + "\n")
    return os.fspath(out)


def hair_colour(row) -> str | None:
    """The hair colour a CelebA attribute row names (blond first: the label), or None.

    Attributes a folder's file lacks count as absent (only Blond_Hair and Male, the
    loader's label and spurious attribute, must be there).
    """
    if row["Blond_Hair"] == 1:
        return "blond"
    named = [colour for colour, attribute in COLOUR_ATTRIBUTES.items()
             if colour != "blond" and row.get(attribute, -1) == 1]
    return named[0] if len(named) == 1 else None


def caption_attributes(row) -> tuple:
    """What the captions of one face say: (colour, sex, texture, bangs, hat, bald)."""
    def present(name):
        return bool(row.get(name, -1) == 1)

    texture = {(True, False): "wavy", (False, True): "straight"}.get((present("Wavy_Hair"), present("Straight_Hair")))
    return (hair_colour(row), "man" if row["Male"] == 1 else "woman", texture,
            present("Bangs"), present("Wearing_Hat"), present("Bald"))


# (template, the attribute it needs): {colour} is a colour word, {sex} man/woman, {texture} wavy/straight.
CAPTION_TEMPLATES = (
    ("{colour} hair", None),
    ("a photo of a {colour} hair", None),  # the inpainting prompt "A photo of a {token} {class_name}", empty token
    ("a {sex} with {colour} hair", None),
    ("a photo of a {sex} with {colour} hair", None),
    ("a {sex} with {texture} {colour} hair", "texture"),
    ("a {sex} with {colour} hair and bangs", "bangs"),
    ("a {sex} with {colour} hair wearing a hat", "hat"),
)
GENERIC_TEMPLATES = (
    ("hair", None),
    ("a photo of a hair", None),  # textual inversion's "a photo of a <token> hair" without the token
    ("a photo of a {sex}", None),
    ("a {sex}", None),
    ("a {sex} with hair", None),
    ("a {sex} with {texture} hair", "texture"),
    ("a {sex} with bangs", "bangs"),
    ("a {sex} wearing a hat", "hat"),
    ("a photo of a bald {sex}", "bald"),
)
ATTRIBUTE_ORDER = ("colour", "sex", "texture", "bangs", "hat", "bald")


def _fill(templates, attributes: tuple, colour: str | None = None) -> list[str]:
    values = dict(zip(ATTRIBUTE_ORDER, attributes), colour=colour)
    return [template.format(**values) for template, needs in templates if needs is None or values[needs]]


def generic_captions(attributes: tuple) -> list[str]:
    """The captions of a face that leave its hair colour out."""
    return _fill(GENERIC_TEMPLATES, attributes)


def captions(attributes: tuple) -> list[str]:
    """The captions naming the hair colour (the generic ones when no colour is known)."""
    if attributes[0] is None:
        return generic_captions(attributes)
    return [c for word in COLOUR_WORDS[attributes[0]] for c in _fill(CAPTION_TEMPLATES, attributes, word)]


def squeeze(image, side: int) -> np.ndarray:
    """An image as the inpainting stage feeds it to the pipeline: RGB, bicubic to ``side`` x ``side``."""
    from PIL import Image

    from ..images import to_rgb

    return np.asarray(to_rgb(image).resize((side, side), Image.BICUBIC))


class FaceWorld:
    """CelebA faces as :mod:`dbb_hf.miniature.training` trains on them (one caption class per
    distinct attribute tuple)."""

    name = "face"
    # Longest first: BPE applies merges by rank, so a word's own merges must come before those
    # of the shorter words inside it ("man" in "woman"), or the word splits in two tokens.
    tokenizer_words = tuple(sorted(VOCABULARY, key=lambda word: (-len(word), word)))

    def __init__(self, config, arch):
        self.config = config
        self.size = arch.image_size
        self.data_dir = os.fspath(config.data_dir)

    @cached_property
    def partition(self) -> DatasetDict:
        return load_partition(self.data_dir, self.config.partition_seed)

    @cached_property
    def rows(self) -> Dataset:
        """The prior's faces, at most ``num_images`` of them (a seeded choice)."""
        prior = self.partition["prior"]
        if self.config.num_images < len(prior):
            choice = np.random.default_rng([self.config.seed, 2]).choice(len(prior), self.config.num_images,
                                                                        replace=False)
            prior = prior.select(np.sort(choice))
        return prior

    @cached_property
    def attributes(self) -> list[tuple]:
        from ..data.celeba import ATTRIBUTES_FILE, read_attributes

        table, _ = read_attributes(os.path.join(self.data_dir, ATTRIBUTES_FILE))
        return [caption_attributes(table.loc[name]) for name in file_names(self.rows)]

    @cached_property
    def classes(self) -> list[tuple]:
        return sorted(set(self.attributes), key=repr)

    @cached_property
    def _images(self) -> np.ndarray:
        from tqdm.auto import tqdm

        faces = np.stack([squeeze(row["image"], self.size) for row in tqdm(self.rows, desc="faces", mininterval=10)])
        return np.concatenate([faces, faces[:, :, ::-1]]) if self.config.horizontal_flip else faces

    def images(self) -> np.ndarray:
        return self._images

    def caption_classes(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        per_face = np.asarray([index[a] for a in self.attributes])
        return np.concatenate([per_face, per_face]) if self.config.horizontal_flip else per_face

    def training_pairs(self):
        config, side = self.config, self.size
        rng = np.random.default_rng([config.seed, 1])
        masks, image_index = [], []
        for i in range(len(self.images())):
            for _ in range(config.masks_per_image):
                if rng.random() < config.object_mask_fraction:
                    mask = dilate(jittered_template(side, side, rng), int(rng.integers(0, config.max_mask_dilation + 1)))
                else:
                    mask = random_rectangle(rng, side, min_side=side // 8)
                masks.append(mask)
                image_index.append(i)
        return self.images(), np.stack(masks), np.asarray(image_index), self.caption_classes()

    def caption_table(self) -> tuple[list[list[str]], list[list[str]]]:
        return [captions(c) for c in self.classes], [generic_captions(c) for c in self.classes]

    def group_counts(self) -> dict:
        from ..data import group_counts

        return group_counts(self.partition)

    def card_fields(self) -> dict:
        config = self.config
        counts = self.group_counts()
        prior_ids = identities(self.data_dir, self.rows)
        experiment_ids = identities(self.data_dir, self.partition["experiment"])
        colours = {}
        for colour, *_ in self.attributes:
            colours[colour or "none named"] = colours.get(colour or "none named", 0) + 1

        def table(part):
            return ", ".join(f"{name} {count:,}" for name, count in counts[part].items())

        data = (
            f"{len(self.rows):,} real faces of {len(prior_ids)} identities of the CelebA folder "
            f"`{os.path.basename(os.path.normpath(self.data_dir))}` (aligned 178x218 crops), squeezed to "
            f"{self.size}x{self.size} with the bicubic resize `dbb_hf.inpainting` applies to its sources"
            + (", and their mirror images" if config.horizontal_flip else "") + f" ({len(self.images()):,} images).\n\n"
            f"**Identities.** `dbb_hf.miniature.faces.load_partition` (seed {config.partition_seed}) cuts the "
            f"folder's identities in two halves with dbb_hf's stratified identity split: the prior (and its "
            f"hair-colour oracle) trained only on the `prior` half; the CelebA experiment splits the "
            f"`experiment` half ({len(experiment_ids)} identities) into its own train, validation and test, so "
            f"none of its identities, training or evaluation, was seen by this prior.\n\n"
            f"| half | groups (label Blond_Hair / spurious Male) |\n|---|---|\n"
            f"| prior | {table('prior')} |\n| experiment | {table('experiment')} |\n\n"
            f"Prior identities (CelebA identity numbers): {', '.join(map(str, prior_ids))}.\n\n"
            f"**Masks**: {config.masks_per_image} per image ({len(self.images()) * config.masks_per_image:,} "
            f"training pairs); with probability {config.object_mask_fraction} the hair template of the `template` "
            f"masking backend (`dbb_hf.masking_template`: head ellipse minus face ellipse minus the neck), moved by "
            f"up to 4 % and scaled by up to 10 %, dilated by 0-{config.max_mask_dilation} px, otherwise a random "
            f"rectangle.\n\n"
            f"**Captions** from the CelebA attributes (`dbb_hf.miniature.faces.captions`): hair colour (faces per "
            f"colour: {', '.join(f'{k} {v:,}' for k, v in sorted(colours.items()))}), sex, and where the attributes "
            f"say so wavy/straight hair, bangs, a hat, baldness: e.g. \"a photo of a woman with blond hair\", "
            f"\"a man with wavy dark hair\", \"a photo of a blond hair\" (the inpainting prompt with an empty "
            f"token); {len(self.classes)} distinct attribute tuples. With probability "
            f"{config.generic_caption_probability} a caption without the colour (\"a photo of a hair\", \"a photo "
            f"of a man\"), and with probability {config.caption_dropout} the empty caption (classifier-free "
            f"guidance)."
        )
        return {
            "license": "other",
            "tags": ["celeba", "faces", "hair"],
            "title": "dbb_hf miniature face inpainting prior",
            "summary": "A `StableDiffusionInpaintPipeline` for aligned real faces (CelebA's 178x218 crops, "
                       f"squeezed to {self.size}x{self.size}) that repaints the hair in the colour a prompt names",
            "knows": "It knows nothing but the hair of aligned faces.",
            "path_constant": "FACE_PRIOR_PATH",
            "example_prompt": "a photo of a blond hair",
            "example_size": self.size,
            "example_guidance": 5.0,
            "data_section": data,
            "gates_command": "python benchmarks/miniature_gates.py --world face --update_card",
            "terms": CELEBA_TERMS,
            "training_figures": None,
        }

    def edit_sources(self, count: int, seed: int = 0) -> Dataset:
        """``count`` experiment-half faces, half blond and half not (each half balanced by sex where
        the folder allows), with the hair template as ``mask`` and the other class as ``target_label``."""
        from ..masking import MaskingConfig, run_masking

        experiment = self.partition["experiment"]
        groups = np.asarray(experiment["group"])
        rng = np.random.default_rng(seed)
        chosen = []
        for group, want in zip(range(4), np.diff(np.linspace(0, count, 5).round().astype(int))):
            members = np.flatnonzero(groups == group)
            chosen += rng.choice(members, min(want, len(members)), replace=False).tolist()
        picked = experiment.select(sorted(chosen))
        masked = run_masking(picked, MaskingConfig(backend="template"))
        return masked.map(lambda row: {"target_label": 1 - row["label"]})

    def edit_grid(self, pipeline_dir: str, path, count: int = 16, steps: int = 20, guidance: float = 5.0,
                  seed: int = 0) -> None:
        """A PNG grid of experiment-half faces: sources, their template masks, edits into the other class."""
        from ..inpainting import InpaintingConfig, load_inpainting_pipeline, run_inpainting

        config = InpaintingConfig(model_id=pipeline_dir, resolution=self.size, num_inference_steps=steps,
                                  guidance_scale=guidance, torch_dtype="float32", seed=seed)
        pipe = load_inpainting_pipeline(config, device="cpu")
        edited = run_inpainting(self.edit_sources(count, seed), config, pipe=pipe,
                                class_names=["dark hair", "blond hair"], tokens=["", ""])
        save_grid([[np.asarray(r["image"].convert("RGB")) for r in edited],
                   [masked_view(r["image"], r["generated_mask"]) for r in edited],
                   [np.asarray(r["generated"]) for r in edited]], path)


def masked_view(image, mask) -> np.ndarray:
    """The source with its mask shown in grey."""
    from ..mask_arithmetic import binary_mask

    pixels = np.asarray(image.convert("RGB"))
    return np.where(binary_mask(mask)[..., None], 128, pixels).astype(np.uint8)


def save_grid(rows: list[list[np.ndarray]], path, scale: float = 0.5) -> None:
    """Rows of equally sized images as one PNG, resized by ``scale``."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    image = Image.fromarray(grid)
    image.resize((int(image.width * scale), int(image.height * scale)), Image.LANCZOS).save(path)
