"""Group-balanced reweighting and upsampling: the simplest baselines that use training group labels.

Both give every (label, spurious) group the same total weight in training, as in
Sagawa et al. 2020 (the "reweighted" baseline of "Distributionally Robust Neural
Networks") and Idrissi et al. 2022 ("Simple data balancing achieves competitive
worst-group-accuracy": SUBG / RWG), following SubpopBench's conventions (Yang et al. 2023,
``ReWeight`` and ``ReSample``):

- ``reweight`` scales each sample's cross-entropy by w_g = (1 / n_g) / sum_h (1 / n_h) * G
  (G = the number of groups with training samples, so the weights average 1 over groups);
- ``upsample`` draws each epoch's batches with replacement, sample probability
  proportional to 1 / n_g (as many draws per epoch as training rows).

n_g counts the training rows of group g; a group absent from training gets weight 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def group_weights(group_counts: Sequence[int]) -> np.ndarray:
    """w_g proportional to 1 / n_g, normalised so that the groups present average 1 (absent: 0)."""
    counts = np.asarray(group_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"group_counts must be counts >= 0 with at least one sample, got {list(group_counts)}")
    present = counts > 0
    inverse = np.where(present, 1.0 / np.where(present, counts, 1.0), 0.0)
    return inverse / inverse.sum() * present.sum()


class GroupReweightedLoss:
    """Cross-entropy of each sample times its group's weight w_g, averaged over the batch."""

    def __init__(self, group_counts: Sequence[int]):
        self.weights = torch.as_tensor(group_weights(group_counts), dtype=torch.float32)

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, batch["label"], reduction="none")
        return (self.weights.to(per_sample.device)[batch["group"]] * per_sample).mean()


def upsampling_weights(groups: Sequence[int], num_groups: int) -> np.ndarray:
    """One sampling weight per training row, 1 / n_g of its group: every group is drawn equally often."""
    groups = np.asarray(groups, dtype=np.int64)
    counts = np.bincount(groups, minlength=num_groups)
    return 1.0 / counts[groups]
