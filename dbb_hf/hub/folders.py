"""Folder twins: exactly the files each artifact's Hub repository holds, written locally.

``save_<artifact>_folder(run_dir, out_dir, repo_id)`` writes a folder that loads offline
the way the Hub copy loads (``load_dataset(folder)``,
``pipe.load_textual_inversion(folder, weight_name=..., token=...)``,
``timm.create_model("local-dir:<folder>", pretrained=True)``); a push uploads such a
folder as it is.

The dataset is not written with ``DatasetDict.push_to_hub``: one Hub configuration has one
schema, while the run's splits differ (only edits have ``prompt``, ``psi``, ...), and
``push_to_hub`` writes its own README. The twin follows ``push_to_hub``'s layout instead:
``data/<split>-XXXXX-of-YYYYY.parquet`` with the image bytes embedded, the same shard count
and row-group size, and README YAML with ``configs`` and ``dataset_info``, over the shared
schema of :func:`dbb_hf.augmented.unify_features`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Mapping, Optional, Union

from datasets.info import DatasetInfo
from datasets.splits import SplitDict, SplitInfo
from tqdm.auto import tqdm

from ..textual_inversion.embeddings import EMBEDS_NAME, TOKENS_INDEX, read_token_folder, save_embeds
from .cards import dataset_card, embeddings_card, model_card
from .run import Run, load_run_dataset, read_json, read_run

PathLike = Union[str, os.PathLike]
# Cross links {artifact: repo id} the cards name; None: the run's own ids in repo_id's namespace.
Links = Optional[Mapping[str, str]]
CARD_FILE = "README.md"
DEFAULT_MAX_SHARD_SIZE = "500MB"  # datasets.config.MAX_SHARD_SIZE, what push_to_hub uses


# The dataset ------------------------------------------------------------------------------


def _parquet_plan(dataset, max_shard_size: str | int) -> tuple[int, int, int]:
    """``(num_shards, writer_batch_size, estimated bytes)`` as ``push_to_hub`` picks them.

    Adapter over datasets internals (``_estimate_nbytes`` and the writer batch-size helpers),
    which ``Dataset._push_parquet_shards_to_hub`` uses; one place to follow their drift.
    """
    from datasets.arrow_writer import get_writer_batch_size_from_data_size, get_writer_batch_size_from_features
    from datasets.utils.py_utils import convert_file_size_to_int

    nbytes = dataset._estimate_nbytes()
    writer_batch_size = get_writer_batch_size_from_features(dataset.features) or get_writer_batch_size_from_data_size(
        len(dataset), nbytes
    )
    num_shards = int(nbytes / convert_file_size_to_int(max_shard_size)) + 1
    return num_shards, writer_batch_size, nbytes


def _embed_external_files(shard, writer_batch_size: int):
    """Replace image paths by the images' bytes, as ``push_to_hub`` does, so shards stand alone."""
    from datasets.features.features import require_decoding
    from datasets.table import embed_table_storage

    if not any(require_decoding(f, ignore_decode_attribute=True) for f in shard.features.values()):
        return shard
    format = shard.format
    shard = shard.with_format("arrow").map(
        embed_table_storage, batched=True, batch_size=writer_batch_size, keep_in_memory=True
    )
    return shard.with_format(**format)


def _write_split(dataset, split: str, data_dir: Path, max_shard_size) -> tuple[SplitInfo, int]:
    num_shards, writer_batch_size, nbytes = _parquet_plan(dataset, max_shard_size)
    written = 0
    for index in tqdm(range(num_shards), desc=f"Writing {split} shards", disable=num_shards == 1):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        shard = _embed_external_files(shard, writer_batch_size)
        path = data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(path), batch_size=writer_batch_size)
        written += path.stat().st_size
    return SplitInfo(name=split, num_bytes=nbytes, num_examples=len(dataset)), written


def _prepare_out_dir(out_dir: PathLike) -> Path:
    # A twin must hold nothing but what the repository will: stale files would be uploaded too.
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; a folder twin is written into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out

