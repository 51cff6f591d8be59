"""How a pipeline stage runs over a dataset: batched `datasets.map`, explicit features,
deterministic fingerprints, and resumable sharded execution.

A stage is a pure batched function ``fn(batch, *, models, config) -> dict`` that returns
only its new columns (same length as the batch); its models are loaded once by the caller
and passed in. The fingerprint of a stage's output is derived from the input dataset's
fingerprint, the stage name, the config dataclass and the model ids/revisions, never by
hashing model objects (slow and unstable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from datasets import Dataset, DatasetDict, Features, Image, concatenate_datasets, load_from_disk
from datasets import config as datasets_config
from tqdm.auto import tqdm

from .images import UnreadableImageError, decode_image
from .stage_info import STAGE_INFO, read_stage_info, saved_fingerprint


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def stage_fingerprint(stage: str, config: Any, *parts: Any) -> str:
    """A deterministic fingerprint for ``stage`` run with ``config`` on inputs named by ``parts``."""
    payload = json.dumps(
        {"stage": stage, "config": _jsonable(config), "parts": [_jsonable(p) for p in parts]},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def source_signature(path: str | os.PathLike | None) -> str | None:
    """A digest of a local folder's files (relative names, sizes, modification times).

    None when ``path`` is not a local folder (unset, or a Hub id). Stat calls only: files
    are not read, so a large image folder is fingerprinted in about a second.
    """
    if path is None or not os.path.isdir(path):
        return None
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            info = os.stat(full)
            digest.update(f"{os.path.relpath(full, path)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary name, then rename it: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def with_new_features(dataset: Dataset, new_features: Mapping) -> Features:
    features = dataset.features.copy()
    features.update(new_features)
    return features


@dataclass(frozen=True)
class ImageGuard:
    """How a stage treats rows whose images cannot be decoded.

    ``columns``: the Image columns the stage reads; they are decoded row by row (not by
    ``datasets`` for the whole batch), so one corrupt file fails its own row only. Other
    Image columns reach the stage undecoded (``{"bytes", "path"}``).
    ``required``: those of them that must not be empty. ``fail(rows, reasons, **fn_kwargs)``
    returns the stage's new columns for the failed rows, the reason (``"failed:
    unreadable image: <error>"``) in the stage's status column; with ``fail=None`` the
    stage raises an error naming the rows instead.
    """

    columns: tuple[str, ...]
    required: tuple[str, ...] = ("image",)
    fail: Callable | None = None


class UnreadableRowsError(ValueError):
    """Rows whose images cannot be decoded, in a stage that cannot record per-row failures."""


def _take(batch: dict, rows: Sequence[int]) -> dict:
    return {name: [values[i] for i in rows] for name, values in batch.items()}


def guarded(function: Callable, guard: ImageGuard) -> Callable:
    """``function`` (a batched map function) run on the readable rows only; see :class:`ImageGuard`."""

    def run(batch: dict, **kwargs) -> dict:
        size = len(next(iter(batch.values())))
        reasons: list[str | None] = [None] * size
        batch = dict(batch)
        for column in (c for c in guard.columns if c in batch):
            values = list(batch[column])
            for i, value in enumerate(values):
                if reasons[i] is not None:
                    continue
                if value is None:
                    if column in guard.required:
                        reasons[i] = f"failed: missing {column}"
                    continue
                try:
                    values[i] = decode_image(value)
                except UnreadableImageError as error:
                    reasons[i] = f"failed: unreadable {column}: {error}"
            batch[column] = values
        failed = [i for i, r in enumerate(reasons) if r is not None]
        if not failed:
            return function(batch, **kwargs)
        if guard.fail is None:
            ids = batch.get("example_id") or [f"row {i} of the batch" for i in range(size)]
            raise UnreadableRowsError("; ".join(f"{ids[i]}: {reasons[i]}" for i in failed))
        ok = [i for i, r in enumerate(reasons) if r is None]
        parts = [(failed, guard.fail(_take(batch, failed), [reasons[i] for i in failed], **kwargs))]
        if ok:
            parts.append((ok, function(_take(batch, ok), **kwargs)))
        out = {name: [None] * size for name in parts[0][1]}
        for rows, columns in parts:
            for name, values in columns.items():
                for i, value in zip(rows, values):
                    out[name][i] = value
        return out

    return run


def map_new_columns(
    dataset: Dataset, function: Callable, *, new_features: Mapping, guard: ImageGuard | None = None,
    join: bool = True, **map_kwargs
) -> Dataset:
    """``dataset`` with the columns that ``function`` returns, computed by a batched ``map``.

    The map writes only the new columns and the input columns are joined back untouched
    (``join=False``: only the new columns are returned; :func:`join_columns` joins them).
    A batched map that reads a column writes it back from its decoded values: every image
    the function reads would be encoded again (time spent for nothing, and JPEG images
    re-compressed with loss). A new column with an input column's name replaces it in place.
    With ``guard`` the images it names are decoded row by row (:func:`guarded`).
    """
    source = dataset
    if guard is not None:
        function = guarded(function, guard)
        # datasets would decode every image of the batch, including columns the stage never
        # reads (a corrupt one would fail the whole batch): none is decoded but the guard's.
        for column, feature in dataset.features.items():
            if isinstance(feature, Image) and feature.decode:
                source = source.cast_column(column, Image(decode=False))
    new = source.map(
        function,
        batched=True,
        remove_columns=source.column_names,
        features=Features(new_features),
        **map_kwargs,
    )
    return join_columns(dataset, new) if join else new


def join_columns(dataset: Dataset, new: Dataset) -> Dataset:
    """``dataset`` (its rows in order) with the columns of ``new`` beside them, without copying
    either; a column of ``new`` with a name of ``dataset`` replaces that column in place."""
    if len(new) != len(dataset):
        raise ValueError(f"cannot join {len(new)} rows of {new.column_names} to {len(dataset)} rows")
    replaced = [c for c in new.column_names if c in dataset.column_names]
    if not replaced:
        return concatenate_datasets([dataset, new], axis=1)
    # Concatenated column by column, not reordered afterwards with select_columns: datasets
    # keeps a reordered table's memory-mapped blocks in their old order, and the next
    # axis=1 concatenation puts the columns back in that order (a replaced column would
    # move to the end of the stage after next).
    added = [c for c in new.column_names if c not in replaced]
    pieces = [(new if c in replaced else dataset).select_columns([c]) for c in dataset.column_names]
    return concatenate_datasets(pieces + ([new.select_columns(added)] if added else []), axis=1)


# What identifies a row of a stage's input: its image, and where rows are per (image,
# target class) from the selection on, the target too.
ROW_KEYS = ("example_id", "target_label")


def row_keys(dataset: Dataset) -> list[str]:
    """The :data:`ROW_KEYS` that ``dataset`` has."""
    return [key for key in ROW_KEYS if key in dataset.column_names]


def _first_other_row(dataset: Dataset, other: Dataset, keys: Sequence[str]) -> str | None:
    """None when ``other`` holds ``dataset``'s rows in order (by ``keys``), else where it does not."""
    if len(other) != len(dataset):
        return f"{len(other)} rows where the input has {len(dataset)}"
    mine, theirs = dataset.select_columns(keys).to_dict(), other.select_columns(keys).to_dict()
    for key in keys:
        for i, (a, b) in enumerate(zip(mine[key], theirs[key])):
            if a != b:
                return f"row {i} has {key} {b!r} where the input has {a!r}"
    return None


