"""The augmented dataset as retraining consumes it: loading, checking, one shared schema.

An augmented dataset holds the real splits (``train``, and ``validation`` / ``test`` when
present) and a ``synthetic`` split of kept edits whose ``label`` is the new class and
whose ``source_label`` is the class of the image they were made from. Each edit keeps its
provenance columns (``prompt``, ``seed``, ``generator``, ``psi``, ``rho``, ...), among them
the two thresholds it passed: ``psi_threshold`` (Psi of its source class) and ``P`` (P of
its new class), which :func:`thresholds` reads back. :func:`build_augmented` makes it from
the pruning stage's output (the pipeline, and ``dbb-hf augment``); the run writes it with
``save_to_disk``, its ``augmented/`` holding only the synthetic split when the run keeps the
data as its ``data/`` stage (:data:`REAL_SPLITS`: the real splits are not written twice); it
is published complete, as parquet shards (see :mod:`dbb_hf.hub`).

A Hub dataset configuration has one schema for all its splits, while the run's splits
differ (only edits have ``prompt``, ``psi``, ...). :func:`unify_features` gives every
split the union of the columns, null where a split lacks one; :func:`load_augmented`
applies it to every source, so a Hub id, its local twin and the run's own folder load
into the same ``DatasetDict``, and ``concatenate_datasets([ds["train"], ds["synthetic"]])``
works as it is.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Value, load_dataset, load_from_disk
from datasets import Image as ImageFeature

from .errors import DatasetFormatError
from .hub_access import looks_like_path, reaching
from .stage_info import read_stage_info, saved_fingerprint

# 2: the synthetic split records the P each edit passed (a stage saved before is rebuilt).
FORMAT_VERSION = 2
REQUIRED_SPLITS = ("train", "synthetic")
OPTIONAL_SPLITS = ("validation", "test")
# What the upweighted retraining reads: the image and its class everywhere, and for edits
# the class they were made from (it picks the loss term an edit belongs to).
REQUIRED_COLUMNS = {"synthetic": ("image", "label", "source_label")}
DEFAULT_COLUMNS = ("image", "label")
# What build_augmented writes on each edit besides the loader's columns.
PROVENANCE_COLUMNS = ("source_label", "source_example_id", "P")


def unify_features(dataset: DatasetDict) -> DatasetDict:
    """Give every split the union of all splits' columns, in one order, null where absent.

    Raises ValueError when two splits give the same column different types: casting one
    to the other would silently change the data.
    """
    union: dict = {}
    owner: dict[str, str] = {}
    for split, ds in dataset.items():
        for name, feature in ds.features.items():
            if name not in union:
                union[name], owner[name] = feature, split
            elif union[name] != feature:
                raise ValueError(
                    f"column {name!r} has type {union[name]} in split {owner[name]!r} but {feature} in "
                    f"split {split!r}; the splits of one dataset must agree on shared columns"
                )
    features = Features(union)
    unified = {}
    for split, ds in dataset.items():
        if len(ds) == 0:
            # An empty split loaded from disk has no table blocks to add columns to.
            unified[split] = Dataset.from_dict({name: [] for name in features}, features=features, split=ds.split)
            continue
        for name, feature in features.items():
            if name not in ds.column_names:
                ds = ds.add_column(name, [None] * len(ds), feature=feature)
        unified[split] = ds.select_columns(list(features))
    return DatasetDict(unified)


def check_augmented(dataset: DatasetDict, source: str) -> DatasetDict:
    """Raise a DatasetFormatError naming what ``dataset`` lacks for retraining; else return it."""
    if not isinstance(dataset, DatasetDict):
        raise DatasetFormatError(f"{source} is a single split, not a dataset with splits {REQUIRED_SPLITS}")
    missing = [split for split in REQUIRED_SPLITS if split not in dataset]
    if missing:
        raise DatasetFormatError(
            f"{source} has no {missing} split(s); an augmented dataset needs {list(REQUIRED_SPLITS)} "
            f"(it has {list(dataset)})"
        )
    class_names = None
    for split, ds in dataset.items():
        required = REQUIRED_COLUMNS.get(split, DEFAULT_COLUMNS)
        absent = [column for column in required if column not in ds.column_names]
        if absent:
            raise DatasetFormatError(
                f"{source}: split {split!r} is missing column(s) {absent}; it has {ds.column_names}"
            )
        label = ds.features["label"]
        if not isinstance(label, ClassLabel):
            raise DatasetFormatError(f"{source}: column 'label' of split {split!r} is {label}, not a ClassLabel")
        if class_names is None:
            class_names = label.names
        elif label.names != class_names:
            raise DatasetFormatError(
                f"{source}: split {split!r} has class names {label.names}, other splits {class_names}"
            )
    synthetic = dataset["synthetic"]
    source_label = synthetic.features["source_label"]
    if not isinstance(source_label, ClassLabel) or source_label.names != class_names:
        raise DatasetFormatError(
            f"{source}: synthetic 'source_label' is {source_label}; expected ClassLabel(names={class_names})"
        )
    unsourced = sum(value is None for value in synthetic["source_label"])
    if unsourced:
        raise DatasetFormatError(f"{source}: {unsourced} synthetic row(s) have no source_label")
    return dataset


RUN_AUGMENTED = "augmented"  # where a run folder keeps its augmented dataset
RUN_CONFIG = "config.yaml"  # what every run folder has, from its first second on
# The key of a run's augmented/stage.json saying where its real splits are: {"path": the run's
# data stage folder, relative to augmented/, "fingerprint": that stage's fingerprint}. The
# pipeline then saves only the synthetic split there: the real splits are the data stage's.
REAL_SPLITS = "real_splits"


def with_real_splits(synthetic: Dataset, real: DatasetDict) -> DatasetDict:
    """The augmented dataset of ``synthetic`` and ``real``'s train / validation / test, in the
    order :func:`build_augmented` gives them."""
    splits = {"train": real["train"], "synthetic": synthetic}
    splits.update({name: real[name] for name in OPTIONAL_SPLITS if name in real})
    return DatasetDict(splits)


def _is_saved_to_disk(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "dataset_dict.json"))


def _run_augmented(folder: str) -> Optional[str]:
    """``folder/augmented`` when ``folder`` is a run folder (the pipeline's ``output_dir``), else None.

    Raises when it is a run folder whose augmented dataset is not written yet, saying what to do.
    """
    inner = os.path.join(folder, RUN_AUGMENTED)
    if _is_saved_to_disk(inner):
        return inner
    if os.path.isfile(os.path.join(folder, RUN_CONFIG)):
        raise DatasetFormatError(
            f"{folder!r} is a dbb_hf run folder without an augmented dataset: {inner!r} is not written yet "
            "(the run stopped before its 'augmented' stage). Rerun the run's command to finish it, then pass "
            f"{folder!r} (or {inner!r}); or pass a published augmented dataset (Hub id or folder)"
        )
    return None


def load_saved(folder: str) -> DatasetDict:
    """``load_from_disk`` for a ``DatasetDict`` folder, tolerating empty splits saved without a shard.

    Adapter for huggingface/datasets#8385: ``save_to_disk`` writes no shard for a split with
    no rows (an empty ``synthetic`` split when every edit was pruned) and ``load_from_disk``
    then fails with an IndexError; such a split is rebuilt empty from its saved features.
    """
    with open(os.path.join(folder, "dataset_dict.json")) as f:
        splits = json.load(f)["splits"]
    loaded = {}
    for split in splits:
        path = os.path.join(folder, split)
        with open(os.path.join(path, "state.json")) as f:
            has_data = bool(json.load(f).get("_data_files"))
        if has_data:
            loaded[split] = load_from_disk(path)
        else:
            features = DatasetInfo.from_directory(path).features
            loaded[split] = Dataset.from_dict({name: [] for name in features}, features=features, split=split)
    loaded = DatasetDict(loaded)
    real = _real_splits(folder)
    return loaded if real is None else with_real_splits(loaded["synthetic"], load_saved(real))


def _real_splits(folder: str) -> Optional[str]:
    """The folder holding the real splits of a run's ``augmented/`` that saved only its synthetic
    split (its ``stage.json`` says where, see :data:`REAL_SPLITS`), or None (it holds them all).

    Raises when that folder is gone or holds another version of the data than the one the
    edits were made from, saying what to do.
    """
    record = (read_stage_info(folder) or {}).get(REAL_SPLITS)
    if record is None:
        return None
    real = os.path.normpath(os.path.join(folder, record["path"]))
    found = saved_fingerprint(real) if _is_saved_to_disk(real) else None
    if found != record["fingerprint"]:
        state = "is missing" if not _is_saved_to_disk(real) else f"now holds data stage {found}"
        raise DatasetFormatError(
            f"{folder!r} holds only the synthetic split and reads train, validation and test from the run's "
            f"data stage {real!r} (data stage {record['fingerprint']}), which {state}. Rerun the run's command "
            "to rebuild both, or restore that folder"
        )
    return real


def load_augmented(
    repo_id_or_folder: str | os.PathLike,
    revision: Optional[str] = None,
    *,
    cache_dir: Optional[str] = None,
) -> DatasetDict:
    """Load an augmented dataset, ready for retraining.

    Accepts a Hub dataset id (``"<user>/waterbirds-dbb"``, at ``revision``), a local folder
    in the Hub's layout (what :func:`dbb_hf.hub.save_dataset_folder` writes), the run's
    ``save_to_disk`` folder (``<output_dir>/augmented``), or the run folder itself
    (``<output_dir>``: its ``augmented/`` is read; when it holds only the synthetic split, the
    real splits are read from the run's ``data/``, see :data:`REAL_SPLITS`). Every split gets
    the shared schema of :func:`unify_features`.
    """
    source = os.fspath(repo_id_or_folder)
    if os.path.isdir(source):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub ids, but {source!r} is a local folder")
        inner = None if _is_saved_to_disk(source) else _run_augmented(source)
        if inner is not None:
            source = inner
        if _is_saved_to_disk(source):
            dataset = load_saved(source)
        else:
            dataset = load_dataset(source, cache_dir=cache_dir)
    elif os.path.exists(source):
        raise DatasetFormatError(f"{source!r} is a file; expected a dataset folder or a Hub dataset id")
    elif looks_like_path(source):
        raise FileNotFoundError(f"dataset folder {source!r} not found")
    else:
        with reaching(source, revision, "augmented dataset"):
            dataset = load_dataset(source, revision=revision, cache_dir=cache_dir)
    return check_augmented(unify_features(dataset), source)


def build_augmented(dataset: DatasetDict, pruned: Dataset, P, cache_dir: Optional[str | os.PathLike] = None) -> DatasetDict:
    """Real ``train``, kept edits as ``synthetic`` (label = new class, with provenance), ``validation``, ``test``.

    ``pruned`` is the pruning stage's output (``keep``, ``target_label``, ``generated`` and the
    provenance columns) and ``P`` the thresholds it was pruned with (one, or one per class),
    recorded per edit in the ``P`` column. The synthetic rows are written to a cache file beside
    ``pruned``'s files, or in ``cache_dir`` when given (the pipeline's stage folder, replaced by
    the saved stage: no second copy of the edits is left behind).
    """
    from .pruning import thresholds_per_class

    kept = pruned.filter(lambda keep: bool(keep), input_columns="keep")
    features = dataset["train"].features
    num_spurious = features["spurious"].num_classes if "spurious" in features else 1
    P = thresholds_per_class(P, features["label"].num_classes)

    def to_synthetic(batch):
        return {
            "image": batch["generated"],
            "label": batch["target_label"],
            "source_label": batch["label"],
            "source_example_id": batch["example_id"],
            "example_id": [f"{e}->t{t}" for e, t in zip(batch["example_id"], batch["target_label"])],
            "group": [t * num_spurious + s for t, s in zip(batch["target_label"], batch.get("spurious", [0] * len(batch["label"])))],
            "P": [P[t] for t in batch["target_label"]],
        }

    drop = [c for c in ("image", "generated", "erm_probs") if c in kept.column_names]
    synthetic_features = kept.features.copy()
    synthetic_features["source_label"] = ClassLabel(names=features["label"].names)
    synthetic_features["source_example_id"] = Value("string")
    synthetic_features["label"] = features["label"]
    synthetic_features["P"] = Value("float32")
    for column in drop:
        synthetic_features.pop(column)
    synthetic_features["image"] = ImageFeature()
    synthetic = kept.map(
        to_synthetic, batched=True, remove_columns=drop + ["target_label"],
        features=_ordered(synthetic_features, features), desc="augmented",
        cache_file_name=None if cache_dir is None else os.path.join(os.fspath(cache_dir), "synthetic.arrow"),
        load_from_cache_file=False,  # a file left in cache_dir by a stopped run may hold other edits
    ) if len(kept) else _empty_synthetic(synthetic_features, features)
    return DatasetDict(
        {"train": dataset["train"], "synthetic": synthetic, "validation": dataset["validation"], "test": dataset["test"]}
    )


def _ordered(synthetic_features, features):
    order = [c for c in features if c in synthetic_features] + [c for c in synthetic_features if c not in features]
    return Features({c: synthetic_features[c] for c in order if c != "target_label"})


def _empty_synthetic(synthetic_features, features):
    ordered = _ordered(synthetic_features, features)
    return Dataset.from_dict({c: [] for c in ordered}, features=ordered)


def thresholds(dataset: DatasetDict) -> dict:
    """What the synthetic split records of how it was made: ``Psi`` per source class (its
    ``psi_threshold`` column), ``P`` per new class (its ``P`` column) and ``generators``.

    A threshold list holds None for a class without kept edits (nothing recorded it), and
    the whole entry is None when the column is absent (a dataset made elsewhere); a class
    whose edits disagree (sets made with other thresholds, put together) gets the sorted
    list of its values.
    """
    synthetic = dataset["synthetic"]
    num_classes = dataset["train"].features["label"].num_classes

    def per_class(column: str, by: str):
        if column not in synthetic.column_names:
            return None
        seen: dict[int, set] = {}
        for c, value in zip(synthetic[by], synthetic[column]):
            if value is not None:
                # float32 columns: 6 digits are what the stored value holds.
                seen.setdefault(c, set()).add(round(float(value), 6))
        values = [sorted(seen.get(c, ())) for c in range(num_classes)]
        return [v[0] if len(v) == 1 else (v or None) for v in values]

    generators = sorted(set(synthetic["generator"]) - {None}) if "generator" in synthetic.column_names else None
    return {"Psi": per_class("psi_threshold", "source_label"), "P": per_class("P", "label"), "generators": generators}
