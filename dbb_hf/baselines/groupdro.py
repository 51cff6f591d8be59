"""GroupDRO (Sagawa et al. 2020, "Distributionally Robust Neural Networks for Group Shifts"),
online: it minimises the expected loss under a distribution q over the training groups,
moved towards the groups with the highest loss (their Algorithm 1):

    q_g <- q_g * exp(eta * L_g(batch)),  q <- q / sum_h q_h,  loss = sum_g q_g L_g(batch)

with L_g the mean cross-entropy of the batch's samples of group g (groups absent from the
batch keep their q_g before the normalisation and add nothing to the loss). It uses the
training group labels. eta defaults to 0.01, Sagawa et al.'s step size and SubpopBench's
``groupdro_eta``; as in SubpopBench, batches are drawn uniformly (the authors' scripts also
offer group-balanced sampling) and no group adjustment C is added. q is checkpointed with
the model, so a resumed run continues with the same weights; under several processes the
group losses of the q update are summed over processes, so q stays the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import reduce


@dataclass
class GroupDROConfig:
    eta: float = field(default=0.01, metadata={"help": "Step size of the group weights q (Sagawa et al.; SubpopBench)."})

    def __post_init__(self):
        if not self.eta > 0:
            raise ValueError(f"eta must be positive, got {self.eta}")


class GroupDROLoss:
    """The GroupDRO objective with its online group weights ``q`` (uniform at the start)."""

    def __init__(self, num_groups: int, eta: float = 0.01):
        if num_groups < 1:
            raise ValueError(f"num_groups must be at least 1, got {num_groups}")
        self.eta = float(eta)
        self.q = torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64)

    def group_losses(self, per_sample: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss per group, samples per group) of one batch; 0 for a group not in it."""
        num_groups = len(self.q)
        sums = torch.zeros(num_groups, dtype=per_sample.dtype, device=per_sample.device).scatter_add(0, groups, per_sample)
        counts = torch.bincount(groups, minlength=num_groups).to(per_sample.dtype)
        return sums / counts.clamp_min(1), counts

    def update(self, group_losses: torch.Tensor, present: torch.Tensor) -> None:
        """q_g <- q_g exp(eta L_g) for the groups present, then normalised."""
        step = torch.where(present.cpu(), self.eta * group_losses.detach().double().cpu(), torch.zeros(()).double())
        self.q = self.q * torch.exp(step)
        self.q = self.q / self.q.sum()

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, batch["label"], reduction="none")
        losses, counts = self.group_losses(per_sample, batch["group"])
        # The weights move with the losses of every process's batch; the gradient is this batch's.
        sums, totals = reduce(losses.detach() * counts, "sum"), reduce(counts, "sum")
        self.update(sums / totals.clamp_min(1), totals > 0)
        return (self.q.to(losses.device, losses.dtype) * losses).sum()

    def state_dict(self) -> dict:
        return {"q": self.q.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].clone().double()
