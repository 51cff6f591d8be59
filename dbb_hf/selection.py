"""Stage 1: score every training image with the ERM classifier and pick the images to edit.

Per-image ERM losses rank each class (paper Algorithm 2, lines 7-8): the lowest-loss
images of class i are the likely majority group, the ones whose spurious features the
edits keep while their object is replaced by class i'. The textual-inversion images of a
class are likely-minority images: its highest-loss training images, or the validation
images of one group when validation group labels are used. Training group labels are
never used, except to report how pure a selection is (paper Table 4).

The authors' release ranks by the mean loss of each batch (every image of a batch gets
the same number); here every image gets its own cross-entropy.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Value, concatenate_datasets
from datasets import Sequence as SequenceFeature

from .checks import check_classifier_classes, check_label_values, require_columns
from .data.common import group_names
from .modeling import data_config, eval_transform, model_fingerprint
from .images import to_rgb
from .stages import ImageGuard, apply_stage

ERM_FEATURES = {"erm_loss": Value("float32"), "erm_probs": SequenceFeature(Value("float32"))}
TI_SOURCES = ("train_high_loss", "validation_group")


def _parse_budget(token) -> int | float:
    """One class's budget: an int >= 0 is a count, a float in [0, 1] a fraction of the class."""
    if isinstance(token, str):
        text = token.strip()
        if text.isdigit():
            return int(text)
        try:
            token = float(text)
        except ValueError:
            raise ValueError(f"lowest_loss value {text!r} is neither a count nor a fraction") from None
    if isinstance(token, (bool, np.bool_)):
        raise ValueError(f"lowest_loss value {token!r} is neither a count nor a fraction")
    if isinstance(token, (int, np.integer)):
        if token < 0:
            raise ValueError(f"lowest_loss count must be >= 0, got {token}")
        return int(token)
    token = float(token)
    if not 0.0 <= token <= 1.0:
        raise ValueError(
            f"lowest_loss fraction must be in [0, 1], got {token}; write a count as an integer (e.g. 2000)"
        )
    return token


@dataclass
class SelectionConfig:
    lowest_loss: str = field(
        default="0.5",
        metadata={
            "help": "Lowest-loss images to edit per class: a fraction of the class written with a decimal point "
            "('0.5', '1.0' = all) or a count written as an integer ('2000'); one value for every class or a "
            "comma-separated value per class ('12000,2000'). A fraction is rounded half up, at least 1."
        },
    )
    ti_num_images: int = field(default=30, metadata={"help": "Textual-inversion images per class (paper: 20-40)."})
    ti_source: Literal["train_high_loss", "validation_group"] = field(
        default="train_high_loss",
        metadata={
            "help": "Where the textual-inversion images come from: the highest-loss training images of each "
            "class (no group labels needed), or one validation group per class (needs validation groups)."
        },
    )
    ti_validation_groups: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "With ti_source=validation_group: the validation group id to use for each class, in class "
            "order. Default: for each class, its validation group with the highest mean ERM loss."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random draw of validation-group images."})

    def __post_init__(self):
        values = self.lowest_loss
        if isinstance(values, str):
            values = [v for v in values.split(",")]
        elif not isinstance(values, (list, tuple)):
            values = [values]
        if not values or any(isinstance(v, str) and not v.strip() for v in values):
            raise ValueError(f"lowest_loss has an empty value: {self.lowest_loss!r}")
        parsed = [_parse_budget(v) for v in values]
        # Canonical text: the same choice always reads (and fingerprints) the same way.
        self.lowest_loss = ",".join(repr(v) for v in parsed)
        if self.ti_num_images < 1:
            raise ValueError(f"ti_num_images must be at least 1, got {self.ti_num_images}")
        if self.ti_source not in TI_SOURCES:
            raise ValueError(f"ti_source must be one of {TI_SOURCES}, got {self.ti_source!r}")
        if self.ti_validation_groups is not None:
            self.ti_validation_groups = [int(g) for g in self.ti_validation_groups]
            if any(g < 0 for g in self.ti_validation_groups):
                raise ValueError(f"ti_validation_groups must be group ids >= 0, got {self.ti_validation_groups}")

    def textual_inversion_fields(self) -> dict:
        """The fields :func:`select_textual_inversion` reads: not ``lowest_loss``, so that a sweep of
        the lowest-loss budget (the paper tunes it) keeps the tokens already learned."""
        return {name: getattr(self, name) for name in ("ti_num_images", "ti_source", "ti_validation_groups", "seed")}

    @property
    def lowest_loss_values(self) -> list[int | float]:
        """The per-class budgets: ints are counts, floats fractions (one value = every class)."""
        return [_parse_budget(v) for v in self.lowest_loss.split(",")]


