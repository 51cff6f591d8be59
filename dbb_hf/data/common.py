"""What every dataset loader shares: the features contract, the group formula, clear errors.

Every loader returns a `DatasetDict` with `train` / `validation` / `test` splits and the
features

- `image` (Image), `label` (ClassLabel with the class names), `spurious` (ClassLabel),
- `group` (int32): ``group = label * num_spurious + spurious``, so for CelebA
  (label Blond_Hair, spurious Male) group 0 = not_blond/female, 1 = not_blond/male,
  2 = blond/female, 3 = blond/male,
- `example_id` (string): stable across runs (the file name relative to the data folder).

Loaders may add columns (the toy benchmark adds its ground-truth `mask`); later stages
only ever add columns.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Mapping, Sequence

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from ..errors import DatasetFormatError  # noqa: F401  (the loaders' error, importable from here too)

SPLITS = ("train", "validation", "test")


def group_id(label: int, spurious: int, num_spurious: int) -> int:
    """The group index of (label, spurious): ``label * num_spurious + spurious``."""
    return int(label) * int(num_spurious) + int(spurious)


def base_features(label_names: Sequence[str], spurious_names: Sequence[str], **extra) -> Features:
    """The features every loader returns, plus loader-specific extras."""
    features = {
        "image": Image(),
        "label": ClassLabel(names=list(label_names)),
        "spurious": ClassLabel(names=list(spurious_names)),
        "group": Value("int32"),
        "example_id": Value("string"),
    }
    features.update(extra)
    return Features(features)


def group_names(features: Features) -> list[str]:
    """Names of all groups in index order, "<label name>/<spurious name>"."""
    return [
        f"{label}/{spurious}"
        for label in features["label"].names
        for spurious in features["spurious"].names
    ]


def require_file(path: str | os.PathLike, what: str) -> str:
    """Return ``path`` if it exists, else raise an error that names the missing file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetFormatError(f"{what} not found: expected {path!r}")
    return path


def require_columns(columns: Iterable[str], required: Iterable[str], source: str) -> None:
    missing = [c for c in required if c not in set(columns)]
    if missing:
        raise DatasetFormatError(
            f"{source} is missing column(s) {missing}; it has {sorted(set(columns))}"
        )


def from_records(records: Mapping[str, list], features: Features) -> Dataset:
    """Build a split from column lists (images as file paths), computing `group`."""
    num_spurious = features["spurious"].num_classes
    columns = dict(records)
    columns["group"] = [
        group_id(y, s, num_spurious) for y, s in zip(columns["label"], columns["spurious"])
    ]
    return Dataset.from_dict({name: columns[name] for name in features}, features=features)


def group_counts(dataset: DatasetDict | Dataset) -> dict:
    """Images per group, ``{split: {"<label>/<spurious>": count}}`` (every group listed)."""
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({"data": dataset})
    report = {}
    for split, ds in dataset.items():
        names = group_names(ds.features)
        counts = Counter(ds["group"])
        report[split] = {name: int(counts.get(g, 0)) for g, name in enumerate(names)}
    return report


def check_splits(dataset: DatasetDict, source: str) -> DatasetDict:
    missing = [s for s in SPLITS if s not in dataset]
    if missing:
        raise DatasetFormatError(f"{source} has no {missing} split(s); it has {list(dataset)}")
    return dataset
