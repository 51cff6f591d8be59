"""The classifier's training loop, written out the Accelerate way.

One loop serves ERM (stage 0) and the upweighted retraining (stage 6, Eq. 6-8): real and
synthetic samples are shuffled together (Algorithm 2, line 13) and each sample carries a
``direction``: -1 for a real image, the new class for a synthetic edit. The loss is

    L = L_train + sum_c gamma_c * L_gen,c

with L_train the mean cross-entropy over the whole batch B (Algorithm 2, line 18) and
L_gen,c the mean cross-entropy over the synthetic samples of the batch whose new class is
c (0 when the batch holds none). For two classes, gamma_0 and gamma_1 are the paper's
gamma_1 (edits labelled with the first class, D'_i) and gamma_2 (D'_i').

Model selection uses validation worst-group accuracy when the validation split has group
labels and validation accuracy otherwise, or, without validation group labels (SubpopBench's
"attribute no" setting), validation worst-class or average accuracy; the best model is saved
in timm's Hub format (:func:`dbb_hf.modeling.save_classifier`), loadable without dbb_hf.

The baselines (:mod:`dbb_hf.baselines`) run in this same loop through two hooks of
:func:`train_classifier`: ``loss_fn`` replaces the loss (GroupDRO, group reweighting) and
``sample_weights`` draws each epoch's samples with replacement (group-balanced upsampling).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from datasets import Dataset, Features, Value, concatenate_datasets
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .images import to_rgb
from .metrics import group_metrics
from .modeling import ClassifierConfig, create_classifier, eval_transform, save_classifier, train_transform
from .precision import CHOICES, stage_precision
from .stages import replace_folder, write_text_atomic


REAL = -1  # the `direction` of a real training image
SELECTION_METRICS = ("auto", "worst_group_accuracy", "worst_class_accuracy", "accuracy", "last")
BATCH_COLUMNS = ("label", "group", "direction")  # the integer columns a training batch carries


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; nothing of the diverged model was saved."""


def check_training_data(train: Dataset, validation: Dataset, synthetic: Dataset | None, gammas) -> None:
    """Labels in range and one class list everywhere, checked before any model is built.

    A gamma for a class that no edit was made into is allowed (its term is 0, Eq. 6-8)
    but warned about: usually every edit of that direction was pruned.
    """
    from .checks import check_class_names, check_labelled

    names = train.features["label"].names if "label" in train.features else None
    for split, dataset in (("train", train), ("validation", validation), ("synthetic", synthetic)):
        if dataset is None:
            continue
        check_labelled(dataset, what="training", split=split, required=["image"])
        check_class_names(names, dataset.features["label"].names,
                          expected_what="the training split", actual_what=f"the {split} split")
    if synthetic is not None and gammas:
        counts = np.bincount(np.asarray(synthetic["label"], dtype=np.int64), minlength=len(names))
        empty = [names[c] for c, gamma in enumerate(gammas) if gamma and c < len(names) and counts[c] == 0]
        if empty:
            warnings.warn(
                f"no synthetic images of class(es) {empty} (synthetic rows per class: "
                f"{dict(zip(names, counts.tolist()))}): their gamma terms are 0", stacklevel=3,
            )


