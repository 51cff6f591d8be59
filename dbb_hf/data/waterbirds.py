"""Waterbirds from the official release folder (``waterbird_complete95_forest2water2``).

Expected folder::

    <data_dir>/
        metadata.csv      # columns img_filename, y, split, place (others are ignored)
        <img_filename>    # e.g. 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg

``y`` is 0 landbird / 1 waterbird, ``place`` 0 land / 1 water, ``split`` 0 train /
1 validation / 2 test, so groups 0..3 are landbird/land, landbird/water, waterbird/land,
waterbird/water. ``example_id`` is ``img_filename``.

``segmentation_dir`` adds the CUB-200-2011 bird segmentations as a ``mask`` column (an
Image, 0-255), the ground-truth masks DA-Fusion and DaC use: the release's
``segmentations/`` folder, where ``<img_filename>`` with ``.png`` for ``.jpg`` is the
mask of that image (Waterbirds pastes each CUB bird, at its size and place, onto a
Places background, so the CUB mask fits the Waterbirds image). ``--masking_backend
column`` then reads it instead of detecting the bird. ``keep_columns`` keeps other
``metadata.csv`` columns (``place_filename``, ``img_id``) as they are.

An ``img_filename`` listed twice is one image: exact repeats are dropped with a warning,
rows that disagree (another split, label or place) are refused with an error naming them
(``common.deduplicate``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd
from datasets import DatasetDict, Image

from .common import (
    CONTRACT_COLUMNS, MASK_COLUMN, SPLITS, DatasetFormatError, base_features, check_kept_columns, column_features,
    deduplicate, from_records, require_column_names, require_file,
)

LABEL_NAMES = ["landbird", "waterbird"]
SPURIOUS_NAMES = ["land", "water"]
METADATA_FILE = "metadata.csv"
ALLOWED_VALUES = {"y": {0, 1}, "place": {0, 1}, "split": {0, 1, 2}}


@dataclass
class WaterbirdsConfig:
    data_dir: str = field(metadata={"help": "Folder of the official Waterbirds release (with metadata.csv)."})
    segmentation_dir: Optional[str] = field(
        default=None,
        metadata={"help": "CUB-200-2011 segmentations/ folder: its masks become the `mask` column "
                  "(for --masking_backend column)."},
    )
    keep_columns: list[str] = field(
        default_factory=list, metadata={"help": "Other metadata.csv columns to keep (e.g. [place_filename])."}
    )

    def __post_init__(self):
        if not self.data_dir:
            raise ValueError("data_dir must name the Waterbirds folder")


def _missing(paths, names, what: str, where: str) -> None:
    missing = [name for name, path in zip(names, paths) if not os.path.isfile(path)]
    if missing:
        raise DatasetFormatError(f"{len(missing)} {what} listed in {where} are missing, e.g. {missing[:5]}")


def load_waterbirds(config: WaterbirdsConfig) -> DatasetDict:
    """Load Waterbirds with its official splits as a DatasetDict."""
    root = os.path.abspath(config.data_dir)
    metadata_path = require_file(os.path.join(root, METADATA_FILE), "Waterbirds metadata")
    metadata = pd.read_csv(metadata_path)
    require_column_names(metadata.columns, ["img_filename", *ALLOWED_VALUES], metadata_path)
    kept = check_kept_columns(config.keep_columns, metadata.columns, metadata_path,
                              reserved=(*CONTRACT_COLUMNS, MASK_COLUMN))
    for column, allowed in ALLOWED_VALUES.items():
        values = metadata[column]
        bad = sorted(set(values.dropna().unique().tolist()) - allowed)
        if bad or values.isna().any():
            raise DatasetFormatError(
                f"{metadata_path}: column {column!r} should hold {sorted(allowed)} in every row, found {bad or 'empty cells'}"
            )
    lines = [f"line {i + 2}" for i in range(len(metadata))]  # line 1 is the header
    metadata = deduplicate(metadata, "img_filename", metadata_path, rows=lines)

    filenames = metadata["img_filename"].astype(str)
    paths = [os.path.join(root, name) for name in filenames]
    _missing(paths, filenames, "image(s)", f"{metadata_path} under {root}")
    extra_features = column_features(metadata, kept)  # from every row, so all splits agree
    masks = {}
    if config.segmentation_dir is not None:
        masks_root = os.path.abspath(require_file(config.segmentation_dir, "CUB segmentations folder"))
        mask_paths = [os.path.join(masks_root, os.path.splitext(name)[0] + ".png") for name in filenames]
        where = f"{metadata_path} (looked for <img_filename>.png) under {masks_root}"
        _missing(mask_paths, filenames, "image(s)' masks", where)
        masks[MASK_COLUMN], extra_features[MASK_COLUMN] = mask_paths, Image()

    metadata = metadata.assign(image=paths, example_id=filenames, **masks)
    features = base_features(LABEL_NAMES, SPURIOUS_NAMES, **extra_features)
    splits = {}
    for index, split in enumerate(SPLITS):
        rows = metadata[metadata["split"] == index]
        splits[split] = from_records(
            {
                "image": rows["image"].tolist(),
                "label": rows["y"].astype(int).tolist(),
                "spurious": rows["place"].astype(int).tolist(),
                "example_id": rows["example_id"].tolist(),
                **{name: rows[name].tolist() for name in extra_features},
            },
            features,
        )
    return DatasetDict(splits)