def score_batch(batch: dict, *, model: torch.nn.Module, transform, device) -> dict:
    """Per-image ERM cross-entropy and softmax probabilities of a batch of `image`, `label`."""
    if model.training:
        raise ValueError("score_batch needs the model in eval mode (model.eval()): dropout and batch-norm "
                         "batch statistics would make each image's loss depend on its batch")
    pixels = torch.stack([
        transform(to_rgb(image)) for image in batch["image"]
    ]).to(device)
    labels = torch.as_tensor(batch["label"], dtype=torch.long, device=device)
    with torch.inference_mode():
        logits = model(pixels).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        probs = logits.softmax(dim=-1)
    return {"erm_loss": losses.cpu().tolist(), "erm_probs": probs.cpu().tolist()}


def score_dataset(
    dataset: Dataset,
    model: torch.nn.Module,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    model_id: str | None = None,
    processes=None,
) -> Dataset:
    """Add `erm_loss` (float32) and `erm_probs` (list of float32) to every row of ``dataset``.

    The model is put in eval mode (and moved to ``device`` when given; default: where it
    is). ``model_id`` names the weights in the cache fingerprint, e.g. the checkpoint
    folder plus its safetensors hash; default: :func:`model_fingerprint`. With
    ``cache_dir`` a rerun with the same dataset and weights loads the saved scores.
    ``processes`` (Accelerate's ``PartialState`` of an ``accelerate launch`` run): every
    process scores a contiguous share of the rows and all of them get every row's scores.
    """
    require_columns(dataset, ["image", "label"], "score_dataset")
    if not isinstance(dataset.features["label"], ClassLabel):
        raise ValueError(f"score_dataset needs `label` to be a ClassLabel, got {dataset.features['label']}")
    check_label_values(dataset, "label", what="score_dataset")
    check_classifier_classes(model, dataset.features["label"].names, what="score_dataset")
    if device is not None:
        model.to(device)
    model.eval()
    device = next(model.parameters()).device
    if processes is not None and processes.num_processes > 1:
        return _score_shared(dataset, processes, batch_size=batch_size, device=device, cache_dir=cache_dir,
                             model_id=model_id or model_fingerprint(model), model=model)
    return apply_stage(
        dataset,
        score_batch,
        stage="erm_scoring",
        config={"data_config": data_config(model)},
        new_features=ERM_FEATURES,
        fn_kwargs={"model": model, "transform": eval_transform(model), "device": device},
        batch_size=batch_size,
        fingerprint_parts=[model_id or model_fingerprint(model)],
        cache_dir=cache_dir,
        desc="ERM scoring",
        # Scores feed Psi and the selection: an unreadable image is an error naming its row
        # (the loaders' image check finds them all before training), not a silent gap.
        guard=ImageGuard(columns=("image",)),
    )


def _score_shared(dataset: Dataset, processes, *, model, **scoring) -> Dataset:
    """:func:`score_dataset` with the rows split between processes and the scores gathered."""
    from accelerate.utils import gather_object

    with processes.split_between_processes(list(range(len(dataset)))) as mine:
        share = score_dataset(dataset.select(mine), model, **scoring)
    # One list per process, in process order: the contiguous shares join back in row order.
    gathered = gather_object([share.select_columns(list(ERM_FEATURES)).to_dict()])
    columns = {name: [value for part in gathered for value in part[name]] for name in ERM_FEATURES}
    return concatenate_datasets([dataset, Dataset.from_dict(columns, features=Features(ERM_FEATURES))], axis=1)


def _class_budget(value: int | float, class_size: int, class_name: str) -> int:
    if isinstance(value, float):
        return 0 if value == 0 else max(1, int(value * class_size + 0.5))
    if value > class_size:
        warnings.warn(
            f"lowest_loss asks for {value} images of class {class_name!r}, which has {class_size}: taking all of them",
            stacklevel=3,
        )
        return class_size
    return value


def _ranked_members(labels: np.ndarray, losses: np.ndarray, ids: list[str], label: int, *, highest: bool) -> list[int]:
    """Row indices of class ``label`` with a finite loss, by loss (ascending, or descending), ties by example_id."""
    members = np.flatnonzero((labels == label) & np.isfinite(losses)).tolist()
    sign = -1.0 if highest else 1.0
    return sorted(members, key=lambda i: (sign * losses[i], ids[i]))


