"""MetaShift cat/dog in the setup of DISC (Wu et al., 2023), also used by DaC and DBB.

Expected folder (``MetaDatasetCatDog`` of the DISC release, built from the MetaShift
release by its subset-generation script; one folder per class and context)::

    <data_dir>/
        train/cat/cat(sofa)/*.jpg   train/cat/cat(bed)/*.jpg
        train/dog/dog(bench)/*.jpg  train/dog/dog(bike)/*.jpg
        test/cat/cat(shelf)/*.jpg   test/dog/dog(shelf)/*.jpg
        val/...                     # optional, same layout as test/

The release may hold more context folders (other MetaShift experiments): only those
named by ``train_contexts`` / ``test_contexts`` are read. Other MetaShift subsets in this
layout load by changing these two fields (e.g. ``"cat:indoor;dog:outdoor"``).

The release has no validation folder; DISC carves 15 % of the test images at random as
validation. Here validation is carved from each test folder separately
(``validation_fraction``, ``seed``, from the sorted file names), so every test group is in
validation and the carve does not depend on the file system's listing order. A ``val/``
folder, when present, is used as is instead.

Spurious attribute = the context, the annotation the release actually has (DISC's groups
are the (class, context) folders). Its names are the sorted contexts of both fields,
``["bed", "bench", "bike", "shelf", "sofa"]`` by default, so
``group = label * 5 + context``: of the 10 groups, train holds cat/bed (0), cat/sofa (4),
dog/bench (6), dog/bike (7) and validation/test hold cat/shelf (3), dog/shelf (8); the
others are empty (``group_counts`` lists them as 0, and worst-group metrics must skip
empty groups). Coarser attributes (indoor/outdoor) would discard information a user can
always merge back.

Files are named by their Visual Genome image id, so one name in two folders is one
image. In two classes, or in train and validation/test, it would be a mislabelled or
leaked image: refused, naming the files and folders. In two contexts of one class and
split it is an image that shows both (MetaShift's subset script builds each context from
several overlapping subsets, and DISC keeps every folder's copy): kept in each folder, as
DISC does, with a warning that counts them. ``keep_columns`` does not apply: the release
has no metadata beside the folders.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from datasets import DatasetDict

from .common import (
    SHOWN, SPLITS, DatasetFormatError, base_features, from_records, refuse_conflicting_duplicates, require_file,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def parse_contexts(spec: str) -> dict[str, list[str]]:
    """``"cat:sofa,bed;dog:bench,bike"`` -> ``{"cat": ["sofa", "bed"], "dog": ["bench", "bike"]}``."""
    contexts = {}
    for part in spec.split(";"):
        name, sep, values = part.partition(":")
        names = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not names or name.strip() in contexts:
            raise ValueError(f"context spec {spec!r}: expected 'class:context,context;class:context', got {part!r}")
        contexts[name.strip()] = names
    return contexts


@dataclass
class MetaShiftConfig:
    data_dir: str = field(metadata={"help": "The MetaDatasetCatDog folder (train/ and test/ class/context folders)."})
    train_contexts: str = field(
        default="cat:sofa,bed;dog:bench,bike",
        metadata={"help": "Training folders as 'class:context,context;class:...' (class order = label index)."},
    )
    test_contexts: str = field(
        default="cat:shelf;dog:shelf", metadata={"help": "Test (and validation) folders, same syntax."}
    )
    validation_fraction: float = field(
        default=0.15, metadata={"help": "Fraction of each test folder carved out as validation (if no val/ folder)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the validation carve."})

    def __post_init__(self):
        train, test = parse_contexts(self.train_contexts), parse_contexts(self.test_contexts)
        if sorted(train) != sorted(test):
            raise ValueError(f"train_contexts classes {list(train)} and test_contexts classes {list(test)} differ")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


def _list_images(root: str, split_folder: str, label: str, context: str) -> list[str]:
    """Example ids (``<split>/<class>/<class>(<context>)/<file>``) of one folder, sorted."""
    relative = f"{split_folder}/{label}/{label}({context})"
    folder = require_file(os.path.join(root, relative), f"MetaShift {split_folder} folder of {label} in {context}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DatasetFormatError(f"MetaShift folder {folder!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return [f"{relative}/{name}" for name in names]


def load_metashift(config: MetaShiftConfig) -> DatasetDict:
    """Load MetaShift cat/dog (DISC setup) as a DatasetDict."""
    root = os.path.abspath(config.data_dir)
    train_contexts, test_contexts = parse_contexts(config.train_contexts), parse_contexts(config.test_contexts)
    label_names = list(train_contexts)
    spurious_names = sorted({c for contexts in (train_contexts, test_contexts) for cs in contexts.values() for c in cs})
    features = base_features(label_names, spurious_names)
    has_val_folder = os.path.isdir(os.path.join(root, "val"))
    records = {split: {"image": [], "label": [], "spurious": [], "example_id": []} for split in SPLITS}

    def add(split, ids, label, context):
        records[split]["example_id"] += ids
        records[split]["image"] += [os.path.join(root, i) for i in ids]
        records[split]["label"] += [label_names.index(label)] * len(ids)
        records[split]["spurious"] += [spurious_names.index(context)] * len(ids)

    for label, contexts in train_contexts.items():
        for context in contexts:
            add("train", _list_images(root, "train", label, context), label, context)
    test_folders = [(label, context) for label in label_names for context in test_contexts[label]]
    for index, (label, context) in enumerate(test_folders):
        ids = _list_images(root, "test", label, context)
        if has_val_folder:
            add("test", ids, label, context)
            add("validation", _list_images(root, "val", label, context), label, context)
            continue
        # One generator per folder: a folder's carve does not depend on the others' sizes.
        order = np.random.default_rng([config.seed, index]).permutation(len(ids))
        held_out = np.zeros(len(ids), dtype=bool)
        held_out[order[: round(config.validation_fraction * len(ids))]] = True
        add("validation", [i for i, v in zip(ids, held_out) if v], label, context)
        add("test", [i for i, v in zip(ids, held_out) if not v], label, context)
    _check_repeated_files(records, label_names, root)
    return DatasetDict({split: from_records(columns, features) for split, columns in records.items()})


def _check_repeated_files(records: dict, label_names: list[str], root: str) -> None:
    """Refuse one file name in two classes or splits; warn about one in two contexts of a class."""
    frame = pd.DataFrame(
        [(os.path.basename(example_id), split, label_names[label], example_id)
         for split, columns in records.items() for example_id, label in zip(columns["example_id"], columns["label"])],
        columns=["file", "split", "class", "folder"],
    )
    refuse_conflicting_duplicates(
        frame, "file", ["split", "class"], f"MetaShift folder {root}", rows=list(frame["folder"]),
        advice="files are named by their Visual Genome image id, so these are one image in two classes or splits: "
        "remove it from the wrong folder",
    )
    repeated = frame[frame.duplicated("file", keep=False)]
    if len(repeated):
        names = sorted(set(repeated["file"]))
        warnings.warn(
            f"MetaShift folder {root}: {len(names)} image(s) are in two or more context folders of their class "
            f"(an image that shows both contexts); each copy is kept with its folder's context, as DISC does, "
            f"e.g. {names[:SHOWN]}",
            stacklevel=3,
        )
