"""Publishing a run on the Hugging Face Hub: the augmented dataset, the textual-inversion
tokens and the retrained classifier, each with a card rendered from ``hub_cards/``.

Every artifact has a pair of functions. ``save_<artifact>_folder(run_dir, out_dir,
repo_id)`` writes exactly the files its Hub repository will hold, a folder twin that loads
offline the way the Hub copy loads (``load_dataset(folder)``,
``pipe.load_textual_inversion(folder, weight_name=..., token=...)``,
``timm.create_model("local-dir:<folder>", pretrained=True)``). ``push_<artifact>(run_dir,
repo_id, ...)`` writes that twin to a temporary folder and uploads it with
``HfApi.upload_folder``, so the Hub receives byte for byte what a twin holds.

The dataset is not pushed with ``DatasetDict.push_to_hub``: one Hub configuration has one
schema, while the run's splits differ (only edits have ``prompt``, ``psi``, ...), and
``push_to_hub`` writes its own README. The twin follows ``push_to_hub``'s layout instead:
``data/<split>-XXXXX-of-YYYYY.parquet`` with the image bytes embedded, the same shard count
and row-group size, and README YAML with ``configs`` and ``dataset_info``, over the shared
schema of :func:`dbb_hf.augmented.unify_features`.

Hub tokens go to ``HfApi`` only (``token=None``: huggingface_hub's own lookup, ``HF_TOKEN``
or the saved login), never into a card, a file or a log; before an upload every file of the
twin is scanned for the token's value and the upload refused if it occurs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import jinja2
import jinja2.meta
import yaml
from datasets import DatasetDict
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub import get_token as stored_hub_token
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .augmented import load_augmented
from .data.common import group_counts, group_names

ARXIV_ID = "2503.17226"
CITATION = """@misc{yazdanparast2025leveraging,
  title         = {Leveraging Text-to-Image Generation for Handling Spurious Correlation},
  author        = {Yazdan Parast, Aryan and Azam, Basim and Akhtar, Naveed},
  year          = {2025},
  eprint        = {2503.17226},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2503.17226}
}"""
NA = "n/a"
CARD_FILE = "README.md"
TOKENS_INDEX = "tokens.json"
# learn_tokens' file of all tokens, with each token's class index in its metadata.
COMBINED_EMBEDS = "learned_embeds.safetensors"
DEFAULT_MAX_SHARD_SIZE = "500MB"  # datasets.config.MAX_SHARD_SIZE, what push_to_hub uses


@dataclass(frozen=True)
class SourceDataset:
    """A source benchmark and its terms (``license``: the Hub's licence id for the YAML)."""

    pretty_name: str
    license: str
    terms: str
    homepage: str
    license_name: Optional[str] = None
    license_link: Optional[str] = None
    misuse_note: str = ""


SOURCE_DATASETS = {
    "celeba": SourceDataset(
        pretty_name="CelebA",
        license="other",
        license_name="celeba-non-commercial-research",
        license_link="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        terms="CelebA is available for non-commercial research purposes only (agreement of MMLAB, "
        "The Chinese University of Hong Kong); commercial use and redistribution for it are not allowed.",
        homepage="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        misuse_note="The images are photographs of real people and edits of them: do not use them to "
        "identify, impersonate or depict anyone.",
    ),
    "waterbirds": SourceDataset(
        pretty_name="Waterbirds",
        license="other",
        license_name="cub-200-2011-and-places-non-commercial-research",
        license_link="https://www.vision.caltech.edu/datasets/cub_200_2011/",
        terms="Waterbirds (Sagawa et al., 2020) pastes CUB-200-2011 bird photographs (Caltech-UCSD; "
        "Flickr images for non-commercial research and educational purposes only) onto Places "
        "backgrounds (MIT; non-commercial research and educational purposes only); the terms of both apply.",
        homepage="https://github.com/kohpangwei/group_DRO",
    ),
    "metashift": SourceDataset(
        pretty_name="MetaShift",
        license="cc-by-4.0",
        terms="MetaShift (Liang and Zou, 2022) is built from Visual Genome images and distributed under "
        "CC BY 4.0: reuse is allowed with attribution.",
        homepage="https://github.com/Weixin-Liang/MetaShift",
    ),
    "toy": SourceDataset(
        pretty_name="dbb_hf toy benchmark",
        license="apache-2.0",
        terms="Generated by dbb_hf (bars over synthetic landscapes, dbb_hf.data.toy); Apache-2.0 like the toolkit.",
        homepage="dbb_hf.data.toy",
    ),
}

COLUMN_DESCRIPTIONS = {
    "image": "the image; in `synthetic`, the edit",
    "label": "the class; in `synthetic`, the new class the edit was made to show",
    "spurious": "the spurious attribute; in `synthetic`, the source image's (its background is kept)",
    "group": "`label * num_spurious + spurious`",
    "example_id": "stable id; edits: `<source example_id>->t<target class>`",
    "mask": "object mask (mode L, 0/255): ground truth on real images that have one, the inpainted region on edits",
    "source_label": "class of the real image the edit was made from",
    "source_example_id": "`example_id` of that real image",
    "prompt": "inpainting prompt",
    "seed": "generator seed of the edit",
    "generator": "what made the edit",
    "psi": "ERM probability of the source class on the edit (Eq. 3 compares it with Psi)",
    "rho": "integrated-gradients attribution to the new class inside the mask (Eq. 4-5)",
    "psi_threshold": "Psi of the source class: the edit needs `psi` below it",
    "P": "attribution threshold of the new class: the edit needs `rho` above it",
    "keep": "pruning verdict (true for every published edit)",
    "erm_loss": "ERM cross-entropy of the source image (selection keeps the lowest per class)",
    "mask_box": "detected box of the causal object (x0, y0, x1, y1)",
    "mask_score": "detection score of the mask",
    "mask_status": "masking outcome (`ok` for every published edit)",
    "generated_mask": "the region the generator changed",
    "generation_status": "generation outcome (`ok` for every published edit)",
    "ig_target": "class the integrated gradients were taken for",
    "score_status": "pruning's scoring outcome (`ok` for every published edit)",
    "prune_reason": "why an edit is pruned; empty when kept",
}
SPLIT_DESCRIPTIONS = {
    "train": "real training images",
    "synthetic": "kept edits: new minority-group images, `label` = new class",
    "validation": "real images, untouched",
    "test": "real images, untouched",
}
DATASET_CONFIG_SECTIONS = ("data", "dataset", "selection", "textual_inversion", "masking", "inpainting", "pruning")
MODEL_CONFIG_SECTIONS = ("classifier", "erm", "retraining")
MODEL_ROLES = ("textual_inversion", "inpainting", "masking", "classifier")
MODEL_ID_KEYS = ("id", "detector", "segmenter")
REQUIRED_METRICS = ("worst_group_accuracy", "average_accuracy")
METRICS = (
    ("worst_group_accuracy", "worst_group_accuracy", "Worst-group accuracy"),
    ("average_accuracy", "accuracy", "Average accuracy"),
    ("weighted_average_accuracy", "weighted_average_accuracy", "Weighted average accuracy"),
)


# Reading a run ------------------------------------------------------------------------------


@dataclass
class Run:
    """A finished run folder: its resolved config and its report."""

    path: Path
    config: dict
    report: dict

    @property
    def data(self) -> dict:
        """What the run says about its data: report.json's ``dataset``, else config.yaml's data section."""
        for section in (self.report.get("dataset"), self.config.get("data"), self.config.get("dataset")):
            if isinstance(section, Mapping):
                return dict(section)
        return {}

    @property
    def dataset_key(self) -> str:
        data = self.data
        name = data.get("name") or data.get("dataset")
        if not name:
            raise ValueError(f"{self.path}: neither report.json nor config.yaml names the dataset")
        if name == "hub" and data.get("data_dir"):  # a dataset loaded from the Hub or a folder
            name = Path(str(data["data_dir"]).rstrip("/")).name
        return str(name).lower()

    @property
    def source(self) -> SourceDataset:
        known = SOURCE_DATASETS.get(self.dataset_key)
        if known is not None:
            return known
        recorded = self.data.get("license")
        return SourceDataset(
            pretty_name=self.dataset_key,
            license="other",
            terms=recorded or "not recorded by the run: check the source dataset's terms",
            homepage=NA,
        )

    @property
    def architecture(self) -> str:
        return str(_read_json(self.model_dir / "config.json").get("architecture", "classifier"))

    @property
    def model_dir(self) -> Path:
        return self.path / "retrained" / "model"

    @property
    def tokens_dir(self) -> Path:
        return self.path / "tokens"

    @property
    def has_tokens(self) -> bool:
        return (self.tokens_dir / TOKENS_INDEX).exists() or (self.tokens_dir / COMBINED_EMBEDS).exists()


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with open(path) as f:
        return json.load(f)


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read ``config.yaml`` and ``report.json``; the ERM and retrained test metrics are required."""
    path = Path(run_dir)
    config_path = path / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: not a run folder")
    with open(config_path) as f:
        config = yaml.safe_load(f) or {}
    report = _read_json(path / "report.json")
    for model in ("erm", "retrained"):
        for metric in REQUIRED_METRICS:
            if _get(report, model, metric) is None:
                raise ValueError(f"{path / 'report.json'} has no {model}.{metric}; was the run finished?")
    return Run(path=path, config=config, report=report)


def _get(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _pct(value) -> str:
    return NA if value is None else f"{100 * float(value):.2f}%"


def _num(value) -> str:
    if value is None:
        return NA
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.4g}"


def _yaml_sections(config: dict, names) -> list[dict]:
    return [
        {"name": name, "yaml": yaml.safe_dump(config[name], sort_keys=False).strip()} for name in names if name in config
    ]


def repo_ids(run: Run, namespace: Optional[str] = None, name_prefix: Optional[str] = None) -> dict[str, str]:
    """Repository ids of a run's artifacts: ``<ns>/<dataset>-dbb``, ``-dbb-tokens``, ``-dbb-<arch>``.

    ``embeddings`` is absent when the run learned no tokens (the compose generator).
    """
    base = name_prefix or re.sub(r"[^a-z0-9._-]+", "-", run.dataset_key)
    names = {"dataset": f"{base}-dbb", "model": f"{base}-dbb-{run.architecture.lower()}"}
    if run.has_tokens:
        names["embeddings"] = f"{base}-dbb-tokens"
    return {kind: f"{namespace}/{name}" if namespace else name for kind, name in names.items()}


def _links(run: Run, repo_id: str, kind: str, links: Optional[Mapping[str, str]]) -> dict:
    """Cross links: the given ones, else the run's default ids in ``repo_id``'s namespace."""
    if links is None:
        namespace = repo_id.split("/")[0] if "/" in repo_id else None
        links = repo_ids(run, namespace)
    links = dict(links)
    links[kind] = repo_id
    return links


# Cards ------------------------------------------------------------------------------------


def cards_dir() -> Path:
    """The folder of card templates: the checkout's ``hub_cards/``, or where a wheel installs it."""
    candidates = [
        Path(__file__).resolve().parents[1] / "hub_cards",
        Path(sysconfig.get_path("data")) / "share" / "dbb_hf" / "hub_cards",
        Path(sys.prefix) / "share" / "dbb_hf" / "hub_cards",
    ]
    for candidate in candidates:
        if (candidate / "dataset_card.md").exists():
            return candidate
    raise FileNotFoundError(f"card templates not found; looked in {[str(c) for c in candidates]}")


def render_card(card_class, card_data, template_name: str, **fields):
    """Render ``hub_cards/<template_name>`` with ``fields``; every template variable must be given.

    Jinja renders a missing variable as an empty string, which would publish a card with
    holes; the check turns that into an error naming the variables.
    """
    template_path = cards_dir() / template_name
    source = template_path.read_text(encoding="utf-8")
    needed = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    missing = sorted(needed - set(fields) - set(card_data.to_dict()) - {"card_data"})
    if missing:
        raise ValueError(f"{template_path} needs field(s) {missing} that were not given")
    return card_class.from_template(card_data, template_path=str(template_path), **fields)


def _model_rows(run: Run) -> list[dict]:
    """One row per model id the report names (masking names a detector and a segmenter)."""
    rows = []
    for role in MODEL_ROLES:
        entry = _get(run.report, "models", role)
        if not isinstance(entry, Mapping):
            rows.append({"role": role, "id": entry or NA, "revision": NA})
            continue
        label = f"{role} ({entry['backend']})" if entry.get("backend") else role
        named = [key for key in MODEL_ID_KEYS if entry.get(key)]
        for key in named:
            revision = entry.get("revision" if key == "id" else f"{key}_revision")
            rows.append({"role": label if key == "id" else f"{label} {key}", "id": entry[key], "revision": revision or NA})
        if not named:
            rows.append({"role": label, "id": NA, "revision": NA})
    return rows


def _model_ref(run: Run, role: str) -> dict:
    entry = _get(run.report, "models", role)
    if isinstance(entry, Mapping):
        return {"id": entry.get("id") or NA, "revision": entry.get("revision") or "main"}
    return {"id": entry or NA, "revision": "main"}


def _size_category(num_rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_rows < bound:
            return name
    return "1M<n<10M"


def _feature_type(feature) -> str:
    kind = type(feature).__name__
    if hasattr(feature, "names"):
        return f"ClassLabel ({', '.join(feature.names)})"
    if hasattr(feature, "dtype") and kind == "Value":
        return feature.dtype
    return kind


def _dataset_card_fields(run: Run, dataset: DatasetDict, repo_id: str, links: dict) -> dict:
    synthetic = dataset["synthetic"]
    class_names = dataset["train"].features["label"].names
    if {"label", "spurious", "group"} <= set(dataset["train"].column_names):
        names = group_names(dataset["train"].features)
        per_split = group_counts(dataset)
        counts_rows = [{"split": split, "counts": [per_split[split][g] for g in names]} for split in dataset]
    else:
        names, counts_rows = [], []
    prompts = Counter(p for p in synthetic["prompt"] if p) if "prompt" in synthetic.column_names else Counter()
    psi, p = _per_class(run.report.get("Psi"), class_names), _per_class(run.report.get("P"), class_names)
    direction_counts = []
    for direction, entry in (run.report.get("counts") or {}).items():
        row = {"direction": direction}
        for key in ("selected", "masked", "generated", "kept", "pruned"):
            row[key] = _num(_get(entry, key))
        direction_counts.append(row)
    generators = sorted(set(synthetic["generator"])) if "generator" in synthetic.column_names else []
    source = run.source
    return {
        "pretty_name": f"{source.pretty_name} balanced by DBB",
        "repo_id": repo_id,
        "model_repo": links.get("model"),
        "embeddings_repo": links.get("embeddings"),
        "arxiv_id": ARXIV_ID,
        "source": {
            "pretty_name": source.pretty_name,
            "homepage": source.homepage,
            "terms": source.terms,
            "run_license": run.data.get("license") or NA,
            "misuse_note": source.misuse_note,
        },
        "splits": [
            {"name": split, "num_rows": len(ds), "description": SPLIT_DESCRIPTIONS.get(split, NA)}
            for split, ds in dataset.items()
        ],
        "group_names": names,
        "group_counts": counts_rows,
        "features": [
            {"name": name, "type": _feature_type(feature), "description": COLUMN_DESCRIPTIONS.get(name, NA)}
            for name, feature in synthetic.features.items()
        ],
        "generator": ", ".join(str(g) for g in generators) if generators else NA,
        "models": _model_rows(run),
        "prompts": [{"text": text, "count": count} for text, count in prompts.most_common(20)]
        or [{"text": NA, "count": 0}],
        "thresholds": [
            {"class_name": name, "Psi": _num(psi_value), "P": _num(p_value)}
            for name, psi_value, p_value in zip(class_names, psi, p)
        ],
        "counts": direction_counts
        or [dict(direction=NA, selected=NA, masked=NA, generated=NA, kept=NA, pruned=NA)],
        "config_sections": _yaml_sections(run.config, DATASET_CONFIG_SECTIONS),
        "seed": run.config.get("seed", NA),
        "timings": [{"name": k, "value": _num(v)} for k, v in _timings(run.report).items()],
        "citation": CITATION,
    }


def _per_class(value, class_names) -> list:
    """A per-class value as a list: the report may give a list, a mapping by class, or one number."""
    if isinstance(value, Mapping):
        return [value.get(name, value.get(str(i))) for i, name in enumerate(class_names)]
    if isinstance(value, (list, tuple)):
        return [value[i] if i < len(value) else None for i in range(len(class_names))]
    return [value] * len(class_names)


def _timings(report: dict) -> dict:
    return report.get("timings") or report.get("timings_seconds") or {}


def _license_fields(source: SourceDataset) -> dict:
    fields = {"license": source.license}
    if source.license_name:
        fields["license_name"] = source.license_name
    if source.license_link:
        fields["license_link"] = source.license_link
    return fields


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


def _prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    # A twin must hold nothing but what the repository will: stale files would be uploaded too.
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; a folder twin is written into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_run_dataset(run: Run) -> DatasetDict:
    """The run's augmented dataset, with the published schema, checked for retraining."""
    folder = run.path / "augmented"
    if not (folder / "dataset_dict.json").exists():
        raise FileNotFoundError(f"{folder / 'dataset_dict.json'} not found: the run has no augmented dataset")
    return load_augmented(folder)


def save_dataset_folder(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    links: Optional[Mapping[str, str]] = None,
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

    source = run.source
    card_data = DatasetCardData(
        pretty_name=f"{source.pretty_name} balanced by DBB",
        task_categories=["image-classification"],
        size_categories=[_size_category(sum(len(ds) for ds in dataset.values()))],
        tags=["dbb", "spurious-correlations", "synthetic", "group-robustness"],
        **_license_fields(source),
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs(
        {"default": {"data_files": [{"split": split, "path": f"data/{split}-*"} for split in dataset]}}
    ).to_dataset_card_data(card_data)
    fields = _dataset_card_fields(run, dataset, repo_id, _links(run, repo_id, "dataset", links))
    render_card(DatasetCard, card_data, "dataset_card.md", **fields).save(out / CARD_FILE)
    return out


# The embeddings ---------------------------------------------------------------------------


def _weight_name(class_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", class_name) + ".safetensors"


def read_tokens(run: Run, class_names: list[str]) -> list[dict]:
    """The run's tokens in class order: ``[{class_index, class_name, token, vectors, info, file}]``.

    Reads ``tokens/tokens.json`` (``{"<class index>": {"class_name", "token", "file"}}``, files
    relative to ``tokens/``) when present, else the combined file ``learn_tokens`` writes,
    whose metadata gives each token's class index (names then come from ``class_names``).
    """
    from .textual_inversion import read_embeds

    index_path = run.tokens_dir / TOKENS_INDEX
    entries = []
    if index_path.exists():
        for class_index, entry in _read_json(index_path).items():
            for key in ("class_name", "token", "file"):
                if key not in entry:
                    raise ValueError(f"{index_path}: class {class_index} has no {key!r}")
            path = run.tokens_dir / entry["file"]  # an absolute "file" stays absolute
            vectors, info = read_embeds(path)
            if list(vectors) != [entry["token"]]:
                raise ValueError(f"{path} holds {list(vectors)}; expected exactly the token {entry['token']!r}")
            entries.append((int(class_index), entry["class_name"], entry["token"], vectors[entry["token"]], info))
    else:
        path = run.tokens_dir / COMBINED_EMBEDS
        vectors, info = read_embeds(path)
        for token, tensor in vectors.items():
            class_index = (info.get(token) or {}).get("class_index")
            if class_index is None or not 0 <= int(class_index) < len(class_names):
                raise ValueError(f"{path}: token {token!r} has no valid class_index in its metadata")
            entries.append((int(class_index), class_names[int(class_index)], token, tensor, info))
    tokens = []
    for class_index, class_name, token, tensor, info in sorted(entries, key=lambda e: e[0]):
        if tensor.ndim not in (1, 2):
            raise ValueError(f"token {token!r}: embedding of shape {tuple(tensor.shape)}; expected (width,) or (vectors, width)")
        tokens.append(
            {
                "class_index": class_index,
                "class_name": class_name,
                "token": token,
                "vectors": tensor,
                "info": info.get(token, {}),
                "file": _weight_name(class_name),
            }
        )
    files = [t["file"] for t in tokens]
    if len(set(files)) != len(files):
        raise ValueError(f"the run's class names give clashing token file names {files}")
    return tokens


def _save_token_file(path: Path, token: str, vectors, info: dict) -> None:
    """One token per file, the layout ``load_textual_inversion(weight_name=...)`` reads.

    The token's provenance goes in the metadata the way ``dbb_hf.textual_inversion`` writes
    it, under one key only: safetensors orders several metadata keys differently from one
    save to the next, and a folder twin must be byte-identical to what a push uploads.
    """
    from .textual_inversion import METADATA_KEY

    payload = json.dumps({"tokens": [token], "info": {token: info}}, sort_keys=True, default=str)
    save_file({token: vectors.detach().float().cpu().contiguous()}, str(path), metadata={METADATA_KEY: payload})


def save_embeddings_folder(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    links: Optional[Mapping[str, str]] = None,
) -> Path:
    """Write the tokens repository: ``<class_name>.safetensors`` (each ``{token: tensor}``) and a card."""
    run = read_run(run_dir)
    if not run.has_tokens:
        raise FileNotFoundError(
            f"neither {run.tokens_dir / TOKENS_INDEX} nor {run.tokens_dir / COMBINED_EMBEDS} found: the run learned no tokens"
        )
    synthetic = load_run_dataset(run)["synthetic"]
    tokens = read_tokens(run, synthetic.features["label"].names)
    out = _prepare_out_dir(out_dir)
    for token in tokens:
        _save_token_file(out / token["file"], token["token"], token["vectors"], token["info"])
    links = _links(run, repo_id, "embeddings", links)
    source = run.source
    base_model = _model_ref(run, "textual_inversion")
    prompts = sorted({p for p in synthetic["prompt"] if p})[:20] if "prompt" in synthetic.column_names else []
    first = tokens[0]
    default_prompt = f"A photo of a {first['token']} {first['class_name'].replace('_', ' ')}"
    card_data = ModelCardData(
        library_name="diffusers",
        tags=["textual_inversion", "stable-diffusion", "diffusers", "dbb", "spurious-correlations"],
        base_model=base_model["id"] if base_model["id"] != NA else None,
        datasets=[links["dataset"]],
        **_license_fields(source),
    )
    fields = {
        "title": f"DBB textual-inversion tokens for {source.pretty_name}",
        "repo_id": repo_id,
        "dataset_repo": links["dataset"],
        "model_repo": links.get("model"),
        "arxiv_id": ARXIV_ID,
        "source": {"pretty_name": source.pretty_name, "terms": source.terms, "misuse_note": source.misuse_note},
        "base_model": base_model,
        "inpainting_model": _model_ref(run, "inpainting"),
        "tokens": [
            {
                **{key: t[key] for key in ("class_index", "class_name", "token", "file")},
                "shape": " x ".join(map(str, t["vectors"].reshape(-1, t["vectors"].shape[-1]).shape)),
            }
            for t in tokens
        ],
        "embedding_dim": first["vectors"].shape[-1],
        "prompt_templates": prompts or [default_prompt],
        "example_prompt": prompts[0] if prompts else default_prompt,
        "training_yaml": yaml.safe_dump(run.config.get("textual_inversion", NA), sort_keys=False).strip(),
        "citation": CITATION,
    }
    render_card(ModelCard, card_data, "embeddings_card.md", **fields).save(out / CARD_FILE)
    return out


# The classifier ---------------------------------------------------------------------------


def _base_model(run: Run) -> Optional[str]:
    """The Hub id the classifier started from, when it started from pretrained weights."""
    classifier = run.config.get("classifier") or {}
    name = classifier.get("model_name")
    if not name or not classifier.get("pretrained", True) or name.startswith("local-dir:"):
        return None
    if name.startswith("hf-hub:"):
        return name[len("hf-hub:") :]
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id and cfg.hf_hub_id != "timm/" else None


def _eval_results(run: Run, dataset_repo: str, dataset_name: str) -> list[EvalResult]:
    results = []
    for split, metrics in (("test", run.report["retrained"]), ("validation", _get(run.report, "validation", "retrained"))):
        if not isinstance(metrics, Mapping):
            continue
        for key, metric_type, metric_name in METRICS:
            if metrics.get(key) is None:
                continue
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=dataset_repo,
                    dataset_name=dataset_name,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(metrics[key]), 6),
                )
            )
    return results


def _model_card_fields(run: Run, repo_id: str, links: dict, model_config: dict) -> dict:
    report = run.report
    rows = []
    for split, erm, retrained in (
        ("test", report["erm"], report["retrained"]),
        ("validation", _get(report, "validation", "erm"), _get(report, "validation", "retrained")),
    ):
        if erm is None and retrained is None:
            continue
        for key, _, name in METRICS:
            rows.append({"metric": name, "split": split, "erm": _pct(_get(erm, key)), "retrained": _pct(_get(retrained, key))})
    erm_groups = report["erm"].get("per_group_accuracy") or {}
    retrained_groups = report["retrained"].get("per_group_accuracy") or {}
    counts = report["retrained"].get("group_counts") or report["erm"].get("group_counts") or {}
    per_group = [
        {
            "group": group,
            "count": _num(counts.get(group)),
            "erm": _pct(erm_groups.get(group)),
            "retrained": _pct(retrained_groups.get(group)),
        }
        for group in list(retrained_groups) + [g for g in erm_groups if g not in retrained_groups]
    ] or [{"group": NA, "count": NA, "erm": NA, "retrained": NA}]
    pretrained_cfg = model_config.get("pretrained_cfg") or {}
    label_names = model_config.get("label_names") or pretrained_cfg.get("label_names")
    if not label_names:
        raise ValueError(f"{run.model_dir / 'config.json'} has no label_names; save it with save_classifier")
    source = run.source
    base_model = _base_model(run)
    return {
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "architecture": model_config.get("architecture", NA),
        "label_names": list(label_names),
        "dataset_repo": links["dataset"],
        "embeddings_repo": links.get("embeddings"),
        "arxiv_id": ARXIV_ID,
        "source": {"pretty_name": source.pretty_name, "terms": source.terms},
        "input_size": pretrained_cfg.get("input_size", NA),
        "interpolation": pretrained_cfg.get("interpolation", NA),
        "crop_pct": pretrained_cfg.get("crop_pct", NA),
        "mean": pretrained_cfg.get("mean", NA),
        "std": pretrained_cfg.get("std", NA),
        "results": rows,
        "per_group_split": "test",
        "per_group": per_group,
        "base_model_text": f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "random initialisation",
        "training_text": "Trained on real plus synthetic images"
        if _get(run.config, "run", "retrain_from_erm") is False
        else "First fine-tuned by plain ERM on the real training split (the ERM model below), then "
        "retrained from those weights on real plus synthetic images",
        "config_sections": _yaml_sections(run.config, MODEL_CONFIG_SECTIONS),
        "seed": run.config.get("seed", NA),
        "citation": CITATION,
    }


def save_model_folder(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    links: Optional[Mapping[str, str]] = None,
) -> Path:
    """Write the classifier repository: timm's ``config.json`` + ``model.safetensors`` and a card."""
    run = read_run(run_dir)
    model_config = _read_json(run.model_dir / "config.json")
    if not (run.model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{run.model_dir / 'model.safetensors'} not found")
    out = _prepare_out_dir(out_dir)
    for path in sorted(run.model_dir.iterdir()):
        if path.is_file() and path.name != CARD_FILE:
            shutil.copyfile(path, out / path.name)
    links = _links(run, repo_id, "model", links)
    fields = _model_card_fields(run, repo_id, links, model_config)
    source = run.source
    card_data = ModelCardData(
        model_name=fields["model_name"],
        library_name="timm",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "dbb", "spurious-correlations", "group-robustness"],
        datasets=[links["dataset"]],
        base_model=_base_model(run),
        metrics=["accuracy", "worst_group_accuracy"],
        eval_results=_eval_results(run, links["dataset"], f"{source.pretty_name} balanced by DBB"),
        **_license_fields(source),
    )
    render_card(ModelCard, card_data, "model_card.md", **fields).save(out / CARD_FILE)
    return out


# Pushing ----------------------------------------------------------------------------------


def assert_token_free(folder: str | os.PathLike, token: Optional[str]) -> None:
    """Raise if any file under ``folder`` contains ``token`` (the message never shows it)."""
    if not token:
        return
    needle = token.encode()
    chunk = 1 << 20
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            tail = b""
            while block := f.read(chunk):
                if needle in tail + block:
                    raise ValueError(f"{path} contains the Hub token; refusing to upload it")
                tail = block[-(len(needle) - 1) :] if len(needle) > 1 else b""


@dataclass(frozen=True)
class Artifact:
    """How one kind of artifact is written and uploaded."""

    save: Callable[..., Path]
    repo_type: str
    # Files of an earlier push that this one may not rewrite (shards of another count).
    delete_patterns: Optional[list[str]]
    commit_message: str


ARTIFACTS = {
    "dataset": Artifact(save_dataset_folder, "dataset", ["data/*"], "Upload DBB-augmented dataset"),
    "embeddings": Artifact(save_embeddings_folder, "model", ["*.safetensors"], "Upload DBB textual-inversion tokens"),
    "model": Artifact(save_model_folder, "model", None, "Upload DBB-retrained classifier"),
}


def _create_repo(api: HfApi, artifact: Artifact, repo_id: str, private: bool, revision: Optional[str]) -> str:
    repo_id = api.create_repo(repo_id, repo_type=artifact.repo_type, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type=artifact.repo_type, exist_ok=True)
    return repo_id


def _upload(api: HfApi, artifact: Artifact, folder: Path, repo_id: str, revision: Optional[str]) -> None:
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=artifact.repo_type,
        revision=revision,
        commit_message=artifact.commit_message,
        delete_patterns=artifact.delete_patterns,
    )


def _push(kind: str, run_dir, repo_id: str, *, token, private, revision, links) -> str:
    artifact = ARTIFACTS[kind]
    api = HfApi(token=token)
    # The repository first: a bare name resolves to the token owner's namespace, which the card links.
    repo_id = _create_repo(api, artifact, repo_id, private, revision)
    with tempfile.TemporaryDirectory() as tmp:
        folder = artifact.save(run_dir, Path(tmp) / "repo", repo_id, links=links)
        assert_token_free(folder, token or stored_hub_token())
        _upload(api, artifact, folder, repo_id, revision)
    return repo_id


def push_dataset(
    run_dir, repo_id: str, token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
    *, links: Optional[Mapping[str, str]] = None,
) -> str:
    """Upload the dataset twin to the dataset repository ``repo_id``; returns the repository id."""
    return _push("dataset", run_dir, repo_id, token=token, private=private, revision=revision, links=links)


def push_embeddings(
    run_dir, repo_id: str, token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
    *, links: Optional[Mapping[str, str]] = None,
) -> str:
    """Upload the tokens twin to the model repository ``repo_id``; returns the repository id."""
    return _push("embeddings", run_dir, repo_id, token=token, private=private, revision=revision, links=links)


def push_model(
    run_dir, repo_id: str, token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
    *, links: Optional[Mapping[str, str]] = None,
) -> str:
    """Upload the classifier twin to the model repository ``repo_id``; returns the repository id."""
    return _push("model", run_dir, repo_id, token=token, private=private, revision=revision, links=links)


def publish_run(
    run_dir: str | os.PathLike,
    *,
    namespace: Optional[str] = None,
    to_folder: Optional[str | os.PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    name_prefix: Optional[str] = None,
) -> dict[str, str]:
    """Publish a run's dataset, tokens (if any) and classifier, cross-linked.

    With ``to_folder``, write the twins to ``<to_folder>/{dataset,embeddings,model}`` and
    push nothing (cards link to ``namespace``'s ids, bare names without it); returns the
    folders. Otherwise push to ``<namespace>/<dataset>-dbb``, ``-dbb-tokens`` and
    ``-dbb-<architecture>``; returns the repository ids. All three twins are written and
    checked before the first upload, so a run that cannot be published pushes nothing.
    """
    if to_folder is None and namespace is None:
        raise ValueError("give namespace (to push to the Hub) or to_folder (to write the repositories locally)")
    ids = repo_ids(read_run(run_dir), namespace, name_prefix)
    if to_folder is not None:
        return {kind: str(ARTIFACTS[kind].save(run_dir, Path(to_folder) / kind, ids[kind], links=ids)) for kind in ids}
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {kind: ARTIFACTS[kind].save(run_dir, Path(tmp) / kind, ids[kind], links=ids) for kind in ids}
        for folder in folders.values():
            assert_token_free(folder, token or stored_hub_token())
        for kind, folder in folders.items():
            _create_repo(api, ARTIFACTS[kind], ids[kind], private, None)
            _upload(api, ARTIFACTS[kind], folder, ids[kind], None)
    return ids

