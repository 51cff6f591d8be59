"""CelebA from its official release layout, with an optional identity-disjoint re-split.

Expected folder (the layout of the official download)::

    <data_dir>/
        img_align_celeba/NNNNNN.jpg
        list_attr_celeba.txt      # line 1: image count; line 2: the 40 attribute names;
                                  # then "NNNNNN.jpg" and 40 values in {-1, 1}, whitespace separated
        list_eval_partition.txt   # "NNNNNN.jpg P", P = 0 train, 1 validation, 2 test
        identity_CelebA.txt       # "NNNNNN.jpg IDENTITY" (only for split_by_identity=True)

Label and spurious attribute are configurable (default ``Blond_Hair`` / ``Male``), so
groups 0..3 are not_blond/female, not_blond/male, blond/female, blond/male.

The identity re-split exists because small CelebA subsets can miss whole groups in the
official validation/test partitions (the 5,419-image development subset has no blond male
outside train). All images of one person land in one split, so no face leaks from train
into evaluation; identities are stratified by the rarest group among their images and cut
by the three fractions with ``seed``, so a rare group reaches every split when it has at
least three identities.

Images are referenced by path (decoded lazily by the ``Image`` feature): loading the full
202,599 rows only reads the two text files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict

from .common import SPLITS, DatasetFormatError, base_features, require_columns, require_file

IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTES_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"

# Readable class names for the attributes the literature uses; any other attribute
# gets "not_<attr>" / "<attr>".
NAMED_ATTRIBUTES = {
    "Blond_Hair": ["not_blond", "blond"],
    "Male": ["female", "male"],
}


def attribute_class_names(attribute: str) -> list[str]:
    """Class names of a binary CelebA attribute: index 0 = absent (-1), 1 = present (1)."""
    if attribute in NAMED_ATTRIBUTES:
        return list(NAMED_ATTRIBUTES[attribute])
    return [f"not_{attribute.lower()}", attribute.lower()]


@dataclass
class CelebAConfig:
    data_dir: str = field(metadata={"help": "Folder with img_align_celeba/ and the official list_*.txt files."})
    target_attribute: str = field(default="Blond_Hair", metadata={"help": "Attribute used as the class label."})
    spurious_attribute: str = field(default="Male", metadata={"help": "Attribute used as the spurious attribute."})
    split_by_identity: bool = field(
        default=False,
        metadata={"help": "Ignore the official partition; split the identities of identity_CelebA.txt instead."},
    )
    identity_train_fraction: float = field(
        default=0.6, metadata={"help": "Fraction of identities in train (identity re-split)."}
    )
    identity_validation_fraction: float = field(
        default=0.2, metadata={"help": "Fraction of identities in validation (identity re-split)."}
    )
    identity_test_fraction: float = field(
        default=0.2, metadata={"help": "Fraction of identities in test (identity re-split)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the identity re-split."})

    def __post_init__(self):
        if self.target_attribute == self.spurious_attribute:
            raise ValueError(f"target_attribute and spurious_attribute are both {self.target_attribute!r}")
        fractions = self.identity_fractions
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"identity split fractions must be >= 0 and sum to 1, got {fractions}")

    @property
    def identity_fractions(self) -> tuple[float, float, float]:
        return (self.identity_train_fraction, self.identity_validation_fraction, self.identity_test_fraction)


def _read_name_table(path: str, value_name: str) -> pd.Series:
    """A two-column "NNNNNN.jpg VALUE" file as a Series indexed by file name."""
    table = pd.read_csv(path, sep=r"\s+", header=None, names=["file", value_name], dtype={"file": str})
    if table[value_name].isna().any():
        bad = table.loc[table[value_name].isna(), "file"].tolist()[:5]
        raise DatasetFormatError(f"{path} has rows without a {value_name}, e.g. {bad}")
    return table.set_index("file")[value_name]


def read_attributes(path: str) -> pd.DataFrame:
    """``list_attr_celeba.txt`` as a DataFrame of -1/1 values indexed by file name."""
    with open(path) as handle:
        first = handle.readline().strip()
    if not first.isdigit():
        raise DatasetFormatError(f"{path}: the first line should be the image count, got {first[:40]!r}")
    # Line 2 holds 40 names but the rows hold 41 fields, so pandas takes the file names as index.
    table = pd.read_csv(path, sep=r"\s+", skiprows=1)
    if len(table) != int(first):
        raise DatasetFormatError(f"{path} announces {first} images but has {len(table)} rows (truncated file?)")
    table.index = table.index.astype(str)
    return table


def _binary(table: pd.DataFrame, attribute: str, path: str) -> np.ndarray:
    values = table[attribute].to_numpy()
    bad = sorted(set(np.unique(values).tolist()) - {-1, 1})
    if bad:
        raise DatasetFormatError(f"{path}: column {attribute!r} should hold -1/1, found {bad}")
    return (values == 1).astype(np.int64)


def _allocate(n: int, fractions) -> np.ndarray:
    """Members per split for a stratum of ``n``: proportional to ``fractions`` (largest
    remainder), but at least one in every split of positive fraction when ``n`` allows."""
    fractions = np.asarray(fractions, dtype=float)
    ideal = fractions * n
    minimum = (fractions > 0).astype(int) if n >= np.count_nonzero(fractions) else np.zeros(len(fractions), int)
    counts = np.maximum(minimum, np.floor(ideal).astype(int))
    while counts.sum() > n:
        surplus = np.where(counts > minimum, counts - ideal, -np.inf)
        counts[np.argmax(surplus)] -= 1
    while counts.sum() < n:
        counts[np.argmax(ideal - counts)] += 1
    return counts


def identity_split(identities: np.ndarray, groups: np.ndarray, fractions, seed: int) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) of each row, identity-disjoint.

    Each identity is filed under the rarest group among its images, and the identities of
    each such stratum are shuffled with ``seed`` and shared out by the fractions, at least
    one per split when the stratum has enough. A plain shuffle of identities can leave a
    rare group (a handful of blond men) out of validation or test entirely; stratifying
    puts every group with at least three identities in all three splits, and keeps the
    overall identity fractions.
    """
    group_sizes = np.bincount(groups)
    rarity = np.argsort(np.argsort(group_sizes, kind="stable"), kind="stable")  # 0 = rarest group
    unique, identity_index = np.unique(identities, return_inverse=True)
    stratum = np.full(len(unique), len(group_sizes), dtype=np.int64)
    np.minimum.at(stratum, identity_index, rarity[groups])
    rng = np.random.default_rng(seed)
    split_of_identity = np.empty(len(unique), dtype=np.int64)
    for level in np.unique(stratum):
        members = np.flatnonzero(stratum == level)
        members = members[rng.permutation(len(members))]
        bounds = np.cumsum(_allocate(len(members), fractions))[:-1]
        for split, chunk in enumerate(np.split(members, bounds)):
            split_of_identity[chunk] = split
    return split_of_identity[identity_index]


