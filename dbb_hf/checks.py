"""Checks of the datasets a stage is given, run before the stage does any work.

A run takes hours; a label outside the class list, an absent column or two class lists
that disagree would otherwise surface deep inside a loss or a model call, or not at all.
Every check raises :class:`~dbb_hf.errors.DatasetFormatError` (a ``ValueError``)
naming the stage, the split, the column and the offending values.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
from datasets import ClassLabel, Dataset

from .errors import DatasetFormatError

# At most this many offending values / example ids are quoted in an error.
QUOTED = 5


def _where(what: str, split: Optional[str]) -> str:
    return f"{what} (split {split!r})" if split else what


def require_columns(dataset: Dataset, columns: Iterable[str], what: str, *, split: Optional[str] = None,
                    hint: str = "") -> None:
    """Raise unless ``dataset`` has every column in ``columns``; the error lists the columns it has."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DatasetFormatError(
            f"{_where(what, split)} needs column(s) {missing}; the dataset has {dataset.column_names}{hint}"
        )


def _column_values(dataset: Dataset, column: str) -> np.ndarray:
    # Arrow -> numpy without a Python loop; nulls come back as NaN in a float array.
    values = dataset.select_columns([column]).with_format("numpy")[column]
    return np.asarray(values)


def _example_ids(dataset: Dataset, rows: np.ndarray) -> list:
    if "example_id" not in dataset.column_names:
        return [f"row {int(i)}" for i in rows[:QUOTED]]
    return [dataset[int(i)]["example_id"] for i in rows[:QUOTED]]


def check_label_values(dataset: Dataset, column: str = "label", *, what: str, split: Optional[str] = None,
                       names: Optional[Sequence[str]] = None) -> None:
    """Raise unless every value of ``column`` is a class index in ``[0, len(names))``.

    ``names`` defaults to the column's ClassLabel names. ``datasets`` stores -1 for "no
    label" (an unlabelled test split, say) and does not check casts, so out-of-range
    values can reach a stage unnoticed; empty cells are refused too.
    """
    if column not in dataset.column_names:
        return
    if names is None:
        feature = dataset.features[column]
        if not isinstance(feature, ClassLabel):
            raise DatasetFormatError(f"{_where(what, split)}: column {column!r} should be a ClassLabel, it is {feature}")
        names = feature.names
    if len(dataset) == 0:
        return
    values = _column_values(dataset, column)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values < 0) | (values >= len(names)) | (values != np.round(values))
    else:
        bad = (values < 0) | (values >= len(names))
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    shown = sorted({("empty" if isinstance(v, float) and np.isnan(v) else int(v)) for v in values[rows].tolist()},
                   key=str)[:QUOTED]
    hint = " (-1 means 'no label' in datasets: is this split unlabelled?)" if -1 in shown else ""
    raise DatasetFormatError(
        f"{_where(what, split)}: column {column!r} has {len(rows)} value(s) outside the {len(names)} classes "
        f"{list(names)} (valid: 0..{len(names) - 1}): {shown}, e.g. {_example_ids(dataset, rows)}{hint}"
    )


def check_classes_present(dataset: Dataset, *, what: str, split: Optional[str] = None, column: str = "label",
                          classes: Optional[Sequence[int]] = None) -> None:
    """Raise unless each class (all of them, or ``classes``) has at least one row."""
    names = dataset.features[column].names
    counts = np.bincount(_column_values(dataset, column).astype(np.int64), minlength=len(names)) if len(dataset) \
        else np.zeros(len(names), dtype=np.int64)
    wanted = range(len(names)) if classes is None else classes
    empty = [names[c] for c in wanted if counts[c] == 0]
    if empty:
        raise DatasetFormatError(
            f"{_where(what, split)}: class(es) {empty} have no rows (rows per class: "
            f"{dict(zip(names, counts.tolist()))}); the method needs images of every class"
        )


def check_class_names(expected: Sequence[str], actual: Sequence[str], *, expected_what: str, actual_what: str) -> None:
    """Raise unless two class lists are equal, naming both (order matters: it is the label index)."""
    if list(expected) != list(actual):
        raise DatasetFormatError(
            f"class names differ: {expected_what} has {list(expected)}, {actual_what} has {list(actual)}; "
            "they must be the same classes in the same order"
        )


def check_labelled(dataset: Dataset, *, what: str, split: Optional[str] = None,
                   labels: Sequence[str] = ("label",), required: Sequence[str] = ()) -> None:
    """``require_columns`` (``required`` and ``labels``), then ``check_label_values`` of each of ``labels``."""
    require_columns(dataset, [*required, *labels], what, split=split)
    for column in labels:
        check_label_values(dataset, column, what=what, split=split)


def check_classifier_classes(model, names: Sequence[str], *, what: str) -> None:
    """Raise unless the classifier has one output per class and (when saved by dbb_hf) the same class names."""
    model = getattr(model, "module", model)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != len(names):
        raise DatasetFormatError(
            f"{what}: the classifier has {num_classes} outputs but the dataset's label has {len(names)} classes "
            f"{list(names)}"
        )
    model_names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if model_names is not None and list(model_names) != list(names):
        raise DatasetFormatError(
            f"{what}: the classifier was trained on classes {list(model_names)}, the dataset has {list(names)}; "
            "they must be the same classes in the same order"
        )
