"""The cards of the three published artifacts, rendered from the Jinja templates shipped
in ``templates/`` (package data) with ``DatasetCard`` / ``ModelCard.from_template``.

Each artifact has a template (``dataset_card.md``, ``embeddings_card.md``,
``model_card.md``) and a function here that fills it from a run: :func:`dataset_card`,
:func:`embeddings_card`, :func:`model_card`. A new artifact's card (the miniature prior's,
say) is one more template in ``templates/`` and one more such function, rendered with
:func:`render_card`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Optional

import jinja2
import jinja2.meta
import yaml
from datasets import DatasetDict
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from ..data.common import group_counts, group_names
from .run import NA, Run, SourceDataset, cross_links, nested

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
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
METRICS = (
    ("worst_group_accuracy", "worst_group_accuracy", "Worst-group accuracy"),
    ("average_accuracy", "accuracy", "Average accuracy"),
    ("weighted_average_accuracy", "weighted_average_accuracy", "Weighted average accuracy"),
)



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


def cards_dir() -> Path:
    """The folder of the card templates: ``dbb_hf/hub/templates/``, installed with the package."""
    return TEMPLATES_DIR


def render_card(card_class, card_data, template_name: str, **fields):
    """Render ``templates/<template_name>`` with ``fields``; every template variable must be given.

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
        entry = nested(run.report, "models", role)
        if not isinstance(entry, Mapping):
            resolved = _resolved(run, role)
            rows.append({"role": role, "id": entry or NA, "revision": resolved.get("revision") or NA,
                         "commit": resolved.get("commit") or resolved.get("digest") or NA})
            continue
        label = f"{role} ({entry['backend']})" if entry.get("backend") else role
        named = [key for key in MODEL_ID_KEYS if entry.get(key)]
        for key in named:
            resolved = _resolved(run, role if key == "id" else f"{role}_{key}")
            revision = resolved.get("revision") or entry.get("revision" if key == "id" else f"{key}_revision")
            rows.append({"role": label if key == "id" else f"{label} {key}", "id": entry[key], "revision": revision or NA,
                         "commit": resolved.get("commit") or resolved.get("digest") or NA})
        if not named:
            rows.append({"role": label, "id": NA, "revision": NA, "commit": NA})
    return rows


def _resolved(run: Run, role: str) -> dict:
    """The version the run's model ``role`` resolved to (``report.json``'s ``resolved_revisions``)."""
    return nested(run.report, "resolved_revisions", role) or {}


def _model_ref(run: Run, role: str) -> dict:
    """A model's id and the revision that loads exactly the run's version: its commit when recorded."""
    entry = nested(run.report, "models", role)
    if isinstance(entry, Mapping):
        revision = _resolved(run, role).get("commit") or entry.get("revision") or "main"
        return {"id": entry.get("id") or NA, "revision": revision}
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
            row[key] = _num(nested(entry, key))
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



def _base_model_text(run: Run, base_model: Optional[str]) -> str:
    if not base_model:
        return "random initialisation"
    commit = _resolved(run, "classifier").get("commit")
    return f"[{base_model}](https://huggingface.co/{base_model})" + (f" (commit `{commit}`)" if commit else "")


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
    for split, metrics in (("test", run.report["retrained"]), ("validation", nested(run.report, "validation", "retrained"))):
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
        ("validation", nested(report, "validation", "erm"), nested(report, "validation", "retrained")),
    ):
        if erm is None and retrained is None:
            continue
        for key, _, name in METRICS:
            rows.append({"metric": name, "split": split, "erm": _pct(nested(erm, key)), "retrained": _pct(nested(retrained, key))})
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
        "base_model_text": _base_model_text(run, base_model),
        "training_text": "Trained on real plus synthetic images"
        if nested(run.config, "run", "retrain_from_erm") is False
        else "First fine-tuned by plain ERM on the real training split (the ERM model below), then "
        "retrained from those weights on real plus synthetic images",
        "config_sections": _yaml_sections(run.config, MODEL_CONFIG_SECTIONS),
        "seed": run.config.get("seed", NA),
        "citation": CITATION,
    }



# The three cards -----------------------------------------------------------------------


def dataset_card(
    run: Run, dataset: DatasetDict, repo_id: str, links: Optional[Mapping], info: DatasetInfo
) -> DatasetCard:
    """The dataset repository's card; ``info`` describes the parquet shards written beside it."""
    links = cross_links(run, repo_id, "dataset", links)
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
    return render_card(DatasetCard, card_data, "dataset_card.md", **_dataset_card_fields(run, dataset, repo_id, links))


def embeddings_card(run: Run, tokens: list[dict], synthetic, repo_id: str, links: Optional[Mapping]) -> ModelCard:
    """The tokens repository's card; ``tokens`` as :func:`dbb_hf.hub.folders.read_tokens` gives them."""
    links = cross_links(run, repo_id, "embeddings", links)
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
    return render_card(ModelCard, card_data, "embeddings_card.md", **fields)


def model_card(run: Run, repo_id: str, links: Optional[Mapping], model_config: dict) -> ModelCard:
    """The classifier repository's card; ``model_config`` is the saved model's ``config.json``."""
    links = cross_links(run, repo_id, "model", links)
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
    return render_card(ModelCard, card_data, "model_card.md", **fields)
