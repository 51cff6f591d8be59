"""The whole method end to end, resumable: ERM, selection, causal tokens, masks,
generation, pruning, upweighted retraining and evaluation.

Each stage saves its output under ``output_dir/<stage>/`` together with a fingerprint of
everything it depends on (its config, the upstream stages' fingerprints, the data
config); a rerun reuses every stage whose fingerprint matches and redoes the rest. The
long stages (masks, generation, pruning) write their output shard by shard, so a run
killed in the middle resumes without redoing finished shards; training resumes from its
epoch checkpoints. Under ``accelerate launch`` the sharded stages, the ERM scoring, the
evaluation and training are split across processes; the other stages (loading and checking
the data, selection, the report) run on the main process while the others wait for its
saved result (``run.process_group_timeout`` bounds that wait).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from datasets import Dataset, DatasetDict

from . import __version__
from .augmented import FORMAT_VERSION as AUGMENTED_FORMAT, REAL_SPLITS, build_augmented, thresholds, with_real_splits
from .config import DataConfig, to_yaml
from .devices import release_memory, resolve_device
from .images import keep_rows
from .inpainting import InpaintingConfig, inpainting_features, load_inpainting_pipeline, prepare_donors, run_inpainting
from .masking import MASK_FEATURES, MaskingConfig, keep_source_mask, load_masking_models, run_masking
from .modeling import ClassifierConfig, load_classifier
from .precision import resolve_sections
from .processes import DEFAULT_TIMEOUT_S, process_state
from .preflight import preflight, resolve_class_prompts
from .pruning import SCORE_FEATURES, VERDICT_FEATURES, PruningConfig, apply_thresholds, class_confidence, score_edits
from .revisions import folder_digest, pin, resolve_run
from .run_lock import run_folder_lock
from .selection import ERM_FEATURES, SelectionConfig, score_dataset, select_lowest_loss, select_textual_inversion, selection_purity
from .accounting import account_stage, outcome_counts
from .stage_info import STAGE_INFO, saved_fingerprint
from .stages import (
    JOINED_TO, ShardPlan, finish_interrupted_save, join_stage_columns, load_stage_output, row_keys,
    save_stage_output, source_signature, stage_columns, stage_fingerprint, write_text_atomic,
)
from .textual_inversion import TextualInversionConfig, learn_tokens, load_tokens
from .textual_inversion.data import template_record
from .training import TrainingConfig, evaluate_models, train_classifier



@dataclass
class RunConfig:
    output_dir: str = field(default="runs/dbb", metadata={"help": "Run folder: every stage's output goes under it."})
    class_prompts: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Word(s) naming each class's causal object in prompts and for masking "
                  "(Waterbirds: bird bird; CelebA: hair hair); default: the class names."},
    )
    erm_model: Optional[str] = field(default=None, metadata={"help": "A trained ERM classifier folder: skip ERM training."})
    augmented_dataset: Optional[str] = field(
        default=None, metadata={"help": "A published augmented dataset (Hub id or folder): skip generation."}
    )
    retrain_from_erm: bool = field(
        default=True, metadata={"help": "Retraining continues from the ERM weights (Algorithm 2) rather than the initial ones."}
    )
    shard_size: int = field(default=64, metadata={"help": "Rows per saved shard of the long stages (the unit of resuming)."})
    device: Optional[str] = field(default=None, metadata={"help": "Torch device; default: this process's accelerator device."})
    num_grid_examples: int = field(default=12, metadata={"help": "Edits shown in the report's picture grid."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the augmented dataset, tokens and model at the end."})
    hub_namespace: Optional[str] = field(default=None, metadata={"help": "Hub user or organisation to push to."})
    hub_private: bool = field(default=False, metadata={"help": "Create private Hub repositories."})
    process_group_timeout: int = field(
        default=DEFAULT_TIMEOUT_S,
        metadata={"help": "Seconds a process of an `accelerate launch` run waits for the others at a barrier "
                  "(torch's default is 10 minutes for NCCL): while the main process loads and checks a "
                  "CelebA-size dataset, writes the report or pushes to the Hub, the others wait."},
    )

    def result_settings(self) -> dict:
        """The settings a run's results depend on; the others only place, show or publish them
        (output folder, shard size, device, picture grid, Hub, timeouts)."""
        return {name: getattr(self, name) for name in ("class_prompts", "erm_model", "augmented_dataset", "retrain_from_erm")}

    def __post_init__(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.process_group_timeout < 1:
            raise ValueError(f"process_group_timeout must be at least 1 second, got {self.process_group_timeout}")
        if self.push_to_hub and not self.hub_namespace:
            raise ValueError("push_to_hub needs hub_namespace")


SECTIONS = {
    "classifier": ClassifierConfig,
    "erm": TrainingConfig,
    "selection": SelectionConfig,
    "textual_inversion": TextualInversionConfig,
    "masking": MaskingConfig,
    "inpainting": InpaintingConfig,
    "pruning": PruningConfig,
    "retraining": TrainingConfig,
}
STAGES = ("erm", "scores", "selection", "tokens", "masks", "generation", "pruning", "augmented", "retrained", "report")


class Pipeline:
    """Runs the stages in order, reusing every finished stage whose fingerprint matches."""

    def __init__(self, data: DataConfig, run: RunConfig, configs: dict):
        missing = sorted(set(SECTIONS) - set(configs))
        if missing:
            raise ValueError(f"missing config sections {missing}")
        # One precision policy per run: a stage left at "launcher" gets the launcher's
        # precision here, so config.yaml and the fingerprints say what each stage ran in.
        self.data, self.run, self.configs = data, run, resolve_sections(configs)
        self.given_configs = self.configs  # self.configs gets each Hub model's commit (revisions.pin)
        self.revisions: dict[str, dict] = {}
        self.out = Path(run.output_dir)
        self.state = process_state(run.process_group_timeout)
        self.device = str(resolve_device(run.device or self.state.device))
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []

    # ------------------------------------------------------------------ bookkeeping

    def _cached(self, stage: str, fingerprint: str, compute, *, main_only: bool = False, info: dict | None = None):
        """The saved output of ``stage`` if its fingerprint matches, else ``compute(stage_dir)`` saved
        once, by the main process, and read back by every process. ``main_only``: only the
        main process computes; the others wait and read what it saved. ``info`` joins ``stage.json``."""
        stage_dir = self.out / stage
        start = time.perf_counter()
        if self.state.is_main_process:
            finish_interrupted_save(stage_dir)
        self.state.wait_for_everyone()
        found = load_stage_output(stage_dir, fingerprint)
        if found is not None:
            self.reused.append(stage)
            self.timings[stage] = time.perf_counter() - start
            return found
        stage_dir.mkdir(parents=True, exist_ok=True)
        result = compute(stage_dir) if self.state.is_main_process or not main_only else None
        if self.state.is_main_process:
            save_stage_output(stage_dir, result, fingerprint, {**(info or {}), "seconds": time.perf_counter() - start})
        del result
        release_memory(self.device)  # the stage's models go before the next stage loads its own
        self.state.wait_for_everyone()
        self.timings[stage] = time.perf_counter() - start
        return load_stage_output(stage_dir, fingerprint)

    def _cached_columns(self, stage: str, fingerprint: str, dataset: Dataset, compute, written, *,
                        source: str, split: str | None = None, renamed: dict | None = None) -> Dataset:
        """``compute(stage_dir)``: ``dataset`` with the stage's ``written`` columns joined (its new
        columns, and any input column it replaces), rows in order; cached like :meth:`_cached`.

        The stage folder keeps only the ``written`` columns and the row keys (``example_id``,
        and ``target_label`` where rows are per (image, target)), which must be ``dataset``'s
        when read back; the rest is ``dataset`` itself, joined back without copying, so no
        stage writes its input's images again. ``dataset`` is the stage folder ``source`` (its
        ``split``) with the columns ``renamed``, which ``stage.json`` records (:data:`JOINED_TO`)
        so that :func:`dbb_hf.stages.load_run_stage` gives the whole rows. Its fingerprint adds
        the saved columns to ``fingerprint``; a folder that an older dbb_hf saved whole under
        ``fingerprint`` is still read as it is (:meth:`_full_copy`).
        """
        old = self._full_copy(stage, fingerprint)
        if old is not None:
            return old
        written = list(written)
        joined_to = {"stage": source, "split": split, "renamed": renamed or {},
                     "fingerprint": saved_fingerprint(self.out / source)}
        saved = self._cached(
            # joined_to in the fingerprint: a folder saved before stages recorded their input is
            # computed again rather than read as whole rows.
            stage, stage_fingerprint(stage, {"saved": [*row_keys(dataset), *written], JOINED_TO: [source, split]},
                                     fingerprint),
            lambda stage_dir: stage_columns(dataset, compute(stage_dir), written, stage),
            info={JOINED_TO: joined_to},
        )
        return join_stage_columns(dataset, saved, self.out / stage)

    def _full_copy(self, stage: str, fingerprint: str):
        """The whole output that a dbb_hf before column-only stage folders saved for ``stage``
        with ``fingerprint`` (it holds the same rows and values), or None."""
        found = load_stage_output(self.out / stage, fingerprint)
        if found is not None:
            self.reused.append(stage)
        return found

    def _claim(self, stage: str, fingerprint: str) -> bool:
        """Whether ``stage`` (trained in its folder: checkpoints, then a model) finished with
        ``fingerprint``. If not, the folder is kept when a run with this fingerprint started
        it (its checkpoints resume) and emptied when another config did: resuming from
        another config's checkpoints would mix two runs."""
        stage_dir = self.out / stage
        if saved_fingerprint(stage_dir) == fingerprint:
            return True
        if self.state.is_main_process and _started_fingerprint(stage_dir) != fingerprint:
            shutil.rmtree(stage_dir, ignore_errors=True)
            stage_dir.mkdir(parents=True)
            write_text_atomic(stage_dir / STARTED, json.dumps({"fingerprint": fingerprint}))
        self.state.wait_for_everyone()
        return False

    def _shards(self) -> ShardPlan:
        return ShardPlan.for_processes(self.run.shard_size, self.state)

    # ------------------------------------------------------------------ stages

    def class_prompts(self, dataset: DatasetDict) -> list[str]:
        return resolve_class_prompts(dataset["train"].features["label"].names, self.run.class_prompts)

    def load_data(self) -> tuple[DatasetDict, str]:
        """The benchmark, kept as a stage when its source is the toy or a local folder.

        Decoding a benchmark from its official layout (CSV metadata, image folders) costs
        more than every reused stage of a rerun together, so the loaded splits are saved.
        The fingerprint covers the folder's listing (names, sizes, modification times),
        so edited files are loaded again. A Hub dataset id is not cached here: its version
        is only known online, and `datasets` keeps its own download cache.
        """
        source = source_signature(self.data.data_dir)
        fp = stage_fingerprint("data", self.data, source)
        if self.data.dataset != "toy" and source is None:
            start = time.perf_counter()
            dataset = self._load_hub_dataset(fp)
            self.timings["data"] = time.perf_counter() - start
            return dataset, fp
        # Decoding every image is the main process's work; the others read the saved stage.
        return self._cached(DATA_STAGE, fp, lambda stage_dir: self._load_checked(fp), main_only=True), fp

    def _load_checked(self, fingerprint: str) -> DatasetDict:
        """The data with every image decoded once: unreadable ones raise or are dropped
        (``data.bad_images``); the dropped rows are kept in ``dropped_images.json`` for the report."""
        dataset, dropped = self.data.load_checked()
        write_text_atomic(self.out / DROPPED_IMAGES, json.dumps({"fingerprint": fingerprint, "rows": dropped}))
        return dataset

    def _load_hub_dataset(self, fingerprint: str) -> DatasetDict:
        """A dataset not kept as a stage: the main process decodes and checks every image, the
        others load it unchecked (no decoding) and drop the rows the main process dropped."""
        if self.state.is_main_process:
            dataset = self._load_checked(fingerprint)
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            return dataset
        unchecked, _ = dataclasses.replace(self.data, bad_images="off").load_checked()
        return keep_rows(unchecked, self.dropped_images(fingerprint))

    def dropped_images(self, fp_data: str) -> list[dict]:
        """The rows dropped when loading the data with fingerprint ``fp_data``."""
        path = self.out / DROPPED_IMAGES
        saved = json.loads(path.read_text()) if path.exists() else {}
        return saved["rows"] if saved.get("fingerprint") == fp_data else []

    def train_erm(self, dataset: DatasetDict, fp_data: str) -> tuple[str, str]:
        if self.run.erm_model:
            return self.run.erm_model, stage_fingerprint(
                "erm-given", self.run.erm_model, self._model_digests(self.run.erm_model)
            )
        config = dataclasses.replace(self.configs["erm"], output_dir=str(self.out / "erm"))
        fp = stage_fingerprint("erm", [self.configs["classifier"], dataclasses.replace(config, output_dir="")], fp_data)

        def train(stage_dir):
            result = train_classifier(
                dataset["train"], dataset["validation"], self.configs["classifier"], config,
                metadata={"stage": "erm", "dataset": dataclasses.asdict(self.data)},
            )
            return {"best_epoch": result.best_epoch}

        return self.trained("erm", fp, train), fp

    def trained(self, stage: str, fingerprint: str, train) -> str:
        """The model folder ``output_dir/<stage>/model``, trained by ``train(stage_dir)`` unless a
        run with ``fingerprint`` finished there (a dict that ``train`` returns joins ``stage.json``)."""
        start = time.perf_counter()
        if self._claim(stage, fingerprint):
            self.reused.append(stage)
        else:
            info = train(self.out / stage)
            info = info if isinstance(info, dict) else {}
            if self.state.is_main_process:
                write_text_atomic(self.out / stage / STAGE_INFO, json.dumps({"fingerprint": fingerprint, **info}))
            self.state.wait_for_everyone()
        self.timings[stage] = time.perf_counter() - start
        return str(self.out / stage / "model")

    def generate(self, dataset: DatasetDict, erm_dir: str, fp_erm: str):
        """Stages 1-5: the pruned set of edits with every provenance column, and Psi."""
        prompts = self.class_prompts(dataset)
        model = load_classifier(erm_dir, device=self.device)
        cfg = self.configs

        scored = self.score_split("scores", dataset, "train", model, fp_erm)
        Psi = class_confidence(scored)

        fp_sel = stage_fingerprint("selection", cfg["selection"], fp_erm)
        selected = self._cached("selection", fp_sel, lambda d: select_lowest_loss(scored, cfg["selection"], cache_dir=d))
        purity = selection_purity(selected, dataset["train"]) if "group" in selected.column_names else None

        tokens, fp_tok = None, fp_sel
        if cfg["inpainting"].backend == "diffusers":
            validation = dataset["validation"]
            if cfg["selection"].ti_source == "validation_group" and cfg["selection"].ti_validation_groups is None:
                # The class's validation group is the one the ERM model fails most on.
                validation = self.score_split("validation_scores", dataset, "validation", model, fp_erm)
            tokens, fp_tok = self._learn_tokens(validation, scored, prompts, fp_erm)

        fp_mask = stage_fingerprint(
            "masks", cfg["masking"], prompts, fp_sel,
            self._model_digests(cfg["masking"].detector_id, cfg["masking"].segmenter_id),
        )
        # The selection's own mask column is kept as source_mask: masking writes mask anew.
        to_mask, masking = keep_source_mask(selected, cfg["masking"])
        masked = self._cached_columns(
            "masks", fp_mask, to_mask, lambda d: self._run_masking(to_mask, masking, prompts, d), written=MASK_FEATURES,
            source="selection", renamed={"mask": "source_mask"} if to_mask is not selected else None,
        )
        # Every row in is ok or failed with its reason, none lost or duplicated (raises otherwise).
        accounting = {"masks": account_stage("masks", selected, masked)}

        fp_gen = stage_fingerprint(
            "generation", cfg["inpainting"], prompts, fp_mask, fp_tok, self._model_digests(cfg["inpainting"].model_id)
        )
        generated = self._cached_columns("generation", fp_gen, masked,
                                         lambda d: self._run_generation(masked, prompts, tokens, d),
                                         written=inpainting_features(cfg["inpainting"].backend), source="masks")
        accounting["generation"] = account_stage("generation", masked, generated)

        fp_prune = stage_fingerprint("pruning", cfg["pruning"], fp_gen, fp_erm)
        pruned = self._cached_columns(
            "pruning", fp_prune, generated,
            lambda d: apply_thresholds(
                score_edits(generated, model, cfg["pruning"], Psi=Psi, output_dir=d, shards=self._shards(),
                            model_fingerprint=fp_erm),
                cfg["pruning"].P, Psi=Psi, psi_rule=cfg["pruning"].psi_rule,
            ),
            written=[*SCORE_FEATURES, *VERDICT_FEATURES], source="generation",
        )
        accounting["pruning"] = account_stage("pruning", generated, pruned)
        accounting["outcomes"] = outcome_counts(pruned)
        return pruned, {"Psi": Psi, "P": cfg["pruning"].P, "purity": purity, "tokens": tokens, "fingerprint": fp_prune,
                        "model": model, "accounting": accounting}

    def _model_digests(self, *model_ids) -> list:
        """:func:`local_models` of these ids, taking the digests this run resolved at its start
        (the ones config.yaml records): a local folder is read once per run, not once per
        stage that loads it, which for a local SD checkout is gigabytes each time."""
        resolved = {entry["id"]: entry["digest"] for entry in self.revisions.values() if entry.get("digest")}
        return [resolved[m] if m in resolved else local_models(m)[0] for m in model_ids]

    def score_split(self, stage: str, dataset: DatasetDict, split: str, model, fp_erm: str) -> Dataset:
        """``dataset[split]`` with the ERM model's per-image ``erm_loss`` and ``erm_probs``; every
        process scores its share of the rows. The stage keeps only the scores (and ``example_id``):
        a second copy of every training image is not written."""
        rows = dataset[split]
        return self._cached_columns(
            stage, fp_erm, rows,
            lambda d: score_dataset(rows, model, device=self.device, model_id=fp_erm, processes=self.state),
            written=ERM_FEATURES, source=DATA_STAGE, split=split,
        )

    def _learn_tokens(self, validation, scored, prompts, fp_erm):
        cfg = self.configs
        # Tokens learned on the hair template learn it from the masking config, as masking draws it.
        template = cfg["masking"].hair_template()
        record = template_record(cfg["textual_inversion"].mask_region, template)
        # The images come from the ERM scores (train, or validation: both under fp_erm), not from
        # the lowest-loss selection: a new budget must not relearn them (hours at full size).
        fp = stage_fingerprint(  # a box run does not read the template, and its fingerprint leaves it out
            "tokens", cfg["textual_inversion"], cfg["selection"].textual_inversion_fields(), prompts, fp_erm,
            self._model_digests(cfg["textual_inversion"].model_id), *([] if record is None else [record]),
        )
        ti_rows = self._cached(
            "textual_inversion_images", fp,
            lambda d: select_textual_inversion(scored, validation, cfg["selection"]), main_only=True,
        )
        per_class = {c: ti_rows.filter(lambda y: y == c, input_columns="label")["image"] for c in range(len(prompts))}
        start = time.perf_counter()
        names = scored.features["label"].names
        # Tokens are named after the classes; their prompts name the object with the same
        # word per class as inpainting and masking do (class_prompts, else the class names).
        self._claim("tokens", fp)  # learn_tokens skips the classes already done in its folder
        tokens = learn_tokens(per_class, names, cfg["textual_inversion"], str(self.out / "tokens"), prompt_name=prompts,
                              hair_template=template)
        release_memory(self.device)
        self.timings["tokens"] = time.perf_counter() - start
        return [tokens[c] for c in range(len(prompts))], fp

    def _run_masking(self, selected: Dataset, config: MaskingConfig, prompts, stage_dir: Path) -> Dataset:
        models = load_masking_models(config, self.device) if config.loads_models() else None
        # With more than two classes an image has one row per target class (adjacent); its
        # mask depends on the image and its own class only, so each image is masked once.
        ids = selected["example_id"]
        is_first = [i == 0 or ids[i - 1] != e for i, e in enumerate(ids)]
        images = selected if all(is_first) else selected.select(np.flatnonzero(is_first))
        once = run_masking(
            images, config, class_names=prompts, models=models, device=self.device,
            output_dir=stage_dir, shards=self._shards(),
        )
        if all(is_first):
            return once
        return once.select(np.cumsum(is_first) - 1).remove_columns("target_label").add_column(
            "target_label", selected["target_label"], feature=selected.features["target_label"]
        ).select_columns(once.column_names)

    def _run_generation(self, masked: Dataset, prompts, tokens, stage_dir: Path) -> Dataset:
        config = self.configs["inpainting"]
        pipe = donors = None
        if config.backend == "diffusers":
            pipe = load_inpainting_pipeline(config, self.device)
            load_tokens(pipe, self.out / "tokens")
        else:
            donors = prepare_donors(masked)
        return run_inpainting(
            masked, config, pipe=pipe, donors=donors, class_names=prompts, tokens=tokens,
            output_dir=stage_dir, shards=self._shards(),
        )

    # ------------------------------------------------------------------ the run

    def __call__(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        with run_folder_lock(self.out, self.state):
            return self._run()

    def _run(self) -> dict:
        dataset, fp_data = self.load_data()
        # Bad input fails here, in seconds, not after ERM or generation.
        given_augmented = preflight(self.run, self.configs, dataset)
        # The preflight fetched a file of each later model: their commits are in the Hub
        # cache now. Every stage loads those commits, whatever the revision names later.
        self.revisions = resolve_run(self.run, self.given_configs)
        self._write_config()
        self.configs = pin(self.configs, self.revisions)
        erm_dir, fp_erm = self.train_erm(dataset, fp_data)

        info = {}
        if self.run.augmented_dataset:
            augmented = given_augmented
            fp_aug = stage_fingerprint("augmented-given", self.run.augmented_dataset)
            pruned = None
            # The edits were made elsewhere: what made them is what the dataset records, not this config.
            info = {**thresholds(augmented), "thresholds_from": f"the given augmented dataset {self.run.augmented_dataset}"}
        else:
            pruned, info = self.generate(dataset, erm_dir, fp_erm)
            fp_aug = stage_fingerprint("augmented", info["fingerprint"], fp_data, AUGMENTED_FORMAT)
            augmented = self.augmented(dataset, pruned, fp_aug, fp_data)
        info["dropped_images"] = self.dropped_images(fp_data)
        retrained_dir, fp_retrained = self.retrain(augmented, erm_dir, fp_aug, fp_erm)
        fp_report = stage_fingerprint(
            "report", self.run.num_grid_examples, fp_data, fp_erm, fp_retrained, info.get("fingerprint")
        )
        return self.report(dataset, augmented, pruned, erm_dir, retrained_dir, info, fp_report)

    def augmented(self, dataset: DatasetDict, pruned: Dataset, fp_aug: str, fp_data: str) -> DatasetDict:
        """The augmented dataset (:func:`build_augmented`), saved as the ``augmented`` stage.

        When the data is this run's ``data`` stage, ``augmented/`` keeps only the synthetic
        split and records where the real splits are (``../data`` and its fingerprint, in
        ``stage.json``: see :data:`dbb_hf.augmented.REAL_SPLITS`), so ``load_augmented`` of the
        run folder or of ``augmented/`` gives all four splits. A Hub dataset is not kept in the
        run folder (:meth:`load_data`): its splits are then written in ``augmented/``.
        """
        P = self.configs["pruning"].P
        if saved_fingerprint(self.out / DATA_STAGE) != fp_data:
            return self._cached("augmented", fp_aug, lambda d: build_augmented(dataset, pruned, P, cache_dir=d),
                                main_only=True)
        old = self._full_copy("augmented", fp_aug)
        if old is not None:
            return old
        record = {"path": f"../{DATA_STAGE}", "fingerprint": fp_data}
        saved = self._cached(
            "augmented", stage_fingerprint("augmented", {"saved": ["synthetic"], REAL_SPLITS: record["path"]}, fp_aug),
            lambda d: DatasetDict({"synthetic": build_augmented(dataset, pruned, P, cache_dir=d)["synthetic"]}),
            main_only=True, info={REAL_SPLITS: record},
        )
        return with_real_splits(saved["synthetic"], dataset)

    def _write_config(self) -> None:
        """``config.yaml``: the run's configs as given (precision resolved) and the version
        of every model it loads (``resolved_revisions``)."""
        if self.state.is_main_process:
            write_text_atomic(self.out / "config.yaml", to_yaml({
                "data": self.data, "run": self.run, **self.given_configs, "dbb_hf_version": __version__,
                "resolved_revisions": self.revisions,
            }))

    def retrain(self, augmented: DatasetDict, erm_dir: str, fp_aug: str, fp_erm: str) -> tuple[str, str]:
        config = dataclasses.replace(self.configs["retraining"], output_dir=str(self.out / "retrained"))
        fp = stage_fingerprint(
            "retrained", [self.configs["classifier"], dataclasses.replace(config, output_dir="")],
            # The ERM model by fingerprint, not by path: a run folder moved elsewhere is reused.
            fp_aug, fp_erm if self.run.retrain_from_erm else None,
        )
        return self.trained("retrained", fp, lambda stage_dir: train_classifier(
            augmented["train"], augmented["validation"], self.configs["classifier"], config,
            synthetic=augmented["synthetic"],
            init_model_dir=erm_dir if self.run.retrain_from_erm else None,
            metadata={"stage": "retrained", "dataset": dataclasses.asdict(self.data)},
        )), fp

    def evaluate(self, dataset, erm_dir, retrained_dir, fingerprint: str) -> dict:
        """Validation and test metrics of both models, saved beside the report and reused
        while the data and both models are unchanged (a rerun then skips evaluation).

        Every process evaluates its share of each split (``gather_for_metrics`` joins them);
        the main process writes ``evaluation.json``.
        """
        from accelerate import Accelerator

        path = self.out / "evaluation.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fingerprint:
                self.reused.append("evaluation")
                return saved["metrics"]
        metrics = evaluate_models({"erm": erm_dir, "retrained": retrained_dir}, dataset, device=self.device,
                                  accelerator=Accelerator())  # the run's processes and precision (dbb_hf.precision)
        if not self.state.is_main_process:
            return metrics
        write_text_atomic(path, json.dumps({"fingerprint": fingerprint, "metrics": metrics}, default=str))
        # Read back what was written, so a first run and a rerun report identical values.
        return json.loads(path.read_text())["metrics"]

    def report(self, dataset, augmented, pruned, erm_dir, retrained_dir, info, fingerprint: str) -> dict | None:
        """Evaluate ERM and the retrained model (every process), then write the report (main process)."""
        from .report import write_report

        report = None
        start = time.perf_counter()
        metrics = self.evaluate(dataset, erm_dir, retrained_dir, fingerprint)
        self.timings["evaluation"] = time.perf_counter() - start
        if self.state.is_main_process:
            # The classifier's pretrained weights were fetched by training, after config.yaml was written.
            self.revisions = resolve_run(self.run, self.configs, self.revisions)
            self._write_config()
            report = write_report(
                self.out, metrics=metrics, pruned=pruned, augmented=augmented, info=info,
                configs=self.configs, data=self.data, timings=self.timings, reused=self.reused,
                num_grid_examples=self.run.num_grid_examples, fingerprint=fingerprint, revisions=self.revisions,
            )
            if self.run.push_to_hub:
                from .hub import publish_run

                publish_run(str(self.out), namespace=self.run.hub_namespace, private=self.run.hub_private)
        self.state.wait_for_everyone()
        return report


DATA_STAGE = "data"  # the stage folder of the loaded benchmark (augmented/ reads its real splits there)
STARTED = "started.json"  # the fingerprint of the run training in a stage folder
DROPPED_IMAGES = "dropped_images.json"  # rows whose image could not be read, dropped at load


def _started_fingerprint(stage_dir: Path) -> str | None:
    path = stage_dir / STARTED
    return json.loads(path.read_text()).get("fingerprint") if path.exists() else None


def local_models(*model_ids) -> list:
    """Digests of the model ids that are local folders (None for Hub ids).

    A Hub model is pinned by its id and revision, which the configs hold; a local folder
    can change in place (a retrained model, or the miniature prior of a newer dbb_hf), so
    its files' contents join the fingerprint: the digest config.yaml records for it. Not
    their modification times, which a clone, a reinstall or a restored workspace renews,
    and with them every stage made with the shipped priors.
    """
    return [folder_digest(model_id) if model_id is not None and os.path.isdir(model_id) else None
            for model_id in model_ids]

