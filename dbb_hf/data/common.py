"""What every dataset loader shares: the features contract, the group formula, clear errors.

Every loader returns a `DatasetDict` with `train` / `validation` / `test` splits and the
features

- `image` (Image), `label` (ClassLabel with the class names), `spurious` (ClassLabel),
- `group` (int32): ``group = label * num_spurious + spurious``, so for CelebA
  (label Blond_Hair, spurious Male) group 0 = not_blond/female, 1 = not_blond/male,
  2 = blond/female, 3 = blond/male,
- `example_id` (string): stable across runs (the file name relative to the data folder).

Loaders may add columns (the toy benchmark adds its ground-truth `mask`; `keep_columns`
keeps a source's own columns); later stages only ever add columns.

Duplicate rows (one image listed twice) follow one policy, :func:`deduplicate`: exact
repeats are dropped with a warning that counts and names them; rows of one image that
disagree (another split, label or any other value) are refused with an error naming them,
since keeping either would be a guess and keeping both leaks the image across splits.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
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


CONTRACT_COLUMNS = ("image", "label", "spurious", "group", "example_id")
# The column the `column` masking backend reads by default (the toy's ground truth).
MASK_COLUMN = "mask"
SHOWN = 5  # offending rows named in a message


def check_kept_columns(
    keep: Sequence[str], available: Iterable[str], source: str, reserved=CONTRACT_COLUMNS
) -> list[str]:
    """``keep`` as a list, after checking each name exists in ``available`` and is not a contract column."""
    keep = [keep] if isinstance(keep, str) else list(keep)
    clashes = sorted(set(keep) & set(reserved))
    if clashes:
        raise DatasetFormatError(
            f"{source}: keep_columns {clashes} would replace the loader's own column(s) of that name; "
            f"columns {list(reserved)} are written by the loader"
        )
    repeated = sorted(name for name, n in Counter(keep).items() if n > 1)
    if repeated:
        raise DatasetFormatError(f"{source}: keep_columns names {repeated} more than once")
    require_column_names(available, keep, source)
    return keep


def plain(value):
    """A numpy scalar as the Python value it holds (so messages read 0, not np.int64(0))."""
    return value.item() if isinstance(value, np.generic) else value


def _described(frame: pd.DataFrame, positions, rows: Optional[Sequence[str]], columns) -> str:
    parts = []
    for position in positions:
        where = rows[position] if rows is not None else f"row {position}"
        values = ", ".join(f"{c}={plain(frame[c].iloc[position])!r}" for c in columns)
        parts.append(f"{where}: {values}" if values else where)
    return "; ".join(parts)


DUPLICATE_ADVICE = "one image has one split, label and attributes: remove the wrong row(s)"


def refuse_conflicting_duplicates(
    frame: pd.DataFrame, key: str, columns: Sequence[str], source: str, rows: Optional[Sequence[str]] = None,
    advice: str = DUPLICATE_ADVICE,
) -> None:
    """Raise a DatasetFormatError naming every ``key`` value whose rows disagree in ``columns``.

    ``rows`` names each row of ``frame`` in messages (e.g. ``"line 7"``), by position.
    """
    repeated = frame.duplicated(key, keep=False).to_numpy()
    if not repeated.any():
        return
    positions = pd.Series(np.flatnonzero(repeated), index=frame[key].to_numpy()[repeated])
    conflicts = []
    for value, where in positions.groupby(level=0, sort=False):
        group = frame.iloc[where.to_numpy()]
        differing = [c for c in columns if group[c].nunique(dropna=False) > 1]
        if differing:
            conflicts.append(f"{plain(value)!r} ({_described(frame, where.to_numpy(), rows, differing)})")
    if conflicts:
        raise DatasetFormatError(
            f"{source}: {len(conflicts)} {key}(s) listed more than once with different values, e.g. "
            + " | ".join(conflicts[:SHOWN]) + f"; {advice}"
        )


def deduplicate(frame: pd.DataFrame, key: str, source: str, rows: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """``frame`` with one row per ``key`` value: exact repeats dropped with a warning that counts
    and names them; rows of one key that differ in any column refused (DatasetFormatError)."""
    refuse_conflicting_duplicates(frame, key, [c for c in frame.columns if c != key], source, rows)
    repeats = frame.duplicated(key, keep="first").to_numpy()
    if not repeats.any():
        return frame
    positions = np.flatnonzero(repeats)
    named = [
        f"{plain(frame[key].iloc[p])!r} ({rows[p] if rows is not None else f'row {p}'})" for p in positions[:SHOWN]
    ]
    warnings.warn(
        f"{source}: dropped {len(positions)} row(s) that repeat an earlier row of the same {key} exactly, "
        f"e.g. {', '.join(named)}",
        stacklevel=3,
    )
    return frame[~repeats]


def require_column_names(columns: Iterable[str], required: Iterable[str], source: str) -> None:
    """Raise a DatasetFormatError naming ``source`` unless ``columns`` (of a file, table or batch being
    read) hold every one of ``required``; ``dbb_hf.checks.require_columns`` checks a built Dataset."""
    missing = [c for c in required if c not in set(columns)]
    if missing:
        raise DatasetFormatError(
            f"{source} is missing column(s) {missing}; it has {sorted(set(columns))}"
        )


def column_features(frame: pd.DataFrame, columns: Sequence[str]) -> dict:
    """The `datasets` feature of each of ``columns`` of ``frame``, inferred once from all rows
    (a split inferred alone could get another type, or none when it is empty)."""
    if not columns:
        return {}
    schema = pa.Schema.from_pandas(frame[list(columns)], preserve_index=False)
    return dict(Features.from_arrow_schema(schema))


def from_records(records: Mapping[str, list], features: Features) -> Dataset:
    """Build a split from column lists (images as file paths), computing `group`."""
    num_spurious = features["spurious"].num_classes
    columns = dict(records)
    columns["group"] = [
        group_id(y, s, num_spurious) for y, s in zip(columns["label"], columns["spurious"])
    ]
    return Dataset.from_dict({name: columns[name] for name in features}, features=features)


def balance_classes(labels: np.ndarray, seed) -> np.ndarray:
    """Which rows to keep so that every class present has as many rows as the smallest one.

    Each class is subsampled uniformly at random without replacement (``seed``), whatever
    the groups inside it; the kept rows stay in their original order. This is DaC's class
    balancing (``celebADataset(balance=True)`` in github.com/fhn98/DaC, ``data/celeba.py``).
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    for label in classes:
        members = np.flatnonzero(labels == label)
        keep[rng.choice(members, size=counts.min(), replace=False)] = True
    return keep


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