def stage_columns(dataset: Dataset, result: Dataset, written: Sequence[str], stage: str) -> Dataset:
    """What a stage folder keeps of ``result`` (``dataset`` with the stage's columns joined by
    :func:`join_columns`): the row keys and the ``written`` columns (new, or input columns the
    stage replaced); :func:`join_stage_columns` puts ``result`` back together from them.

    Raises when ``result`` is not ``dataset``'s rows in order with only ``written`` columns
    joined, since joining the saved columns back to ``dataset`` would then not give ``result``.
    """
    keys, written = row_keys(dataset), [c for c in result.column_names if c in written]
    joined = [c for c in dataset.column_names] + [c for c in written if c not in dataset.column_names]
    where = _first_other_row(dataset, result, keys)
    if result.column_names != joined or where is not None:
        raise ValueError(
            f"stage {stage!r} returned columns {result.column_names} ({where or 'rows in order'}); the stage "
            f"folder can only keep {written} if the rest is its input's columns {dataset.column_names}, rows in order"
        )
    return result.select_columns([*keys, *written])


def join_stage_columns(dataset: Dataset, saved: Dataset, stage_dir: str | os.PathLike) -> Dataset:
    """``dataset`` with the columns a stage saved (:func:`stage_columns`) joined, after checking
    that the saved row keys are ``dataset``'s, in order."""
    keys = row_keys(dataset)
    where = _first_other_row(dataset, saved, keys) if set(keys) <= set(saved.column_names) else (
        f"no {keys} columns")
    if where is not None:
        raise ValueError(
            f"{stage_dir} holds the columns of other rows than its input ({where}): the folder was made "
            f"from another input, or edited. Delete {stage_dir} to compute that stage again"
        )
    return join_columns(dataset, saved.remove_columns(keys))


