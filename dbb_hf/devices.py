"""Where models run and in which dtype: the default device, dtype names, and the dtype
argument of diffusers' ``from_pretrained``, in one place for every stage."""

from __future__ import annotations

from typing import Optional

import torch


def resolve_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``device`` as a ``torch.device``; None: the first CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
