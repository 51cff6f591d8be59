"""Deep Feature Reweighting (Kirichenko, Izmailov and Wilson 2023, "Last Layer Re-Training is
Sufficient for Robustness to Spurious Correlations"), DFR^Val_Tr.

The backbone of a trained classifier stays frozen; only its last layer is re-trained, as an
L1-regularised logistic regression on the backbone's features (the input of the head,
standardised) of group-balanced validation data:

1. Tuning: the validation set is split in two random halves. For each C in ``C_options``
   (the authors' Waterbirds grid), a regression is fitted on a group-balanced subset of the
   first half (every group cut to the size of its smallest) and scored by worst-group
   accuracy on the second half. The best C wins (ties: the first in the grid).
2. The last layer: the regression with that C is fitted ``num_retrains`` times (the
   authors: 20) on group-balanced subsets of the whole validation set, and the weights
   are averaged.

The regression minimises ``sum_i CE_i + ||W||_1 / C`` (the liblinear objective the
authors use through scikit-learn, with a multinomial head of one row per class: for two
classes it has the same optimum as the binary one), solved by FISTA in float64; the
intercept is not penalised. The standardisation is folded into the new head, which
replaces the model's last layer, and the model is saved in timm's format like every other
classifier, so it evaluates like the others.

Group labels: the validation groups, or, without them (SubpopBench's "attribute no"
setting, ``balance_by="class"``), the classes: the subsets are class-balanced and C is
chosen by worst-class accuracy.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from ..checks import check_labelled
from ..modeling import eval_transform, label_names, load_classifier, save_classifier
from ..training import make_loader

BALANCE_BY = ("group", "class")


@dataclass
class DFRConfig:
    C_options: list[float] = field(
        default_factory=lambda: [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01],
        metadata={"help": "Inverse L1 strengths tried (Kirichenko et al.'s Waterbirds grid)."},
    )
    num_retrains: int = field(default=20, metadata={"help": "Balanced refits averaged into the last layer (DFR: 20)."})
    max_iter: int = field(default=2000, metadata={"help": "FISTA iterations per fit at most."})
    batch_size: int = field(default=128, metadata={"help": "Images per batch when extracting features."})
    seed: int = field(default=0, metadata={"help": "Seed of the validation halves and the balanced subsets."})

    def __post_init__(self):
        self.C_options = [float(c) for c in self.C_options]
        if not self.C_options or any(not c > 0 for c in self.C_options):
            raise ValueError(f"C_options must be positive numbers, got {self.C_options}")
        if self.num_retrains < 1 or self.max_iter < 1 or self.batch_size < 1:
            raise ValueError("num_retrains, max_iter and batch_size must be at least 1")


def head(model: torch.nn.Module) -> torch.nn.Linear:
    """The classifier's last layer (timm's ``get_classifier``), which DFR replaces."""
    last = model.get_classifier()
    if not isinstance(last, torch.nn.Linear):
        raise ValueError(f"DFR needs a linear last layer; {type(model).__name__}'s is {type(last).__name__}")
    return last


@torch.inference_mode()
def extract_features(model: torch.nn.Module, dataset: Dataset, batch_size: int = 128) -> np.ndarray:
    """The frozen backbone's features (the last layer's input) of every image, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    loader = make_loader(dataset, eval_transform(model), batch_size, shuffle=False, num_workers=0)
    features = []
    for batch in tqdm(loader, desc="DFR features", leave=False):
        x = model.forward_features(batch["pixel_values"].to(device))
        features.append(model.forward_head(x, pre_logits=True).double().cpu())
    return torch.cat(features).numpy()


