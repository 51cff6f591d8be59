"""One mixed-precision policy per run: the launcher's, unless a stage asks for its own.

Accelerate keeps one precision per process (``AcceleratorState``): a second
``Accelerator(mixed_precision=...)`` with another value raises "AcceleratorState has
already been initialized", and an explicit value silently replaces what
``accelerate launch --mixed_precision`` (or the accelerate config file) chose. So the
stages build their ``Accelerator`` without a precision: every one of them shares the
launcher's. A stage config's ``mixed_precision`` is ``"launcher"`` by default (compute in
the launcher's precision, which Accelerate applies as usual) or ``"no"`` / ``"fp16"`` /
``"bf16"``; when that differs from the launcher's, the stage casts by itself: Accelerate's
autocast hook is taken off its model (``unwrap_model(keep_fp32_wrapper=False)``) and its
forward passes run under its own ``torch.autocast``, with its own gradient scaler for fp16
(saved in the epoch checkpoints, so resuming stays exact).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Mapping

import torch

from .devices import use_tf32

LAUNCHER = "launcher"
CHOICES = (LAUNCHER, "no", "fp16", "bf16")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_choice(value: str, what: str = "mixed_precision") -> None:
    if value not in CHOICES:
        raise ValueError(f"{what} must be one of {CHOICES}, got {value!r}")


def launcher_precision() -> str:
    """This process's precision: the one Accelerate already runs with, else the launcher's
    (``ACCELERATE_MIXED_PRECISION``, which ``accelerate launch`` sets from its flag or its
    config file), else "no"."""
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import parse_choice_from_env

    if is_initialized():
        return AcceleratorState().mixed_precision
    return parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")


def resolve(choice: str) -> str:
    """The precision a stage configured with ``choice`` computes in."""
    check_choice(choice)
    return launcher_precision() if choice == LAUNCHER else choice


def resolve_sections(configs: Mapping[str, object]) -> dict:
    """``configs`` with every ``mixed_precision="launcher"`` replaced by the launcher's
    precision, so that a run's config (and the stages' fingerprints) say what it ran in."""
    resolved = {}
    for name, config in configs.items():
        if dataclasses.is_dataclass(config) and getattr(config, "mixed_precision", None) == LAUNCHER:
            config = dataclasses.replace(config, mixed_precision=launcher_precision())
        resolved[name] = config
    return resolved


@dataclass
class StagePrecision:
    """How one training stage computes beside the process's ``Accelerator``.

    ``own``: the stage's precision differs from Accelerate's, so the stage casts itself
    (:meth:`take_over` after ``prepare``, :meth:`autocast` around forward passes,
    :meth:`backward` and :meth:`step` for the fp16 gradient scaler).
    """

    precision: str
    own: bool
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    def take_over(self, accelerator, model) -> None:
        """Remove Accelerate's autocast hook from a prepared model the stage casts itself."""
        if self.own:
            accelerator.unwrap_model(model, keep_fp32_wrapper=False)

    def autocast(self):
        if not self.own:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.precision], enabled=self.precision != "no")

    def backward(self, accelerator, loss: torch.Tensor) -> None:
        accelerator.backward(loss if self.scaler is None else self.scaler.scale(loss))

    def step(self, accelerator, optimizer) -> None:
        """``optimizer.step()``; with the stage's own scaler, unscaled and skipped on inf/NaN
        gradients, once per accumulated step."""
        if self.scaler is None:
            optimizer.step()
        elif accelerator.sync_gradients:
            self.scaler.step(optimizer)
            self.scaler.update()


def stage_precision(accelerator, choice: str, what: str) -> StagePrecision:
    """The precision of stage ``what`` configured with ``choice``, beside ``accelerator``."""
    use_tf32(accelerator.device)  # float32 work of a training stage on CUDA: TF32 tensor cores
    precision = accelerator.mixed_precision if choice == LAUNCHER else choice
    check_choice(precision)
    own = precision != accelerator.mixed_precision
    scaler = None
    if own:
        warnings.warn(
            f"{what}: mixed_precision {precision!r} from its config, not the launcher's "
            f"{accelerator.mixed_precision!r}; the stage casts with torch.autocast itself", stacklevel=3,
        )
        if precision == "fp16" and accelerator.scaler is None:
            scaler = torch.amp.GradScaler(accelerator.device.type)
            accelerator.register_for_checkpointing(scaler)
    return StagePrecision(precision=precision, own=own, device_type=accelerator.device.type, scaler=scaler)