@dataclass
class TrainingConfig:
    output_dir: str = field(default="runs/erm", metadata={"help": "Where checkpoints and the best model go."})
    num_epochs: int = field(default=10, metadata={"help": "Training epochs."})
    train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay."})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (momentum 0.9), adam or adamw."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine or constant."})
    augmentation: str = field(
        default="timm", metadata={"help": "timm (the model's training transform) or none (evaluation transform)."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    mixed_precision: str = field(
        default="launcher",
        metadata={"help": "launcher (the precision of `accelerate launch` / the accelerate config; no without "
                  "a launcher), no, fp16 or bf16 (this stage casts itself; see dbb_hf.precision)."},
    )
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers (decode and transform)."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation and data order."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Epoch checkpoints kept for resuming."})
    resume: bool = field(default=True, metadata={"help": "Resume from the latest checkpoint in output_dir."})
    report_to: str = field(default="none", metadata={"help": "Tracker: none, tensorboard, wandb, all."})
    selection_metric: str = field(
        default="auto",
        metadata={"help": "auto (worst-group accuracy when validation groups exist, else accuracy), "
                  "worst_group_accuracy (uses validation group labels), worst_class_accuracy or accuracy (no "
                  "group labels: SubpopBench's 'attribute no' setting), or last (the last epoch's model)."},
    )
    gammas: Optional[list[float]] = field(
        default=None,
        metadata={"help": "Upweighting of synthetic samples per new class (Eq. 6): gamma_1 gamma_2 ..."},
    )

    def __post_init__(self):
        choices = {
            "optimizer": ("sgd", "adam", "adamw"),
            "lr_scheduler": ("cosine", "constant"),
            "augmentation": ("timm", "none"),
            "mixed_precision": CHOICES,
            "selection_metric": SELECTION_METRICS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("num_epochs", "train_batch_size", "eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gammas is not None and any(g < 0 for g in self.gammas):
            raise ValueError(f"gammas must be non-negative, got {self.gammas}")


def dbb_loss(logits: torch.Tensor, labels: torch.Tensor, direction: torch.Tensor, gammas: Sequence[float] | None):
    """Eq. 6-8: mean CE over the batch plus gamma_c times the mean CE of the edits into class c."""
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    loss = per_sample.mean()
    for new_class, gamma in enumerate(gammas or ()):
        in_direction = direction == new_class
        if gamma and bool(in_direction.any()):
            loss = loss + gamma * per_sample[in_direction].mean()
    return loss


def _batch_transform(transform):
    def apply(batch):
        out = {"pixel_values": [transform(to_rgb(img)) for img in batch["image"]]}
        for key in BATCH_COLUMNS:
            if key in batch:
                out[key] = batch[key]
        return out

    return apply


def _collate(rows):
    batch = {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}
    for key in BATCH_COLUMNS:
        if key in rows[0]:
            batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
    return batch


class WeightedEpochSampler(torch.utils.data.Sampler):
    """``len(weights)`` indices drawn with replacement in proportion to ``weights``, anew each epoch.

    The draw of epoch e depends only on (seed, e) (Accelerate calls ``set_epoch``), so a run
    resumed at epoch e draws what an uninterrupted one would.
    """

    def __init__(self, weights: Sequence[float], seed: int = 0):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.ndim != 1 or len(self.weights) == 0 or not bool(torch.isfinite(self.weights).all()) \
                or bool((self.weights < 0).any()) or float(self.weights.sum()) <= 0:
            raise ValueError("sample_weights must be a non-empty list of finite weights >= 0 with a positive sum")
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist()


def make_loader(dataset: Dataset, transform, batch_size: int, *, shuffle: bool, num_workers: int, seed: int = 0,
                drop_last: bool = False, sampler: torch.utils.data.Sampler | None = None):
    """A DataLoader that decodes and transforms images in its workers (``sampler`` replaces ``shuffle``)."""
    columns = [c for c in ("image", *BATCH_COLUMNS) if c in dataset.column_names]
    dataset = dataset.select_columns(columns).with_transform(_batch_transform(transform))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        generator=generator,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )


def with_directions(train: Dataset, synthetic: Dataset | None) -> Dataset:
    """Real images (direction -1) and synthetic edits (direction = new class) in one dataset."""
    real = train.select_columns(["image", "label", "group"])
    real = real.add_column("direction", [REAL] * len(real), feature=Value("int64"))
    if synthetic is None or len(synthetic) == 0:
        return real
    if synthetic.features["label"].names != train.features["label"].names:
        raise ValueError(
            f"synthetic class names {synthetic.features['label'].names} differ from training's {train.features['label'].names}"
        )
    synth = synthetic.select_columns(["image", "label", "group"]).cast(
        Features({k: real.features[k] for k in ("image", "label", "group")})
    )
    synth = synth.add_column("direction", list(synth["label"]), feature=Value("int64"))
    return concatenate_datasets([real, synth])


@torch.inference_mode()
def predict(model, loader, accelerator: Accelerator | None = None, desc: str = "evaluate"):
    """Predictions, labels and groups over a loader (gathered across processes)."""
    model.eval()
    preds, labels, groups = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=accelerator is not None and not accelerator.is_main_process):
        logits = model(batch["pixel_values"])
        p, y, g = logits.argmax(-1), batch["label"], batch.get("group", batch["label"])
        if accelerator is not None:
            p, y, g = accelerator.gather_for_metrics((p, y, g))
        preds.append(p.cpu())
        labels.append(y.cpu())
        groups.append(g.cpu())
    return torch.cat(preds).numpy(), torch.cat(labels).numpy(), torch.cat(groups).numpy()


def evaluate_split(model, dataset: Dataset, *, batch_size=128, num_workers=0, accelerator=None, train_group_counts=None):
    """Worst-group metrics of ``model`` on ``dataset`` (deterministic evaluation preprocessing)."""
    from .checks import check_classifier_classes, check_labelled
    from .data.common import group_names

    check_labelled(dataset, what="evaluation", required=["image"])
    check_classifier_classes(model, dataset.features["label"].names, what="evaluation")
    loader = make_loader(dataset, eval_transform(_unwrap(model)), batch_size, shuffle=False, num_workers=num_workers)
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    else:
        loader = _on_device(loader, next(model.parameters()).device)
    preds, labels, groups = predict(model, loader, accelerator)
    names = group_names(dataset.features) if "spurious" in dataset.features else None
    return group_metrics(preds, labels, groups, group_names=names, train_group_counts=train_group_counts)


def _on_device(loader, device):
    for batch in loader:
        yield {k: v.to(device) for k, v in batch.items()}


def _unwrap(model):
    return getattr(model, "module", model)


def resolved_selection_metric(config: TrainingConfig, has_groups: bool) -> str:
    """The criterion ``auto`` stands for: worst-group accuracy when validation has groups."""
    if config.selection_metric == "auto":
        return "worst_group_accuracy" if has_groups else "accuracy"
    return config.selection_metric


def _selection_value(metrics: dict, name: str, epoch: int) -> float:
    if name == "last":
        return float(epoch)
    return metrics["average_accuracy" if name == "accuracy" else name]


def worst_class_accuracy(predictions, labels) -> float:
    """The lowest accuracy over the classes present: worst-group accuracy with groups = classes,
    which needs no group labels (SubpopBench's ValWorstAccAttributeNo)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(min((predictions[labels == c] == c).mean() for c in np.unique(labels)))


def train_group_counts_of(train: Dataset) -> list[int] | None:
    if "spurious" not in train.features:
        return None
    num_groups = train.features["label"].num_classes * train.features["spurious"].num_classes
    return np.bincount(np.asarray(train["group"]), minlength=num_groups).tolist()


def _lone_last_image(num_images: int, batch_size: int, model: torch.nn.Module) -> bool:
    """Whether each epoch's last batch would be one image that BatchNorm cannot train on
    ("Expected more than 1 value per channel"): it is then left out of that epoch. The
    seeded shuffle leaves out another image each epoch, and every batch keeps the mean
    losses of Eq. 6-8; the order stays a function of the seed and epoch, so resuming is exact."""
    lone = batch_size > 1 and num_images % batch_size == 1 and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    if lone:
        warnings.warn(
            f"{num_images} training images in batches of {batch_size} leave one image alone in the last batch, "
            "which BatchNorm cannot train on: it is left out of each epoch (another image each epoch)", stacklevel=3,
        )
    return lone


def evaluate_models(model_dirs: dict[str, str], dataset, *, splits: Sequence[str] = ("validation", "test"),
                    device=None, accelerator: Accelerator | None = None) -> dict:
    """``{name: {split: metrics}}`` of each saved classifier (``{name: folder}``) on ``splits``,
    the weighted average weighted by ``dataset["train"]``'s groups (as DFR / JTT). With
    ``accelerator`` every process evaluates its share of the rows (``gather_for_metrics``)."""
    from .modeling import load_classifier

    train_counts = train_group_counts_of(dataset["train"])
    metrics = {}
    for name, model_dir in model_dirs.items():
        model = load_classifier(model_dir, device=device)
        metrics[name] = {split: evaluate_split(model, dataset[split], train_group_counts=train_counts,
                                               accelerator=accelerator) for split in splits}
    return metrics


def _make_optimizer(model, config: TrainingConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def _latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    done = [p for p in checkpoint_dir.glob("epoch_*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


@dataclass
class TrainResult:
    model_dir: str
    best_epoch: int
    best_validation: dict
    history: list = field(default_factory=list)


def train_classifier(
    train: Dataset,
    validation: Dataset,
    classifier: ClassifierConfig,
    config: TrainingConfig,
    *,
    synthetic: Dataset | None = None,
    init_model_dir: str | None = None,
    metadata: dict | None = None,
    loss_fn: Callable[[torch.Tensor, dict], torch.Tensor] | None = None,
    sample_weights: Sequence[float] | None = None,
) -> TrainResult:
    """Train (ERM, or upweighted with ``synthetic``) and save the best model to ``output_dir/model``.

    ``init_model_dir`` starts from a saved classifier (the retraining starts from the ERM
    model when asked to). Rerunning with the same ``output_dir`` resumes from the latest
    epoch checkpoint; a finished run returns at once.

    ``loss_fn(logits, batch)`` replaces Eq. 6-8's loss (``batch`` holds ``label``, ``group``
    and ``direction``); one with ``state_dict``/``load_state_dict`` (GroupDRO's group
    weights) is saved in the epoch checkpoints and restored on resume.
    ``sample_weights`` (one per training row, real rows first, then synthetic) draws each
    epoch's samples with replacement in proportion to them (:class:`WeightedEpochSampler`).
    """
    output_dir = Path(config.output_dir)
    model_dir = output_dir / "model"
    checkpoint_dir = output_dir / "checkpoints"
    # No precision here: Accelerate keeps one per process, the launcher's (dbb_hf.precision).
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    precision = stage_precision(accelerator, config.mixed_precision, f"training ({config.output_dir})")
    set_seed(config.seed)
    check_training_data(train, validation, synthetic, config.gammas)
    label_names = train.features["label"].names
    if init_model_dir is not None:
        from .checks import check_class_names
        from .modeling import load_classifier, saved_label_names

        check_class_names(label_names, saved_label_names(init_model_dir) or label_names,
                          expected_what="the training data", actual_what=f"the initial classifier {init_model_dir!r}")
        model = load_classifier(init_model_dir)
        model.train()
    else:
        model = create_classifier(classifier, num_classes=len(label_names))
    if config.gammas is not None and synthetic is not None and len(config.gammas) != len(label_names):
        raise ValueError(f"gammas needs one value per class ({len(label_names)}), got {config.gammas}")

    train_set = with_directions(train, synthetic)
    sampler = None
    if sample_weights is not None:
        if len(sample_weights) != len(train_set):
            raise ValueError(f"sample_weights has {len(sample_weights)} values for {len(train_set)} training rows")
        sampler = WeightedEpochSampler(sample_weights, seed=config.seed)
    transform = train_transform(model) if config.augmentation == "timm" else eval_transform(model)
    train_loader = make_loader(
        train_set, transform, config.train_batch_size, shuffle=True, num_workers=config.num_workers, seed=config.seed,
        drop_last=_lone_last_image(len(train_set), config.train_batch_size, model),
        sampler=sampler,
    )
    val_loader = make_loader(validation, eval_transform(model), config.eval_batch_size, shuffle=False, num_workers=config.num_workers)
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_steps = steps_per_epoch * config.num_epochs
    if config.lr_scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    precision.take_over(accelerator, model)

    if loss_fn is not None and hasattr(loss_fn, "state_dict"):
        accelerator.register_for_checkpointing(loss_fn)
    has_groups = "group" in validation.column_names and "spurious" in validation.features
    selection_metric = resolved_selection_metric(config, has_groups)
    train_counts = train_group_counts_of(train)
    state = {"epoch": 0, "best_value": -1.0, "best_epoch": -1, "best_validation": {}, "history": []}
    latest = _latest_checkpoint(checkpoint_dir) if config.resume else None
    if latest is not None:
        # The model comes back from safetensors; the optimizer, scheduler and RNG states are
        # accelerate's pickles, unpickled with weights_only=True (tensors and numpy arrays
        # only, no code runs; accelerate reads its RNG file that way by default).
        accelerator.load_state(str(latest), load_kwargs={"weights_only": True})
        state = json.loads((latest / "trainer_state.json").read_text())
        accelerator.print(f"resumed from {latest} (epoch {state['epoch']})")
    if config.report_to != "none":
        accelerator.init_trackers("dbb_hf", config={k: str(v) for k, v in asdict(config).items()})

    for epoch in range(state["epoch"], config.num_epochs):
        model.train()
        train_loader.set_epoch(epoch)
        running, seen = 0.0, 0
        progress = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.num_epochs}", disable=not accelerator.is_main_process)
        for step, batch in enumerate(progress):
            with accelerator.accumulate(model):
                with precision.autocast():
                    logits = model(batch["pixel_values"])
                logits = logits.float()
                if loss_fn is None:
                    loss = dbb_loss(logits, batch["label"], batch["direction"], config.gammas)
                else:
                    loss = loss_fn(logits, batch)
                if not torch.isfinite(loss):
                    # Stop before the step: the weights, the saved model and the last
                    # epoch checkpoint stay as they were.
                    raise NonFiniteLossError(
                        f"the training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} of "
                        f"{len(train_loader)} ({config.output_dir}); lower the learning rate or check the data. "
                        f"Nothing of this epoch was saved; the last complete checkpoint is "
                        f"{_latest_checkpoint(checkpoint_dir)}"
                    )
                precision.backward(accelerator, loss)
                precision.step(accelerator, optimizer)
                scheduler.step()
                optimizer.zero_grad()
            running += loss.item() * len(batch["label"])
            seen += len(batch["label"])
            progress.set_postfix(loss=f"{running / seen:.4f}")

        with precision.autocast():
            preds, labels, groups = predict(model, val_loader, accelerator, desc="validation")
        names = None
        if has_groups:
            from .data.common import group_names

            names = group_names(validation.features)
        metrics = group_metrics(preds, labels, groups if has_groups else labels, group_names=names, train_group_counts=train_counts if has_groups else None)
        metrics["worst_class_accuracy"] = worst_class_accuracy(preds, labels)
        value = _selection_value(metrics, selection_metric, epoch + 1)
        record = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), **_scalars(metrics)}
        state["history"].append(record)
        accelerator.log({f"validation/{k}": v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        accelerator.print(json.dumps(record))
        if value > state["best_value"]:
            state.update(best_value=value, best_epoch=epoch + 1, best_validation=metrics)
            if accelerator.is_main_process:
                # Written aside, then renamed: model_dir never holds half of a model.
                new_model_dir = output_dir / ".model.tmp"
                shutil.rmtree(new_model_dir, ignore_errors=True)
                save_classifier(
                    accelerator.unwrap_model(model),
                    str(new_model_dir),
                    label_names,
                    metadata={**(metadata or {}), "best_epoch": epoch + 1, "selection_metric": selection_metric,
                              "validation": metrics, "training": asdict(config)},
                )
                replace_folder(new_model_dir, model_dir)
        state["epoch"] = epoch + 1
        _save_checkpoint(accelerator, checkpoint_dir / f"epoch_{epoch + 1}", state, config.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(str(model_dir), state["best_epoch"], state["best_validation"], state["history"])


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}


def _save_checkpoint(accelerator: Accelerator, path: Path, state: dict, keep: int) -> None:
    # The trainer state is written last: a checkpoint without it is incomplete and ignored.
    accelerator.save_state(str(path), safe_serialization=True)
    if accelerator.is_main_process:
        write_text_atomic(path / "trainer_state.json", json.dumps(state, default=str))
        done = sorted(
            (p for p in path.parent.glob("epoch_*") if (p / "trainer_state.json").exists()),
            key=lambda p: int(p.name.split("_")[1]),
        )
        for old in done[:-keep]:
            (old / "trainer_state.json").unlink()  # first: a half-deleted checkpoint is never taken as complete
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
