"""Group metrics: the worst-group accuracy `evaluate` module shipped with dbb_hf, and helpers.

The module lives in its own folder so that `evaluate.load(METRIC_PATH)` loads it offline, as
it would load a metric from the Hub; the helpers here go through the same module so there
is one implementation of the arithmetic.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worst_group_accuracy")


def load_worst_group_accuracy(cache_dir: str | os.PathLike | None = None):
    """The worst-group accuracy `evaluate` module, loaded from the local folder (no network).

    It keeps its inputs in memory rather than in arrow files under ``cache_dir``; `evaluate`
    still creates ``cache_dir`` (default ``~/.cache/huggingface/metrics``) and copies the
    script into its modules cache (``HF_MODULES_CACHE``) to import it.
    """
    import evaluate  # slow to import; only needed here

    cache_dir = None if cache_dir is None else os.fspath(cache_dir)
    return evaluate.load(METRIC_PATH, keep_in_memory=True, cache_dir=cache_dir)


def _as_int_list(values, name: str) -> list[int]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array.astype(np.int64).tolist()


def group_metrics(
    predictions,
    references,
    groups,
    group_names: Sequence[str] | None = None,
    train_group_counts: Sequence[int] | Mapping | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Per-group accuracy, worst group, pooled and train-weighted averages (see the module).

    Inputs may be lists, numpy arrays or CPU tensors of ints.
    """
    columns = {
        "predictions": _as_int_list(predictions, "predictions"),
        "references": _as_int_list(references, "references"),
        "groups": _as_int_list(groups, "groups"),
    }
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"predictions, references and groups must have the same length, got {lengths}")
    metric = load_worst_group_accuracy(cache_dir)
    return metric.compute(**columns, group_names=group_names, train_group_counts=train_group_counts)


def format_group_table(metrics: dict) -> str:
    """A markdown table of a `group_metrics` result: one row per group, then the summaries."""
    rows = ["| group | n | accuracy |", "|---|---:|---:|"]
    for name, accuracy in metrics["per_group_accuracy"].items():
        shown = "absent" if accuracy is None else f"{accuracy:.4f}"
        rows.append(f"| {name} | {metrics['group_counts'][name]} | {shown} |")
    total = sum(metrics["group_counts"].values())
    worst = metrics["worst_group"]
    worst_n = metrics["group_counts"][worst]
    rows.append(f"| **worst group** ({worst}) | {worst_n} | {metrics['worst_group_accuracy']:.4f} |")
    rows.append(f"| **average** (pooled) | {total} | {metrics['average_accuracy']:.4f} |")
    # "n/a" when no evaluated group has training samples (or no training counts were given).
    rows.append(f"| **average** (weighted by training groups) | {total} | "
                f"{_four_places(metrics.get('weighted_average_accuracy'))} |")
    return "\n".join(rows)


def _four_places(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