def _scores(dataset: Dataset, what: str):
    require_columns(dataset, ["label", "erm_loss", "example_id"], what, hint="; score it first with score_dataset")
    if not isinstance(dataset.features["label"], ClassLabel):
        raise ValueError(f"{what} needs `label` to be a ClassLabel, got {dataset.features['label']}")
    check_label_values(dataset, "label", what=what)
    losses = np.asarray(dataset["erm_loss"], dtype=np.float64)
    ids = list(dataset["example_id"])
    nonfinite = np.flatnonzero(~np.isfinite(losses))
    if len(nonfinite):
        # One image the classifier cannot score (NaN / inf logits) must not stop the run:
        # it is left out of every ranking, and said so.
        warnings.warn(
            f"{what}: erm_loss is NaN or infinite for {len(nonfinite)} row(s), which are left out of the "
            f"selection (reason: non-finite ERM loss), e.g. example_id {[ids[i] for i in nonfinite[:5]]}",
            stacklevel=3,
        )
    return np.asarray(dataset["label"]), losses, ids


def select_lowest_loss(scored_train: Dataset, config: SelectionConfig, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """The K_i lowest-loss images of each class i, each with the `target_label` to edit it into.

    Rows keep all their columns and come class by class, by ascending loss (ties broken by
    `example_id`). With two classes the target is the other class. With more, an image
    gets one row per other class, so every class receives edits from every other class's
    majority; rows of one image are adjacent. A count larger than the class takes the
    whole class (with a warning). The selected rows are written once, by ``add_column``, to a
    cache file beside the input's files, or in ``cache_dir`` when given (the pipeline's stage
    folder, replaced by the saved stage: no second copy of those images is left behind).
    """
    labels, losses, ids = _scores(scored_train, "select_lowest_loss")
    names = scored_train.features["label"].names
    values = config.lowest_loss_values
    if len(values) == 1:
        values = values * len(names)
    if len(values) != len(names):
        raise ValueError(
            f"lowest_loss has {len(values)} values ({config.lowest_loss}) but there are {len(names)} classes {names}"
        )
    rows, targets = [], []
    for label, name in enumerate(names):
        ranked = _ranked_members(labels, losses, ids, label, highest=False)
        if values[label] and not ranked:
            raise ValueError(
                f"class {name!r} has no images with a finite erm_loss in the training split "
                f"({int((labels == label).sum())} rows of that class): cannot select its lowest-loss images"
            )
        budget = _class_budget(values[label], len(ranked), name)
        others = [other for other in range(len(names)) if other != label]
        for index in ranked[:budget]:
            rows += [index] * len(others)
            targets += others
    selected = scored_train.select(rows)
    if cache_dir is not None:
        path = os.path.join(os.fspath(cache_dir), "selected.arrow")
        if os.path.exists(path):  # left by a run stopped before its stage was saved: maybe another selection
            os.remove(path)
        selected = selected.flatten_indices(cache_file_name=path)
    return selected.add_column("target_label", targets, feature=ClassLabel(names=names))


def check_ti_validation_groups(validation: Dataset, config: SelectionConfig) -> None:
    """Each class's ``ti_validation_groups`` id names a validation group of that class only."""
    require_columns(validation, ["label", "group"], "ti_source='validation_group'")
    labels = np.asarray(validation["label"])
    groups = np.asarray(validation["group"])
    names = validation.features["label"].names
    if len(config.ti_validation_groups) != len(names):
        raise ValueError(
            f"ti_validation_groups has {len(config.ti_validation_groups)} ids "
            f"but there are {len(names)} classes {names}"
        )
    for label, group in enumerate(config.ti_validation_groups):
        group_labels = set(labels[groups == group].tolist())
        if not group_labels:
            raise ValueError(f"validation group {group} (for class {names[label]!r}) has no images")
        if group_labels != {label}:
            raise ValueError(
                f"validation group {group} holds class(es) {sorted(group_labels)}, not class {label} ({names[label]!r})"
            )


def _validation_group_of_class(validation: Dataset, label: int, config: SelectionConfig) -> int:
    """The validation group to learn class ``label``'s token from (see SelectionConfig)."""
    labels = np.asarray(validation["label"])
    groups = np.asarray(validation["group"])
    names = validation.features["label"].names
    if config.ti_validation_groups is not None:
        check_ti_validation_groups(validation, config)
        return config.ti_validation_groups[label]
    require_columns(
        validation, ["erm_loss"], "choosing the validation group automatically",
        hint="; score the validation split with score_dataset, or set ti_validation_groups",
    )
    losses = np.asarray(validation["erm_loss"], dtype=np.float64)
    candidates = sorted(set(groups[labels == label].tolist()))
    if not candidates:
        raise ValueError(f"class {names[label]!r} has no validation images")
    # The group the ERM model fails most on is the class's minority: its images show the
    # object without the spurious features the ERM model relies on.
    # Non-finite losses (images the classifier cannot score) are left out of the means.
    finite = np.isfinite(losses)
    mean_loss = {
        g: losses[(groups == g) & (labels == label) & finite].mean() if ((groups == g) & (labels == label) & finite).any()
        else -np.inf
        for g in candidates
    }
    return max(candidates, key=lambda g: (mean_loss[g], -g))


def select_textual_inversion(scored_train: Dataset, validation: Dataset | None, config: SelectionConfig) -> Dataset:
    """``config.ti_num_images`` likely-minority images per class for textual inversion.

    ``train_high_loss``: the highest-loss training images of each class (ties by
    `example_id`). ``validation_group``: a seeded random draw from one validation group per
    class, the group given in ``ti_validation_groups`` or else the class's group with the
    highest mean ERM loss on validation (which needs `erm_loss` on ``validation``), i.e.
    the group the ERM model has not learned. Rows keep all columns, class by class.
    """
    names = scored_train.features["label"].names
    rows = []
    if config.ti_source == "train_high_loss":
        source = scored_train
        labels, losses, ids = _scores(scored_train, "select_textual_inversion")
        for label, name in enumerate(names):
            ranked = _ranked_members(labels, losses, ids, label, highest=True)
            if not ranked:
                raise ValueError(
                    f"class {name!r} has no training images with a finite erm_loss "
                    f"({int((labels == label).sum())} rows of that class): no images to learn its token from"
                )
            rows += _take(ranked, config.ti_num_images, f"class {name!r}")
    else:
        if validation is None:
            raise ValueError("ti_source='validation_group' needs the validation split")
        require_columns(validation, ["label", "group"], "ti_source='validation_group'")
        if validation.features["label"].names != names:
            raise ValueError(
                f"validation classes {validation.features['label'].names} differ from training classes {names}"
            )
        source = validation
        groups = np.asarray(validation["group"])
        for label, name in enumerate(names):
            group = _validation_group_of_class(validation, label, config)
            members = np.flatnonzero(groups == group)
            rng = np.random.default_rng([config.seed, label])
            drawn = rng.permutation(members).tolist()
            rows += sorted(_take(drawn, config.ti_num_images, f"validation group {group} of class {name!r}"))
    return source.select(rows)


def _take(ranked: list[int], count: int, what: str) -> list[int]:
    if len(ranked) < count:
        warnings.warn(f"{what} has {len(ranked)} images, fewer than the {count} asked for: taking all", stacklevel=3)
    return ranked[:count]


def selection_purity(selected: Dataset, train: Dataset) -> dict:
    """How many selected images per class belong to the class's majority group (paper Table 4).

    Needs group labels (`group`) on both datasets; only for reporting, the method never
    uses training group labels. The majority group of a class is its most frequent group in
    ``train`` (lowest id on ties). Each image counts once, however many target rows it has.
    Returns ``{class name: {"selected", "majority_group", "majority_selected", "purity",
    "train_majority_fraction"}}``, where ``purity`` is None when nothing was selected.
    """
    for dataset, what in ((selected, "the selection"), (train, "the training set")):
        require_columns(dataset, ["label", "group", "example_id"], f"selection_purity ({what})",
                        hint="; purity can only be measured where group labels are known")
    features = train.features
    names = group_names(features) if isinstance(features.get("spurious"), ClassLabel) else None
    train_labels = np.asarray(train["label"])
    train_groups = np.asarray(train["group"])
    picked = dict(zip(selected["example_id"], zip(selected["label"], selected["group"])))
    report = {}
    for label, class_name in enumerate(features["label"].names):
        class_groups = Counter(train_groups[train_labels == label].tolist())
        chosen = [group for source_label, group in picked.values() if source_label == label]
        if not class_groups:
            report[class_name] = {"selected": len(chosen), "majority_group": None, "majority_selected": None,
                                  "purity": None, "train_majority_fraction": None}
            continue
        majority, majority_count = min(class_groups.items(), key=lambda item: (-item[1], item[0]))
        hits = sum(group == majority for group in chosen)
        report[class_name] = {
            "selected": len(chosen),
            "majority_group": str(majority) if names is None else names[majority],
            "majority_selected": int(hits),
            "purity": hits / len(chosen) if chosen else None,
            "train_majority_fraction": majority_count / sum(class_groups.values()),
        }
    return report