# The stage.json key of a stage folder that keeps only its own columns (the pipeline's masks,
# generation, pruning and scores): {"stage": the run's stage folder holding the input rows,
# "split": that folder's split (a DatasetDict stage) or None, "renamed": {old: new} columns
# renamed in the input before the stage ran, "fingerprint": the input stage's fingerprint}.
JOINED_TO = "joined_to"


def load_run_stage(run_dir: str | os.PathLike, stage: str) -> Dataset | DatasetDict:
    """The output of ``stage`` in the run folder ``run_dir``, whole, as the pipeline had it:
    for a stage folder that keeps only its own columns (:data:`JOINED_TO`), its input's rows
    (read the same way, stage by stage back to a folder saved whole) with those columns
    joined; ``augmented`` with its real splits (:func:`dbb_hf.augmented.load_saved`).

    ``load_from_disk(run_dir / stage)`` gives only what the folder holds: for ``masks``, say,
    the row keys and the mask columns. Raises when a stage is not finished, or when the input
    it was joined to has since been replaced (a rerun stopped between two stages).
    """
    if stage == "augmented":
        from .augmented import load_saved

        return load_saved(os.path.join(run_dir, stage))
    return _load_run_stage(Path(run_dir), stage, None)


def _load_run_stage(run_dir: Path, stage: str, split: str | None):
    stage_dir = run_dir / stage
    info = read_stage_info(stage_dir)
    if info is None:
        raise FileNotFoundError(f"{stage_dir} is not a finished stage of a run folder (it has no {STAGE_INFO})")
    if not any((stage_dir / marker).is_file() for marker in (
            datasets_config.DATASETDICT_JSON_FILENAME, datasets_config.DATASET_STATE_JSON_FILENAME)):
        raise ValueError(f"{stage_dir} holds no dataset: stage {stage!r} saves a model or files, not rows")
    saved = load_from_disk(str(stage_dir))
    joined = info.get(JOINED_TO)
    if joined is None:  # saved whole
        return saved if split is None else saved[split]
    source_dir = run_dir / joined["stage"]
    found = saved_fingerprint(source_dir)
    if found is None or found != joined["fingerprint"]:
        state = "is not in the run folder" if found is None else f"now holds stage {found}"
        raise ValueError(
            f"{stage_dir} keeps only its own columns, joined to the rows of {source_dir} (stage "
            f"{joined['fingerprint']}), which {state}: rerun the run's command to bring both up to date"
        )
    source = _load_run_stage(run_dir, joined["stage"], joined["split"])
    if joined["renamed"]:
        source = source.rename_columns(joined["renamed"])
    return join_stage_columns(source, saved, stage_dir)


def apply_stage(
    dataset: Dataset,
    function: Callable,
    *,
    stage: str,
    config: Any,
    new_features: Mapping,
    fn_kwargs: dict | None = None,
    batch_size: int = 16,
    fingerprint_parts: Sequence[Any] = (),
    cache_dir: str | os.PathLike | None = None,
    desc: str | None = None,
    guard: ImageGuard | None = None,
) -> Dataset:
    """Run a stage with ``datasets.map``: batched, explicit features, explicit fingerprint.

    With ``cache_dir`` (or a dataset loaded from disk) a rerun with the same input and
    config loads the cached result instead of recomputing.
    """
    fingerprint = stage_fingerprint(stage, config, dataset._fingerprint, *fingerprint_parts)
    cache_file_name = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        cache_file_name = os.path.join(os.fspath(cache_dir), f"{stage}-{fingerprint}.arrow")
    return map_new_columns(
        dataset,
        function,
        new_features=new_features,
        batch_size=batch_size,
        fn_kwargs=fn_kwargs or {},
        new_fingerprint=fingerprint,
        cache_file_name=cache_file_name,
        load_from_cache_file=True,
        desc=desc or stage,
        guard=guard,
    )


