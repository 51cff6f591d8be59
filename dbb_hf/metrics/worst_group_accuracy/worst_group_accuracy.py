"""Worst-group accuracy: per-group accuracy, its minimum, and the averages reported beside it.

An `evaluate` module that loads from its folder with no network:
``evaluate.load("<path to>/worst_group_accuracy")``. It depends only on numpy, datasets and
evaluate, because `evaluate` copies this single file into its modules cache to import it.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{sagawa2020distributionally,
  title={Distributionally Robust Neural Networks for Group Shifts: On the Importance of Regularization for Worst-Case Generalization},
  author={Sagawa, Shiori and Koh, Pang Wei and Hashimoto, Tatsunori B. and Liang, Percy},
  booktitle={International Conference on Learning Representations},
  year={2020}
}
"""

_DESCRIPTION = """\
Accuracy of every group (a group is a (label, spurious attribute) pair), the worst of them,
the pooled average accuracy, and the average of group accuracies weighted by the groups'
proportions in the training set (how DFR and JTT report Waterbirds, whose test groups are
not distributed like its training groups). A group with no evaluation samples is reported
as absent (None), never as 0 or 1, and does not take part in the worst group.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class of each sample.
    references (`list` of `int`): true class of each sample.
    groups (`list` of `int`): group index of each sample, ``0 <= group < number of groups``.
    group_names (`list` of `str`, optional): names of the groups in index order. Defines the
        number of groups, so that groups with no samples are reported as absent. Default:
        groups ``0 .. max(groups)`` named ``"0"``, ``"1"``, ...
    train_group_counts (`list` of `int` or `dict`, optional): training samples per group, as
        a list in group order or a dict keyed by group index or group name (missing keys
        count 0). Enables ``weighted_average_accuracy``.
Returns:
    per_group_accuracy (`dict`): group name -> accuracy in [0, 1], or None for an absent group.
    group_counts (`dict`): group name -> number of evaluation samples.
    worst_group_accuracy (`float`): minimum accuracy over the groups present.
    worst_group (`str`): its name (the lowest group index on ties).
    average_accuracy (`float`): accuracy pooled over all samples.
    weighted_average_accuracy (`float` or None): ``sum_g p_train(g) * acc(g)`` where
        ``p_train(g) = n_train(g) / sum_h n_train(h)``, the sums running over the groups
        present in the evaluation data: when a group is absent there, the training
        proportions of the others are renormalised to sum to 1. None without
        ``train_group_counts``, and None when no group present in the evaluation data
        has training samples (splits with disjoint groups, e.g. MetaShift in the DISC
        setup): there is nothing to weight by.
Examples:
    >>> wga = evaluate.load("dbb_hf/metrics/worst_group_accuracy")
    >>> results = wga.compute(predictions=[0, 1, 1, 1], references=[0, 1, 0, 1], groups=[0, 1, 2, 3],
    ...                       group_names=["a", "b", "c", "d"])
    >>> results["worst_group"], results["worst_group_accuracy"], results["average_accuracy"]
    ('c', 0.0, 0.75)
"""


def _train_counts(train_group_counts, names):
    """Training counts as an array in group order, from a list or a dict (index or name keys)."""
    if isinstance(train_group_counts, dict):
        counts = np.zeros(len(names), dtype=np.float64)
        for key, value in train_group_counts.items():
            if isinstance(key, str) and key in names:
                index = names.index(key)
            elif isinstance(key, (int, np.integer)) and 0 <= key < len(names):
                index = int(key)
            else:
                raise ValueError(
                    f"train_group_counts has key {key!r}, which is neither a group name {names} nor a group index"
                )
            counts[index] = value
    else:
        counts = np.asarray(list(train_group_counts), dtype=np.float64)
        if counts.shape != (len(names),):
            raise ValueError(f"train_group_counts has {counts.size} entries but there are {len(names)} groups")
    if (counts < 0).any():
        raise ValueError(f"train_group_counts must not be negative, got {counts.tolist()}")
    return counts


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WorstGroupAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "groups": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1911.08731", "https://arxiv.org/abs/2204.02937"],
        )

    def _compute(self, predictions, references, groups, group_names=None, train_group_counts=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        groups = np.asarray(groups, dtype=np.int64)
        if not len(predictions) == len(references) == len(groups):
            raise ValueError(
                f"predictions ({len(predictions)}), references ({len(references)}) and groups ({len(groups)}) "
                "must have the same length"
            )
        if len(groups) == 0:
            raise ValueError("no samples to evaluate: predictions, references and groups are empty")
        if groups.min() < 0:
            raise ValueError(f"group indices must be >= 0, got {int(groups.min())}")
        if group_names is None:
            names = [str(g) for g in range(int(groups.max()) + 1)]
        else:
            names = [str(name) for name in group_names]
            if len(set(names)) != len(names):
                raise ValueError(f"group_names must be distinct, got {names}")
            if groups.max() >= len(names):
                raise ValueError(f"group index {int(groups.max())} is out of range for {len(names)} group_names")

        correct = predictions == references
        counts = np.bincount(groups, minlength=len(names))
        hits = np.bincount(groups, weights=correct, minlength=len(names))
        present = counts > 0
        accuracy = np.divide(hits, counts, out=np.zeros(len(names)), where=present)

        worst = int(np.flatnonzero(present)[np.argmin(accuracy[present])])
        weighted = None
        if train_group_counts is not None:
            weights = _train_counts(train_group_counts, names) * present
            # No evaluated group was seen in training (MetaShift's test groups in the DISC
            # setup, any dataset whose splits have disjoint groups): there is nothing to
            # weight by, so the average is absent, as an empty group's accuracy is.
            if weights.sum() > 0:
                weighted = float((weights * accuracy).sum() / weights.sum())

        return {
            "per_group_accuracy": {
                name: float(accuracy[g]) if present[g] else None for g, name in enumerate(names)
            },
            "group_counts": {name: int(counts[g]) for g, name in enumerate(names)},
            "worst_group_accuracy": float(accuracy[worst]),
            "worst_group": names[worst],
            "average_accuracy": float(correct.mean()),
            "weighted_average_accuracy": weighted,
        }
