"""Where models run and in which dtype: the default device, dtype names, the dtype
argument of diffusers' ``from_pretrained``, and the float32 matmul precision on CUDA, in
one place for every stage."""

from __future__ import annotations

import gc
import os
from typing import Optional

import torch

TF32_VARIABLE = "DBB_HF_TF32"  # "0" keeps CUDA's float32 matmuls in full float32


def use_tf32(device: str | torch.device) -> bool:
    """On a CUDA device, let float32 matmuls and convolutions use TF32 tensor cores.

    PyTorch leaves float32 matmuls in full precision by default, which runs the float32
    stages (masking, integrated gradients, a textual inversion or training in "no"
    precision) at a fraction of an Ampere or later GPU's speed; TF32 keeps float32's range
    and accumulation with a 10-bit mantissa in the products, the trade diffusers and timm
    recommend for inference and training. ``DBB_HF_TF32=0`` leaves PyTorch's setting alone.
    Returns whether TF32 was enabled.
    """
    if torch.device(device).type != "cuda" or os.environ.get(TF32_VARIABLE, "1") == "0":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def resolve_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``device`` as a ``torch.device``; None: the first CUDA device when there is one, else the CPU.

    A CUDA device also gets TF32 matmuls (:func:`use_tf32`): every stage that places its
    models resolves its device here.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    use_tf32(device)
    return device


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype for ``name``; ``auto`` is float16 on CUDA (as diffusers documents SD2) and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def diffusers_dtype(dtype: torch.dtype) -> dict:
    """diffusers' ``from_pretrained`` dtype argument: ``dtype`` in recent diffusers, ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (exists once `dtype` does)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def release_memory(device: str | torch.device | None = None) -> None:
    """Collect what a finished stage left unreachable (models in reference cycles) and, on
    CUDA, hand the allocator's cached blocks back, so that the next stage's models load
    into the memory the last stage's held."""
    gc.collect()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
