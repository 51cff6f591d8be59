"""Training state (optimizer state, step counters, adapter weights) saved as safetensors.

``torch.save`` writes a pickle, and reading a pickle can run code. Here every tensor of a
nested dict / list / tuple structure goes into a safetensors file and the structure
itself, with plain values (numbers, strings, booleans, None), into its metadata as JSON,
so reading a state back never unpickles anything. Dict keys keep their types (an
optimizer's state is keyed by parameter index).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STATE_KEY = "dbb_hf_state"
_TENSOR, _DICT, _TUPLE = "__tensor__", "__dict__", "__tuple__"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, dict):
        return {_DICT: [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a state file holds tensors, dicts, lists, tuples and plain values, not {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(_decode(v, tensors) for v in value[_TUPLE])
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value[_DICT]}
    return value


def save_state_file(state: Any, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` (safetensors: tensors, plus the structure as JSON metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(state, tensors))
    save_file(tensors, str(path), metadata={STATE_KEY: structure})


def load_state_file(path: str | os.PathLike, device: str = "cpu") -> Any:
    """The structure :func:`save_state_file` wrote, its tensors on ``device``."""
    with safe_open(str(path), framework="pt", device=device) as handle:
        metadata = handle.metadata() or {}
        if STATE_KEY not in metadata:
            raise ValueError(f"{path} is a safetensors file but not a dbb_hf state file (no {STATE_KEY!r} metadata)")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return _decode(json.loads(metadata[STATE_KEY]), tensors)
