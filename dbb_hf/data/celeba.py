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

``class_balance`` (off by default; on in ``recipes/celeba.yaml``) is the class-balanced
training set the paper used for CelebA ("the class-balanced dataset, similar to [DaC]",
appendix 7; its Table 7 counts 12,426 + 11,841 = 24,267 non-blond and 22,880 + 1,387 =
24,267 blond training images): after the split, train keeps a random subset of every
class of the size of the smallest class (seeded with ``seed``; groups are not looked at),
as DaC's loader does (``celebADataset(balance=True)``, github.com/fhn98/DaC
``data/celeba.py``). Validation and test are untouched.

``keep_columns`` keeps other attributes as columns (ClassLabel, names as for the label,
e.g. ``Wavy_Hair`` -> ``not_wavy_hair`` / ``wavy_hair``).

Malformed files are refused with the file, the line and what is wrong (a missing names
line, a header with a name too many or too few, rows with a value too many). A file name
listed twice is one image: exact repeats are dropped with a warning, rows that disagree
(other values, another partition or identity) are refused (``common.deduplicate``).

Images are referenced by path (decoded lazily by the ``Image`` feature): loading the full
202,599 rows only reads the text files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict

from .common import (
    SPLITS, DatasetFormatError, balance_classes, base_features, check_kept_columns, deduplicate, plain,
    require_column_names, require_file,
)

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
    class_balance: bool = field(
        default=False,
        metadata={"help": "Subsample train to the size of its smallest class, at random (seed): the paper's "
                  "class-balanced CelebA (as DaC). Validation and test are untouched."},
    )
    keep_columns: list[str] = field(
        default_factory=list, metadata={"help": "Other attributes kept as columns (e.g. [Wavy_Hair, Eyeglasses])."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the identity re-split and of class_balance."})

    def __post_init__(self):
        if self.target_attribute == self.spurious_attribute:
            raise ValueError(f"target_attribute and spurious_attribute are both {self.target_attribute!r}")
        fractions = self.identity_fractions
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"identity split fractions must be >= 0 and sum to 1, got {fractions}")

    @property
    def identity_fractions(self) -> tuple[float, float, float]:
        return (self.identity_train_fraction, self.identity_validation_fraction, self.identity_test_fraction)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _field_counts(path: str, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Line numbers and field counts of the non-blank lines from line ``first`` (1-based) on:
    the rows pandas reads, in its order (it skips blank lines too)."""
    numbers, widths = [], []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if number >= first and line.strip():
                numbers.append(number)
                widths.append(len(line.split()))
    return np.asarray(numbers, dtype=np.int64), np.asarray(widths, dtype=np.int64)


def _check_field_counts(path: str, numbers: np.ndarray, widths: np.ndarray, expected: int, what: str) -> None:
    """Raise naming the lines whose number of fields is not ``expected``."""
    bad = np.flatnonzero(widths != expected)
    if len(bad):
        shown = ", ".join(f"line {numbers[i]} has {widths[i]}" for i in bad[:5])
        raise DatasetFormatError(f"{path}: {len(bad)} line(s) do not have {expected} fields ({what}): {shown}")


def _integers(values: pd.Series, numbers: np.ndarray, path: str, what: str, allowed=None) -> np.ndarray:
    """``values`` as int64, after naming the lines whose value is not an integer (or not in ``allowed``)."""
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() | (numeric != numeric.round())
    if allowed is not None:
        bad |= ~numeric.isin(list(allowed))
    if bad.any():
        shown = ", ".join(f"line {numbers[i]}: {plain(values.iloc[i])!r}" for i in np.flatnonzero(bad.to_numpy())[:5])
        expected = f"one of {sorted(allowed)}" if allowed is not None else "an integer"
        raise DatasetFormatError(f"{path}: {what} should be {expected}, found {shown}")
    return numeric.to_numpy().astype(np.int64)


def _read_name_table(path: str, value_name: str) -> pd.Series:
    """A two-column "NNNNNN.jpg VALUE" file as a Series indexed by file name (one row per file)."""
    numbers, widths = _field_counts(path, 1)
    _check_field_counts(path, numbers, widths, 2, f"a file name and its {value_name}")
    table = pd.read_csv(path, sep=r"\s+", header=None, names=["file", value_name], dtype=str)
    table[value_name] = _integers(table[value_name], numbers, path, f"the {value_name}")
    table = deduplicate(table, "file", path, rows=[f"line {n}" for n in numbers])
    return table.set_index("file")[value_name]


def read_attributes(path: str) -> tuple[pd.DataFrame, np.ndarray]:
    """``list_attr_celeba.txt`` as a DataFrame indexed by file name (one row per file), one
    column per attribute, values as written (checked to be -1/1 where used: :func:`_binary`),
    and the line number of each row."""
    with open(path) as handle:
        first, names_line = handle.readline().strip(), handle.readline()
    if not first.isdigit():
        raise DatasetFormatError(f"{path}: line 1 should be the image count, got {first[:40]!r}")
    names = names_line.split()
    if not names:
        raise DatasetFormatError(f"{path}: line 2 should hold the attribute names (Blond_Hair, Male, ...); it is empty")
    if names[0].lower().endswith(IMAGE_SUFFIXES) or set(names[1:]) <= {"-1", "1"}:
        raise DatasetFormatError(
            f"{path}: line 2 should hold the attribute names but is an image's row ({names_line.strip()[:50]!r}...): "
            "the names line is missing"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetFormatError(f"{path}: line 2 names attribute(s) {repeated} more than once")
    numbers, widths = _field_counts(path, 3)
    values_per_row = set(np.unique(widths - 1).tolist())
    if len(values_per_row) == 1 and values_per_row != {len(names)}:
        # Every row agrees and the names line does not: the names line is what is wrong.
        (values,) = values_per_row
        problem = (f"{values - len(names)} name(s) missing from line 2" if values > len(names)
                   else f"line 2 has {len(names) - values} name(s) too many")
        raise DatasetFormatError(
            f"{path}: line 2 names {len(names)} attributes but every row has {values} values: {problem}"
        )
    _check_field_counts(path, numbers, widths, len(names) + 1,
                        f"a file name and one value for each of the {len(names)} attributes of line 2")
    table = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["file", *names], dtype={"file": str})
    # The count may be of the lines or of the images (a repeated line appended later).
    if int(first) not in (len(table), table["file"].nunique()):
        raise DatasetFormatError(f"{path} announces {first} images but has {len(table)} rows (truncated file?)")
    table = deduplicate(table, "file", path, rows=[f"line {n}" for n in numbers])
    return table.set_index("file"), numbers[table.index.to_numpy()]


def _binary(table: pd.DataFrame, lines: np.ndarray, attribute: str, path: str) -> np.ndarray:
    """Attribute column as 0/1 (-1 absent, 1 present), naming the lines that hold anything else."""
    values = _integers(table[attribute], lines, path, f"column {attribute!r}", allowed={-1, 1})
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
    attributes, lines = read_attributes(attributes_path)
    require_column_names(attributes.columns, [config.target_attribute, config.spurious_attribute], attributes_path)
    files = attributes.index
    kept = check_kept_columns(config.keep_columns, attributes.columns, attributes_path)

    features = base_features(
        attribute_class_names(config.target_attribute), attribute_class_names(config.spurious_attribute),
        **{name: ClassLabel(names=attribute_class_names(name)) for name in kept},
    )
    labels = _binary(attributes, lines, config.target_attribute, attributes_path)
    spurious = _binary(attributes, lines, config.spurious_attribute, attributes_path)
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
            **{name: _binary(attributes, lines, name, attributes_path) for name in kept},
        }
    )
    if config.class_balance:
        train = np.flatnonzero(split_index == 0)
        split_index = split_index.copy()
        split_index[train[~balance_classes(labels[train], config.seed)]] = -1  # left out of every split
    return DatasetDict(
        {
            split: Dataset.from_pandas(frame[split_index == index], features=features, preserve_index=False)
            for index, split in enumerate(SPLITS)
        }
    )
