"""Just Train Twice (Liu et al. 2021, "Just Train Twice: Improving Group Robustness without
Training Group Information").

1. An identification model is trained by ERM for T epochs. Its error set E holds the
   training images it misclassifies (deterministic evaluation preprocessing).
2. A new model is trained from scratch, with ERM, on the upsampled set that holds every
   image of E ``lambda_up`` times and every other training image once (the paper's
   Algorithm 1; the authors' release appends E ``lambda_up`` times to the whole set,
   so that E appears lambda_up + 1 times).

No training group label is used. By default the identification model is the run's ERM
model (shared with DFR and DBB, its per-image scores from the pipeline's ``scores``
stage); ``identification_epochs`` T trains one of its own for exactly T epochs (the model
of the last epoch, no selection), as the paper tunes T. ``lambda_up`` defaults to
SubpopBench's ``jtt_lambda`` (10); the paper tuned it in {4, ..., 100} (Waterbirds T = 60,
lambda_up = 100; CelebA T = 1, lambda_up = 50).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from datasets import Dataset

from ..checks import require_columns


@dataclass
class JTTConfig:
    lambda_up: int = field(default=10, metadata={"help": "Times each error-set image appears in the upsampled set."})
    identification_epochs: Optional[int] = field(
        default=None,
        metadata={"help": "T: epochs of the identification model; default: the run's ERM model (shared)."},
    )

    def __post_init__(self):
        if self.lambda_up < 1:
            raise ValueError(f"lambda_up must be at least 1, got {self.lambda_up}")
        if self.identification_epochs is not None and self.identification_epochs < 1:
            raise ValueError(f"identification_epochs must be at least 1, got {self.identification_epochs}")


def error_set(scored_train: Dataset) -> np.ndarray:
    """Row indices of the training images the scored model misclassifies (argmax of ``erm_probs``)."""
    require_columns(scored_train, ["erm_probs", "label"], "the JTT error set", hint=" (score the training split first)")
    table = scored_train.select_columns(["erm_probs", "label"]).with_format("numpy")[:]
    probs = np.stack(list(table["erm_probs"])) if table["erm_probs"].dtype == object else table["erm_probs"]
    return np.flatnonzero(probs.argmax(1) != np.asarray(table["label"]))


def upsampled_indices(num_rows: int, errors: np.ndarray, lambda_up: int) -> list[int]:
    """Every row once, then each error-set row ``lambda_up - 1`` more times (so lambda_up in all)."""
    errors = np.asarray(errors, dtype=np.int64)
    if len(errors) and (errors.min() < 0 or errors.max() >= num_rows):
        raise ValueError(f"error-set indices must lie in [0, {num_rows}), got {errors.min()}..{errors.max()}")
    return list(range(num_rows)) + np.tile(errors, lambda_up - 1).tolist()


def upsample(train: Dataset, errors: np.ndarray, lambda_up: int) -> Dataset:
    """The upsampled training set of JTT's second stage."""
    return train.select(upsampled_indices(len(train), errors, lambda_up))
