"""What a pipeline run checks before its first stage, so that bad input fails in seconds.

A run trains ERM for an hour before it selects, learns tokens, masks, generates and
prunes. A label outside the class list, a per-class setting of the wrong length, a
classifier or augmented dataset made for other classes, a source column kept under the
name of one a later stage writes, or a model id of a later stage that cannot be reached
would otherwise stop it hours in. Everything here reads only
configs, dataset columns and small files (model configs); no model is loaded.
"""

from __future__ import annotations

from typing import Mapping, Optional

from datasets import ClassLabel, DatasetDict, Image

from .checks import check_class_names, check_classes_present, check_labelled, require_columns
from .data.common import DatasetFormatError
from .hub_access import check_reachable
from .pruning import thresholds_per_class


def resolve_class_prompts(names: list[str], class_prompts: Optional[list[str]]) -> list[str]:
    """The word(s) naming each class's object: ``class_prompts`` (one per class), else the class names."""
    prompts = class_prompts or [n.replace("_", " ") for n in names]
    if len(prompts) != len(names):
        raise ValueError(
            f"class_prompts has {len(prompts)} entries {list(prompts)} but the dataset has {len(names)} classes "
            f"{list(names)}; give one word per class, in class order"
        )
    return list(prompts)


def check_dataset(dataset: DatasetDict, *, generating: bool) -> list[str]:
    """Labels in range and one class list in every split; with ``generating``, every class in train."""
    names = dataset["train"].features["label"].names
    for split, ds in dataset.items():
        labels = ["label"] + (["spurious"] if isinstance(ds.features.get("spurious"), ClassLabel) else [])
        check_labelled(ds, what="the dataset", split=split, labels=labels, required=["image"])
        check_class_names(names, ds.features["label"].names, expected_what="the dataset's train split",
                          actual_what=f"its {split} split")
    if generating:
        # Selection, Psi (Eq. 3) and the class's token all need images of every class.
        check_classes_present(dataset["train"], what="the dataset", split="train")
    return names


def check_per_class_settings(run, configs: Mapping, names: list[str]) -> None:
    """Settings given per class (prompts, counts, thresholds, gammas) have one value per class."""
    resolve_class_prompts(names, run.class_prompts)
    selection = configs["selection"]
    counts = selection.lowest_loss_values
    if len(counts) not in (1, len(names)):
        raise ValueError(f"selection lowest_loss has {len(counts)} values {counts} but the dataset has "
                         f"{len(names)} classes {names}")
    if selection.ti_validation_groups is not None and len(selection.ti_validation_groups) != len(names):
        raise ValueError(f"selection ti_validation_groups has {len(selection.ti_validation_groups)} ids but the "
                         f"dataset has {len(names)} classes {names}")
    thresholds_per_class(configs["pruning"].P, len(names))
    configs["textual_inversion"].check_classes(names)
    gammas = configs["retraining"].gammas
    if gammas is not None and len(gammas) != len(names):
        raise ValueError(f"retraining gammas has {len(gammas)} values {gammas} but the dataset has "
                         f"{len(names)} classes {names}")


def check_selection(configs: Mapping, names: list[str]) -> None:
    """The selection can hold a row: two classes at least, and a lowest-loss budget above 0
    for some class (every selected image is edited into another class)."""
    if len(names) < 2:
        raise ValueError(
            f"the dataset has one class {names}: the method edits images of one class into another, so it "
            "needs at least two (check the label column, or the split that was loaded)"
        )
    budgets = configs["selection"].lowest_loss_values
    if not any(budgets):
        raise ValueError(
            f"selection lowest_loss is {configs['selection'].lowest_loss!r}: no image of any class would be "
            "selected for editing, so there would be nothing to generate; give a count or fraction above 0 "
            "for at least one class"
        )


def check_textual_inversion_source(configs: Mapping, dataset: DatasetDict) -> None:
    """With ``ti_source=validation_group``: validation groups exist, and the given ones fit their classes."""
    from .selection import check_ti_validation_groups

    selection = configs["selection"]
    if selection.ti_source != "validation_group":
        return
    validation = dataset["validation"]
    require_columns(validation, ["group"], "ti_source='validation_group' (the validation split)",
                    hint="; it needs group labels, or use ti_source=train_high_loss")
    if selection.ti_validation_groups is not None:
        check_ti_validation_groups(validation, selection)


