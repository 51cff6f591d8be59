"""Waterbirds from the official release folder (``waterbird_complete95_forest2water2``).

Expected folder::

    <data_dir>/
        metadata.csv      # columns img_filename, y, split, place (others are ignored)
        <img_filename>    # e.g. 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg

``y`` is 0 landbird / 1 waterbird, ``place`` 0 land / 1 water, ``split`` 0 train /
1 validation / 2 test, so groups 0..3 are landbird/land, landbird/water, waterbird/land,
waterbird/water. ``example_id`` is ``img_filename``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd
from datasets import DatasetDict

from .common import SPLITS, DatasetFormatError, base_features, from_records, require_columns, require_file

LABEL_NAMES = ["landbird", "waterbird"]
SPURIOUS_NAMES = ["land", "water"]
METADATA_FILE = "metadata.csv"
ALLOWED_VALUES = {"y": {0, 1}, "place": {0, 1}, "split": {0, 1, 2}}


@dataclass
class WaterbirdsConfig:
    data_dir: str = field(metadata={"help": "Folder of the official Waterbirds release (with metadata.csv)."})

    def __post_init__(self):
        if not self.data_dir:
            raise ValueError("data_dir must name the Waterbirds folder")


def load_waterbirds(config: WaterbirdsConfig) -> DatasetDict:
    """Load Waterbirds with its official splits as a DatasetDict."""
    root = os.path.abspath(config.data_dir)
    metadata_path = require_file(os.path.join(root, METADATA_FILE), "Waterbirds metadata")
    metadata = pd.read_csv(metadata_path)
    require_columns(metadata.columns, ["img_filename", *ALLOWED_VALUES], metadata_path)
    for column, allowed in ALLOWED_VALUES.items():
        values = metadata[column]
        bad = sorted(set(values.dropna().unique().tolist()) - allowed)
        if bad or values.isna().any():
            raise DatasetFormatError(
                f"{metadata_path}: column {column!r} should hold {sorted(allowed)} in every row, found {bad or 'empty cells'}"
            )

    filenames = metadata["img_filename"].astype(str)
    paths = [os.path.join(root, name) for name in filenames]
    missing = [name for name, path in zip(filenames, paths) if not os.path.isfile(path)]
    if missing:
        raise DatasetFormatError(
            f"{len(missing)} image(s) listed in {metadata_path} are missing under {root}, e.g. {missing[:5]}"
        )

    metadata = metadata.assign(image=paths, example_id=filenames)
    features = base_features(LABEL_NAMES, SPURIOUS_NAMES)
    splits = {}
    for index, split in enumerate(SPLITS):
        rows = metadata[metadata["split"] == index]
        splits[split] = from_records(
            {
                "image": rows["image"].tolist(),
                "label": rows["y"].astype(int).tolist(),
                "spurious": rows["place"].astype(int).tolist(),
                "example_id": rows["example_id"].tolist(),
            },
            features,
        )
    return DatasetDict(splits)