@dataclass(frozen=True)
class ShardPlan:
    """How a resumable stage cuts its rows into shards and shares them between processes.

    Shards hold ``shard_size`` consecutive rows. Process ``process_index`` of
    ``num_processes`` takes shards ``process_index, process_index + num_processes, ...``
    and calls ``wait_for_everyone`` (Accelerate's barrier) before all shards are read
    back. The default plan is one process; :meth:`for_processes` is the plan of every
    process of an ``accelerate launch``.
    """

    shard_size: int = 256
    process_index: int = 0
    num_processes: int = 1
    wait_for_everyone: Callable[[], None] | None = None

    def __post_init__(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        if not 0 <= self.process_index < self.num_processes:
            raise ValueError(f"process_index {self.process_index} is not one of {self.num_processes} processes")

    @classmethod
    def for_processes(cls, shard_size: int, state=None) -> "ShardPlan":
        """The plan of this process in an Accelerate run (``state``: its ``PartialState``)."""
        if state is None:
            from accelerate import PartialState

            state = PartialState()
        return cls(shard_size, state.process_index, state.num_processes, state.wait_for_everyone)


def run_stage(
    dataset: Dataset,
    function: Callable,
    *,
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    shards: ShardPlan | None = None,
    **stage,
) -> Dataset:
    """A stage's run: shard by shard into ``output_dir`` when given (:func:`run_resumable`,
    split as ``shards`` plans), else one ``datasets.map`` cached in ``cache_dir``
    (:func:`apply_stage`). ``stage``: the keyword arguments both take."""
    if output_dir is not None:
        return run_resumable(dataset, function, output_dir=output_dir, shards=shards or ShardPlan(), **stage)
    if shards is not None:
        raise ValueError("shards= plans a resumable run into output_dir=, which was not given")
    return apply_stage(dataset, function, cache_dir=cache_dir, **stage)


def run_resumable(
    dataset: Dataset,
    function: Callable,
    *,
    stage: str,
    output_dir: str | os.PathLike,
    config: Any,
    new_features: Mapping,
    fn_kwargs: dict | None = None,
    batch_size: int = 16,
    fingerprint_parts: Sequence[Any] = (),
    shards: ShardPlan = ShardPlan(),
    guard: ImageGuard | None = None,
) -> Dataset:
    """Run a stage shard by shard, saving each finished shard, and return all rows in order.

    Each shard of ``shards.shard_size`` consecutive rows is written with ``save_to_disk``
    to a temporary folder and renamed into place only when complete, so a run killed at
    any point loses at most the shard in progress, and a rerun skips finished shards. A
    shard holds only the stage's new columns (the input rows, images included, are not
    copied again); they are joined to the input rows at the end. With
    several processes (Accelerate), process ``r`` takes shards ``r, r + n, ...``; the
    result does not depend on how many processes ran it when ``function`` is
    deterministic per row. Memory stays bounded by one shard.
    """
    shard_size, process_index = shards.shard_size, shards.process_index
    fingerprint = stage_fingerprint(stage, config, dataset._fingerprint, *fingerprint_parts)
    # Shard k's rows depend on the shard size: a rerun with another size must not pick up
    # shards cut differently (rows would be lost or repeated).
    shards_dir = Path(output_dir) / "shards" / f"{fingerprint}-{shard_size}"
    shards_dir.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(len(dataset) / shard_size))
    mine = range(process_index, num_shards, shards.num_processes)
    for k in tqdm(mine, desc=f"{stage} (shards of {shard_size})", disable=process_index != 0):
        final = shards_dir / f"{k:05d}"
        if (final / "dataset_info.json").exists():
            continue
        shard = dataset.select(range(k * shard_size, min(len(dataset), (k + 1) * shard_size)))
        result = map_new_columns(
            shard,
            function,
            new_features=new_features,
            batch_size=batch_size,
            fn_kwargs=fn_kwargs or {},
            new_fingerprint=f"{fingerprint}-{k:05d}",
            # One shard's new columns in memory, written once below; otherwise datasets
            # also writes them to a cache file beside the input dataset's own files.
            keep_in_memory=True,
            guard=guard,
            join=False,
        )
        tmp = shards_dir / f".tmp-{k:05d}-{process_index}"
        shutil.rmtree(tmp, ignore_errors=True)
        result.save_to_disk(tmp)
        os.replace(tmp, final)
    if shards.wait_for_everyone is not None:
        shards.wait_for_everyone()
    # select_columns: a shard left by an older dbb_hf may also hold the input's columns.
    parts = [load_from_disk(shards_dir / f"{k:05d}").select_columns(list(new_features)) for k in range(num_shards)]
    return join_columns(dataset, concatenate_datasets(parts) if len(parts) > 1 else parts[0])