def balanced_subset(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random subset with as many rows of each present group as the smallest has."""
    groups = np.asarray(groups)
    present = np.unique(groups)
    smallest = min(int((groups == g).sum()) for g in present)
    picked = [rng.permutation(np.flatnonzero(groups == g))[:smallest] for g in present]
    return np.sort(np.concatenate(picked))


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, C: float, max_iter: int = 2000,
                            tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """(W (classes x features), b) minimising ``sum_i CE(W x_i + b, y_i) + ||W||_1 / C`` (FISTA)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.long)
    n, d = x.shape
    penalty = 1.0 / (C * n)  # the objective divided by n
    # The mean softmax cross-entropy's gradient is L-Lipschitz with L = ||[x, 1]||_2^2 / (2n).
    lipschitz = float(torch.linalg.matrix_norm(torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1), ord=2)) ** 2 / (2 * n)
    step = 1.0 / max(lipschitz, 1e-12)
    W = torch.zeros(num_classes, d, dtype=x.dtype)
    b = torch.zeros(num_classes, dtype=x.dtype)
    W_m, b_m, t = W.clone(), b.clone(), 1.0
    onehot = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
    for _ in range(max_iter):
        residual = (torch.softmax(x @ W_m.T + b_m, 1) - onehot) / n
        W_new = W_m - step * (residual.T @ x)
        W_new = torch.sign(W_new) * torch.clamp(W_new.abs() - step * penalty, min=0)  # prox of the L1 term
        b_new = b_m - step * residual.sum(0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        change = max(float((W_new - W).abs().max()), float((b_new - b).abs().max()))
        W_m = W_new + (t - 1) / t_new * (W_new - W)
        b_m = b_new + (t - 1) / t_new * (b_new - b)
        W, b, t = W_new, b_new, t_new
        if change < tol:
            break
    return W.numpy(), b.numpy()


def _worst_accuracy(W, b, x, y, groups) -> float:
    predictions = (x @ W.T + b).argmax(1)
    return float(min((predictions[groups == g] == y[groups == g]).mean() for g in np.unique(groups)))


def fit_last_layer(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int,
                   config: DFRConfig) -> dict:
    """Tune C on the validation halves, then average ``num_retrains`` balanced fits (module docstring).

    Returns ``{"weight", "bias"}`` for raw (unstandardised) features, ``"C"`` and the tuning scores.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    mean, std = features.mean(0), features.std(0)
    std = np.where(std > 0, std, 1.0)
    x = (features - mean) / std
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(x))
    tune, held_out = order[: len(x) // 2], order[len(x) // 2 :]
    fit_rows = tune[balanced_subset(groups[tune], rng)]
    scores = {}
    for C in config.C_options:
        W, b = fit_logistic_regression(x[fit_rows], labels[fit_rows], num_classes, C, config.max_iter)
        scores[C] = _worst_accuracy(W, b, x[held_out], labels[held_out], groups[held_out])
    best = max(config.C_options, key=lambda c: (scores[c], -config.C_options.index(c)))
    subsets = [balanced_subset(groups, rng) for _ in range(config.num_retrains)]
    fits = [fit_logistic_regression(x[rows], labels[rows], num_classes, best, config.max_iter) for rows in subsets]
    W = np.mean([f[0] for f in fits], axis=0)
    b = np.mean([f[1] for f in fits], axis=0)
    # Fold the standardisation into the layer: W ((f - mean) / std) + b = (W / std) f + (b - W (mean / std)).
    return {"weight": W / std, "bias": b - W @ (mean / std), "C": best, "tuning_worst_accuracy": scores,
            "balanced_rows": len(subsets[0])}


def run_dfr(model_dir: str, validation: Dataset, output_dir: str, config: DFRConfig, *, balance_by: str = "group",
            device: str = "cpu", metadata: dict | None = None) -> str:
    """Reset the last layer of the classifier in ``model_dir`` on ``validation``; save it to ``output_dir``."""
    if balance_by not in BALANCE_BY:
        raise ValueError(f"balance_by must be one of {BALANCE_BY}, got {balance_by!r}")
    check_labelled(validation, what="DFR", split="validation", required=["image"])
    if balance_by == "group" and "group" not in validation.column_names:
        raise ValueError("DFR with balance_by='group' needs validation group labels (`group`); use balance_by='class'")
    model = load_classifier(model_dir, device=device)
    features = extract_features(model, validation, config.batch_size)
    labels = np.asarray(validation["label"])
    groups = np.asarray(validation["group"]) if balance_by == "group" else labels
    fitted = fit_last_layer(features, labels, groups, len(label_names(model)), config)
    last = head(model)
    with torch.no_grad():
        last.weight.copy_(torch.as_tensor(fitted["weight"], dtype=last.weight.dtype))
        last.bias.copy_(torch.as_tensor(fitted["bias"], dtype=last.bias.dtype))
    os.makedirs(output_dir, exist_ok=True)
    info = {"C": fitted["C"], "tuning_worst_accuracy": fitted["tuning_worst_accuracy"],
            "balance_by": balance_by, "balanced_rows": fitted["balanced_rows"], "config": asdict(config)}
    save_classifier(model, output_dir, label_names(model), metadata={**(metadata or {}), "dfr": info,
                                                                      "source_model": model_dir})
    return output_dir


def dfr_info(model_dir: str) -> dict:
    """The DFR record (chosen C, tuning scores) saved beside a DFR model."""
    with open(os.path.join(model_dir, "dbb_hf.json")) as f:
        return json.load(f)["dfr"]