def save_dataset_folder(
    run_dir: PathLike, out_dir: PathLike, repo_id: str, *, links: Links = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write the dataset repository: ``data/<split>-*.parquet`` and ``README.md``."""
    run = read_run(run_dir)
    dataset = load_run_dataset(run)
    empty = [split for split, ds in dataset.items() if len(ds) == 0]
    if empty:
        # datasets builds no split from parquet shards without rows, so such a repository
        # would not load; an empty synthetic split means every edit was pruned.
        raise ValueError(
            f"split(s) {empty} of {run.path / 'augmented'} have no rows and a Hub dataset cannot hold an "
            "empty split; nothing to publish (see the pruning counts in report.json)"
        )
    out = _prepare_out_dir(out_dir)
    data_dir = out / "data"
    data_dir.mkdir()
    info = DatasetInfo(config_name="default", features=dataset["train"].features, splits=SplitDict())
    info.download_size = info.dataset_size = 0
    for split, ds in dataset.items():
        split_info, written = _write_split(ds, split, data_dir, max_shard_size)
        info.splits.add(split_info)
        info.download_size += written
        info.dataset_size += split_info.num_bytes
    info.size_in_bytes = info.download_size + info.dataset_size
    dataset_card(run, dataset, repo_id, links, info).save(out / CARD_FILE)
    return out


# The embeddings ---------------------------------------------------------------------------


def _weight_name(class_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", class_name) + ".safetensors"


def read_tokens(run: Run, class_names: list[str]) -> list[dict]:
    """The run's tokens in class order: ``[{class_index, class_name, token, vectors, info, file}]``.

    Read by :func:`dbb_hf.textual_inversion.read_token_folder` from ``tokens/``; every token
    must know its class (``tokens.json``, or the class index ``learn_tokens`` writes into
    its combined file, names then coming from ``class_names``). ``file`` is the token's
    file name in the tokens repository.
    """
    tokens = []
    for saved in read_token_folder(run.tokens_dir):
        in_range = saved.class_index is not None and 0 <= saved.class_index < len(class_names)
        if saved.class_index is None or not (saved.class_name is not None or in_range):
            raise ValueError(f"{saved.file}: token {saved.token!r} has no valid class_index in its metadata")
        class_name = saved.class_name or class_names[saved.class_index]
        tokens.append(
            {
                "class_index": saved.class_index,
                "class_name": class_name,
                "token": saved.token,
                "vectors": saved.vectors,
                "info": saved.info,
                "file": _weight_name(class_name),
            }
        )
    tokens.sort(key=lambda t: t["class_index"])
    files = [t["file"] for t in tokens]
    if len(set(files)) != len(files):
        raise ValueError(f"the run's class names give clashing token file names {files}")
    return tokens


def save_embeddings_folder(run_dir: PathLike, out_dir: PathLike, repo_id: str, *, links: Links = None) -> Path:
    """Write the tokens repository: ``<class_name>.safetensors`` (each ``{token: tensor}``) and a card."""
    run = read_run(run_dir)
    if not run.has_tokens:
        raise FileNotFoundError(
            f"neither {run.tokens_dir / TOKENS_INDEX} nor {run.tokens_dir / EMBEDS_NAME} found: the run learned no tokens"
        )
    synthetic = load_run_dataset(run)["synthetic"]
    tokens = read_tokens(run, synthetic.features["label"].names)
    out = _prepare_out_dir(out_dir)
    for token in tokens:
        # One token per file, the layout ``load_textual_inversion(weight_name=...)`` reads.
        save_embeds(str(out / token["file"]), {token["token"]: token["vectors"]}, {token["token"]: token["info"]})
    embeddings_card(run, tokens, synthetic, repo_id, links).save(out / CARD_FILE)
    return out


# The classifier ---------------------------------------------------------------------------


def save_model_folder(run_dir: PathLike, out_dir: PathLike, repo_id: str, *, links: Links = None) -> Path:
    """Write the classifier repository: timm's ``config.json`` + ``model.safetensors`` and a card."""
    run = read_run(run_dir)
    model_config = read_json(run.model_dir / "config.json")
    if not (run.model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{run.model_dir / 'model.safetensors'} not found")
    out = _prepare_out_dir(out_dir)
    for path in sorted(run.model_dir.iterdir()):
        if path.is_file() and path.name != CARD_FILE:
            shutil.copyfile(path, out / path.name)
    model_card(run, repo_id, links, model_config).save(out / CARD_FILE)
    return out