def check_mask_column(configs: Mapping, dataset: DatasetDict) -> None:
    """The ``column`` masking backend's column is an image column of the train split.

    The pipeline keeps a dataset's own ``mask`` as ``source_mask`` (masking writes ``mask``),
    so either name refers to it.
    """
    masking = configs["masking"]
    if masking.backend != "column":
        return
    features = dict(dataset["train"].features)
    if "mask" in features:
        features.setdefault("source_mask", features["mask"])
    if masking.mask_column not in features:
        raise DatasetFormatError(
            f"masking backend 'column' reads masks from column {masking.mask_column!r} "
            f"(--masking_mask_column), which the train split does not have; it has {list(dataset['train'].column_names)}"
        )
    if not isinstance(features[masking.mask_column], Image):
        raise DatasetFormatError(
            f"masking column {masking.mask_column!r} holds {features[masking.mask_column]}, not images (an Image feature)"
        )


def stage_columns(configs: Mapping, columns) -> dict[str, str]:
    """``{column: the stage that writes it}`` for a run that generates (docs/stages.md, "adds"),
    read from the stages' own output features. ``columns`` are the dataset's: its own ``mask``
    is kept as ``source_mask`` before masking writes ``mask`` (unless masking copies it)."""
    from .augmented import PROVENANCE_COLUMNS
    from .inpainting import inpainting_features
    from .masking import MASK_FEATURES
    from .pruning import SCORE_FEATURES, VERDICT_FEATURES
    from .selection import ERM_FEATURES

    masking = configs["masking"]
    renames_mask = "mask" in columns and not masking.copies_mask_column()
    written = {
        "scores (dbb_hf.selection)": list(ERM_FEATURES),
        "selection (dbb_hf.selection)": ["target_label"],
        "masks (dbb_hf.masking)": [c for c in MASK_FEATURES if c != "mask"] + (["source_mask"] if renames_mask else []),
        "generation (dbb_hf.inpainting)": list(inpainting_features(configs["inpainting"].backend)),
        "pruning (dbb_hf.pruning)": [*SCORE_FEATURES, *VERDICT_FEATURES],
        "augmented (dbb_hf.augmented)": list(PROVENANCE_COLUMNS),
    }
    return {column: stage for stage, names in written.items() for column in names}


def check_stage_columns(configs: Mapping, dataset: DatasetDict) -> None:
    """No column of the dataset (one a loader kept, ``keep_columns``) has the name of a column a
    later stage writes: that stage would fail hours in, or overwrite the user's values."""
    columns = {c for ds in dataset.values() for c in ds.column_names}
    writers = stage_columns(configs, columns)
    clashes = sorted(c for c in columns if c in writers)
    if clashes:
        named = "; ".join(f"{c!r} is written by the {writers[c]} stage" for c in clashes)
        raise DatasetFormatError(
            f"the dataset has column(s) {clashes} that a later stage writes: {named}. Rename the source "
            "column(s), or leave them out of the loader's keep_columns"
        )


def check_models(configs: Mapping) -> None:
    """The models of the later stages exist (folder, or Hub id at its revision, or in the cache)."""
    inpainting, masking = configs["inpainting"], configs["masking"]
    if inpainting.backend == "diffusers":
        ti = configs["textual_inversion"]
        check_reachable(ti.model_id, ti.revision, "textual-inversion model (textual_inversion.model_id)",
                        "unet/config.json")
        check_reachable(inpainting.model_id, inpainting.revision, "inpainting model (inpainting.model_id)",
                        "model_index.json")
    if masking.backend == "grounded_sam":
        check_reachable(masking.detector_id, masking.detector_revision, "masking detector (masking.detector_id)",
                        "config.json")
        check_reachable(masking.segmenter_id, masking.segmenter_revision,
                        "masking segmenter (masking.segmenter_id)", "config.json")


def preflight(run, configs: Mapping, dataset: DatasetDict) -> Optional[DatasetDict]:
    """Run every check of a run's settings (its ``RunConfig`` and section ``configs``) against ``dataset``.

    Returns the run's given augmented dataset (loaded once, here), if any.
    """
    from .augmented import load_augmented
    from .modeling import saved_label_names

    names = check_dataset(dataset, generating=not run.augmented_dataset)
    if run.erm_model:
        model_names = saved_label_names(run.erm_model)
        if model_names is not None:
            check_class_names(names, model_names, expected_what="the dataset",
                              actual_what=f"the classifier --erm_model {run.erm_model!r} (label_names)")
    check_per_class_settings(run, configs, names)
    if not run.augmented_dataset:
        check_selection(configs, names)
        check_stage_columns(configs, dataset)
        check_mask_column(configs, dataset)
        if configs["inpainting"].backend == "diffusers":
            check_textual_inversion_source(configs, dataset)
    if run.augmented_dataset:
        augmented = load_augmented(run.augmented_dataset)
        check_class_names(names, augmented["train"].features["label"].names, expected_what="the dataset",
                          actual_what=f"the augmented dataset {run.augmented_dataset!r}")
        return augmented
    check_models(configs)
    return None
