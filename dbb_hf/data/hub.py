"""Any image-classification dataset with a spurious attribute: a Hub id or a local folder.

``path`` is a Hub dataset id (read with ``datasets.load_dataset(path, config_name,
revision=revision)``), a local folder that ``load_dataset`` reads (imagefolder with a
``metadata.csv``, parquet, csv, ...), or a folder written by ``save_to_disk`` (read with
``load_from_disk``; a single saved ``Dataset`` counts as the ``train`` split). The user
names the label, spurious, image and (optionally) example-id columns; the result follows
the features contract of ``common.py``:

- ``label`` / ``spurious``: the source's ClassLabel names when the column is a ClassLabel,
  else the sorted unique values of all splits, as strings (so indices agree across splits);
- ``example_id``: the named column as a string, else ``"<source split>-<row index>"``
  (the source split name, so ids survive a change of ``split_names`` or a carve);
- splits: source names are renamed by ``split_names`` (``val`` -> ``validation`` by
  default); a missing ``test`` or ``validation`` split is carved from ``train`` when
  ``test_fraction`` / ``validation_fraction`` is set (stratified by group, seeded); splits
  other than train/validation/test are not returned;
- other source columns are dropped, except those named by ``keep_columns`` (kept as they
  are) and ``mask_column`` (ground-truth object masks, an Image column or file paths,
  kept as the Image column ``mask`` that ``--masking_backend column`` reads).

Bad rows are refused with the split, column and example ids: an empty (None / NaN)
label or spurious value, and duplicates: with ``example_id_column``, one id listed twice;
without it, one image file listed twice. Exact repeats (same split, label, spurious
attribute and image) are dropped with a warning that counts and names them; rows of one
id or file that disagree (another split, label or image) are refused
(``common.deduplicate``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset, load_from_disk
from datasets import config as datasets_config

from ..checks import check_class_names, check_label_values
from ..hub_access import reaching
from .common import (
    CONTRACT_COLUMNS, MASK_COLUMN, SHOWN, SPLITS, DatasetFormatError, base_features, check_kept_columns, deduplicate,
    group_id, require_column_names,
)


def parse_split_names(spec: str) -> dict[str, str]:
    """``"val=validation,dev=validation"`` -> ``{"val": "validation", "dev": "validation"}``."""
    mapping = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        source, sep, target = (s.strip() for s in part.partition("="))
        if not sep or not source or not target:
            raise ValueError(f"split_names {spec!r}: expected 'source=target,...', got {part!r}")
        mapping[source] = target
    return mapping


@dataclass
class HubConfig:
    path: str = field(metadata={"help": "Hub dataset id, local data folder, or a save_to_disk folder."})
    label_column: str = field(metadata={"help": "Column holding the class label."})
    spurious_column: str = field(metadata={"help": "Column holding the spurious attribute."})
    revision: Optional[str] = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the dataset; default main."}
    )
    config_name: Optional[str] = field(
        default=None, metadata={"help": "Dataset configuration (subset) name, if the dataset has several."}
    )
    image_column: str = field(
        default="image", metadata={"help": "Column holding the images (Image feature, or absolute file paths)."}
    )
    example_id_column: Optional[str] = field(
        default=None, metadata={"help": "Column with a stable id per row; default '<split>-<row index>'."}
    )
    split_names: str = field(
        default="val=validation,valid=validation,dev=validation",
        metadata={"help": "Renaming of source splits as 'source=target,...' (targets train/validation/test)."},
    )
    validation_fraction: float = field(
        default=0.0, metadata={"help": "Fraction of train carved out as validation if the source has none (0: don't)."}
    )
    test_fraction: float = field(
        default=0.0, metadata={"help": "Fraction of train carved out as test if the source has none (0: don't)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the validation/test carve."})
    keep_columns: list[str] = field(
        default_factory=list,
        metadata={"help": "Source columns kept as they are beside the contract's (e.g. [photographer])."},
    )
    mask_column: Optional[str] = field(
        default=None,
        metadata={"help": "Column of ground-truth object masks (Image or file paths), kept as the Image column "
                  "`mask` for --masking_backend column."},
    )

    def __post_init__(self):
        if self.label_column == self.spurious_column:
            raise ValueError(f"label_column and spurious_column are both {self.label_column!r}")
        if isinstance(self.keep_columns, str):
            self.keep_columns = [self.keep_columns]
        if MASK_COLUMN in self.keep_columns:
            raise ValueError(f"keep_columns names {MASK_COLUMN!r}: pass masks as mask_column={MASK_COLUMN} "
                             "(they become an Image column the column masking backend reads)")
        bad_targets = sorted(set(parse_split_names(self.split_names).values()) - set(SPLITS))
        if bad_targets:
            raise ValueError(f"split_names may only map to {list(SPLITS)}, got {bad_targets}")
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("validation_fraction + test_fraction must leave some of train for training")


def read_source(config: HubConfig) -> DatasetDict:
    """The source dataset as a DatasetDict (the one place that calls datasets' loaders)."""
    saved = any(
        os.path.isfile(os.path.join(config.path, marker))
        for marker in (datasets_config.DATASETDICT_JSON_FILENAME, datasets_config.DATASET_STATE_JSON_FILENAME)
    )
    if saved:
        loaded = load_from_disk(config.path)
    else:
        with reaching(config.path, config.revision, "dataset"):
            loaded = load_dataset(config.path, config.config_name, revision=config.revision)
    return DatasetDict({"train": loaded}) if isinstance(loaded, Dataset) else loaded


def _example_ids(dataset: Dataset, rows, example_id_column: Optional[str], split: str) -> list[str]:
    """The example ids (as the contract will name them) of the first of ``rows``."""
    rows = [int(r) for r in rows[:SHOWN]]
    if example_id_column:
        return [str(v) for v in dataset.select(rows)[example_id_column]]
    return [f"{split}-{r}" for r in rows]


def _classes(
    splits: dict[str, Dataset], column: str, source: str, example_id_column: Optional[str] = None
) -> tuple[list[str], Optional[dict]]:
    """Class names of ``column`` and the value -> index lookup (None for a ClassLabel)."""
    first, feature = next((name, ds.features[column]) for name, ds in splits.items())
    if isinstance(feature, ClassLabel):
        for name, dataset in splits.items():
            other = dataset.features[column]
            check_class_names(feature.names, getattr(other, "names", [str(other)]),
                              expected_what=f"{source} split {first!r} column {column!r}",
                              actual_what=f"split {name!r}")
            check_label_values(dataset, column, what=source, split=name)
        return list(feature.names), None
    values = set()
    for name, dataset in splits.items():
        column_values = dataset.select_columns([column]).to_pandas()[column]
        empty = np.flatnonzero(column_values.isna().to_numpy())
        if len(empty):
            ids = _example_ids(dataset, empty, example_id_column, name)
            raise DatasetFormatError(
                f"{source} split {name!r}: column {column!r} is empty (None or NaN) in {len(empty)} row(s), "
                f"example ids {ids}; give every row a value or remove those rows"
            )
        values.update(column_values.unique().tolist())
    ordered = sorted(values)
    return [str(v) for v in ordered], {v: i for i, v in enumerate(ordered)}


def _to_contract(batch, indices, *, config: HubConfig, lookups: dict, num_spurious: int, split: str) -> dict:
    columns = {}
    for target, source in (("label", config.label_column), ("spurious", config.spurious_column)):
        lookup = lookups[target]
        columns[target] = [v if lookup is None else lookup[v] for v in batch[source]]
    if config.example_id_column:
        example_ids = [str(v) for v in batch[config.example_id_column]]
    else:
        example_ids = [f"{split}-{i}" for i in indices]
    return {
        "image": batch[config.image_column],
        "label": columns["label"],
        "spurious": columns["spurious"],
        "group": [group_id(y, s, num_spurious) for y, s in zip(columns["label"], columns["spurious"])],
        "example_id": example_ids,
        **({MASK_COLUMN: batch[config.mask_column]} if config.mask_column else {}),
        **{name: batch[name] for name in config.keep_columns},
    }


def _holdout(dataset: Dataset, fraction: float, seed) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into (rest, held out), holding out ``fraction`` of every group."""
    groups = np.asarray(dataset["group"])
    rng = np.random.default_rng(seed)
    held = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        held[members[rng.permutation(len(members))[: round(fraction * len(members))]]] = True
    return dataset.select(np.flatnonzero(~held)), dataset.select(np.flatnonzero(held))


def _select_splits(source: DatasetDict, config: HubConfig) -> dict[str, tuple[str, Dataset]]:
    """``{contract split: (source split name, dataset)}`` after renaming by ``split_names``."""
    renames = parse_split_names(config.split_names)
    selected = {}
    for name, dataset in source.items():
        target = renames.get(name, name)
        if target in selected:
            raise DatasetFormatError(
                f"{config.path}: splits {selected[target][0]!r} and {name!r} both map to {target!r}"
            )
        if target in SPLITS:
            selected[target] = (name, dataset)
    if "train" not in selected:
        raise DatasetFormatError(f"{config.path} has no train split; it has {list(source)} (split_names={renames})")
    return selected


def _check_columns(dataset: Dataset, config: HubConfig, split: str) -> None:
    where = f"{config.path} split {split!r}"
    wanted = [config.image_column, config.label_column, config.spurious_column]
    wanted += [c for c in (config.example_id_column, config.mask_column) if c]
    require_column_names(dataset.column_names, wanted, where)
    check_kept_columns(config.keep_columns, dataset.column_names, where, reserved=(*CONTRACT_COLUMNS, MASK_COLUMN))
    for column in filter(None, (config.image_column, config.mask_column)):
        feature = dataset.features[column]
        if not (isinstance(feature, Image) or getattr(feature, "dtype", None) in ("string", "large_string")):
            raise DatasetFormatError(f"{where}: column {column!r} should hold images or file paths, it is {feature}")


def load_hub(config: HubConfig) -> DatasetDict:
    """Load a Hub or local dataset and cast it to the features contract."""
    source = read_source(config)
    selected = _select_splits(source, config)
    for source_name, dataset in selected.values():
        _check_columns(dataset, config, source_name)
    parts = {source_name: dataset for source_name, dataset in selected.values()}
    label_names, label_lookup = _classes(parts, config.label_column, config.path, config.example_id_column)
    spurious_names, spurious_lookup = _classes(parts, config.spurious_column, config.path, config.example_id_column)
    result = {}
    for target, (source_name, dataset) in selected.items():
        # decode=False: images pass through as stored (path or bytes), never decoded here.
        for column in filter(None, (config.image_column, config.mask_column)):
            dataset = dataset.cast_column(column, Image(decode=False))
        features = base_features(
            label_names, spurious_names,
            **({MASK_COLUMN: Image()} if config.mask_column else {}),
            **{name: dataset.features[name] for name in config.keep_columns},
        )
        result[target] = dataset.map(
            _to_contract,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            features=features,
            fn_kwargs={
                "config": config,
                "lookups": {"label": label_lookup, "spurious": spurious_lookup},
                "num_spurious": len(spurious_names),
                "split": source_name,
            },
            desc=f"contract ({source_name})",
        )

    result = _without_duplicates(result, config)

    # Fractions are of the source train split, whichever carve happens first.
    train_size = len(result["train"])
    for carve, fraction, offset in (("test", config.test_fraction, 0), ("validation", config.validation_fraction, 1)):
        if carve in result:
            continue
        if fraction <= 0:
            raise DatasetFormatError(
                f"{config.path} has no {carve} split (it has {list(source)}): "
                f"set {carve}_fraction to carve one from train, or map a split to it with split_names"
            )
        relative = fraction * train_size / len(result["train"])
        result["train"], result[carve] = _holdout(result["train"], relative, [config.seed, offset])
    return DatasetDict({split: result[split] for split in SPLITS})


def _image_keys(dataset: Dataset) -> tuple[list, np.ndarray]:
    """Per row: the image's file path, and whether it is a file (no bytes embedded) rather than bytes."""
    images = dataset.with_format("arrow")["image"]  # the struct {bytes, path}: no image is decoded or copied
    paths = pc.struct_field(images, "path").to_pylist()
    on_disk = pc.is_null(pc.struct_field(images, "bytes")).to_numpy(zero_copy_only=False)
    return paths, np.asarray(on_disk, dtype=bool) & np.asarray([p is not None for p in paths], dtype=bool)


def _without_duplicates(result: dict[str, Dataset], config: HubConfig) -> dict[str, Dataset]:
    """``result`` with exact repeats dropped (warned) and conflicting duplicates refused, by
    example id when the source has one, else by image file (see the module docstring)."""
    keys, where = [], []
    for split, dataset in result.items():
        if config.example_id_column:
            split_keys = list(dataset["example_id"])
        else:
            paths, on_disk = _image_keys(dataset)
            split_keys = [p if f else None for p, f in zip(paths, on_disk)]
        keys += split_keys
        where += [(split, i) for i in range(len(dataset))]
    keyed = pd.Series(keys, dtype=object)
    repeated = np.flatnonzero(keyed.notna().to_numpy() & keyed.duplicated(keep=False).to_numpy())
    if not len(repeated):
        return result
    rows = []
    for position in repeated:
        split, index = where[position]
        row = result[split].select([index])
        image = row.with_format("arrow")["image"]
        path, data = pc.struct_field(image, "path")[0].as_py(), pc.struct_field(image, "bytes")[0].as_py()
        rows.append({
            "key": keys[position], "split": split, "label": row["label"][0], "spurious": row["spurious"][0],
            "image": path if data is None else hashlib.sha256(data).hexdigest(),
        })
    frame = pd.DataFrame(rows, index=repeated)
    what = "example id" if config.example_id_column else "image file"
    kept = deduplicate(frame.rename(columns={"key": what}), what, config.path,
                       rows=[f"split {where[p][0]!r} row {where[p][1]}" for p in repeated])
    dropped = sorted(set(repeated) - set(kept.index))
    for split in result:
        drop = {where[p][1] for p in dropped if where[p][0] == split}
        if drop:
            result[split] = result[split].select([i for i in range(len(result[split])) if i not in drop])
    return result