def _temporary(stage_dir: Path) -> tuple[Path, Path]:
    """The folders a save uses beside ``stage_dir``: the new output, and the old one moved away."""
    return stage_dir.parent / f".{stage_dir.name}.tmp", stage_dir.parent / f".{stage_dir.name}.old"


def load_stage_output(stage_dir: str | os.PathLike, fingerprint: str):
    """The saved output of a stage if it was finished with this fingerprint, else None."""
    if saved_fingerprint(stage_dir) != fingerprint:
        return None
    return load_from_disk(stage_dir)


def finish_interrupted_save(stage_dir: str | os.PathLike) -> None:
    """Complete a :func:`save_stage_output` that a crash stopped before its renames ended.

    Its temporary folder is complete once it holds ``stage.json`` (written last), and is
    newer than ``stage_dir``, so it is moved into place instead of being computed again;
    a temporary folder without it, or an old folder left behind, is deleted. Call it
    from one process only.
    """
    stage_dir = Path(stage_dir)
    tmp, old = _temporary(stage_dir)
    if (tmp / STAGE_INFO).exists():
        replace_folder(tmp, stage_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def replace_folder(tmp: str | os.PathLike, stage_dir: str | os.PathLike) -> None:
    """Put the complete folder ``tmp`` in the place of ``stage_dir`` (two renames, each
    atomic: at every moment one of the two names holds a complete folder)."""
    tmp, stage_dir = Path(tmp), Path(stage_dir)
    old = _temporary(stage_dir)[1]
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        os.replace(stage_dir, old)
    os.replace(tmp, stage_dir)
    shutil.rmtree(old, ignore_errors=True)


def save_to_disk(dataset: Dataset | DatasetDict, path: str | os.PathLike) -> None:
    """``dataset.save_to_disk(path)``, loadable back with ``load_from_disk`` even with an empty split."""
    if isinstance(dataset, DatasetDict):
        # datasets writes no shard for an empty split and then cannot load it back
        # (huggingface/datasets#8385): ask for one shard explicitly.
        dataset.save_to_disk(path, num_shards={name: 1 for name, split in dataset.items() if len(split) == 0})
    else:
        dataset.save_to_disk(path)


def save_stage_output(stage_dir: str | os.PathLike, dataset, fingerprint: str, info: dict | None = None) -> None:
    """Save a finished stage's dataset as ``stage_dir`` itself (``load_from_disk(stage_dir)``).

    The dataset and its ``stage.json`` mark (last) are written to a temporary folder that
    then replaces ``stage_dir`` (and the stage's working files, such as finished shards),
    so a crash leaves either the old state or the new one, never a half-written output;
    :func:`finish_interrupted_save` completes a save stopped between the renames.
    """
    stage_dir = Path(stage_dir)
    tmp = _temporary(stage_dir)[0]
    shutil.rmtree(tmp, ignore_errors=True)
    save_to_disk(dataset, tmp)
    write_text_atomic(tmp / STAGE_INFO, json.dumps({"fingerprint": fingerprint, **(info or {})}, indent=2, default=str))
    replace_folder(tmp, stage_dir)