def _aligned(series: pd.Series, files: pd.Index, path: str) -> np.ndarray:
    missing = files.difference(series.index)
    if len(missing):
        raise DatasetFormatError(
            f"{path} has no row for {len(missing)} image(s) of {ATTRIBUTES_FILE}, e.g. {sorted(missing)[:5]}"
        )
    return series.reindex(files).to_numpy()


def load_celeba(config: CelebAConfig) -> DatasetDict:
    """Load CelebA (official partition, or identity-disjoint re-split) as a DatasetDict."""
    root = os.path.abspath(config.data_dir)
    image_dir = require_file(os.path.join(root, IMAGE_FOLDER), "CelebA image folder")
    attributes_path = require_file(os.path.join(root, ATTRIBUTES_FILE), "CelebA attribute file")
    attributes = read_attributes(attributes_path)
    require_columns(attributes.columns, [config.target_attribute, config.spurious_attribute], attributes_path)
    files = attributes.index

    features = base_features(
        attribute_class_names(config.target_attribute), attribute_class_names(config.spurious_attribute)
    )
    labels = _binary(attributes, config.target_attribute, attributes_path)
    spurious = _binary(attributes, config.spurious_attribute, attributes_path)
    groups = (labels * features["spurious"].num_classes + spurious).astype(np.int32)  # common.group_id, vectorised
    if config.split_by_identity:
        identity_path = require_file(os.path.join(root, IDENTITY_FILE), "CelebA identity file")
        identities = _aligned(_read_name_table(identity_path, "identity"), files, identity_path)
        split_index = identity_split(identities, groups, config.identity_fractions, config.seed)
    else:
        partition_path = require_file(os.path.join(root, PARTITION_FILE), "CelebA partition file")
        split_index = _aligned(_read_name_table(partition_path, "partition"), files, partition_path)
        bad = sorted(set(np.unique(split_index).tolist()) - {0, 1, 2})
        if bad:
            raise DatasetFormatError(f"{partition_path}: partitions should be 0, 1 or 2, found {bad}")

    # One directory listing instead of 200k stat calls.
    missing = files.difference(pd.Index(os.listdir(image_dir)))
    if len(missing):
        raise DatasetFormatError(
            f"{len(missing)} image(s) listed in {ATTRIBUTES_FILE} are missing from {image_dir}, "
            f"e.g. {sorted(missing)[:5]}"
        )

    # Built from a DataFrame rather than common.from_records: element-wise feature
    # encoding costs seconds on 200k rows, the columnar path a fraction of that.
    frame = pd.DataFrame(
        {
            "image": image_dir + os.sep + files,
            "label": labels,
            "spurious": spurious,
            "group": groups,
            "example_id": f"{IMAGE_FOLDER}/" + files,
        }
    )
    return DatasetDict(
        {
            split: Dataset.from_pandas(frame[split_index == index], features=features, preserve_index=False)
            for index, split in enumerate(SPLITS)
        }
    )
