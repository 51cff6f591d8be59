"""Reading images safely: every stage sees RGB with the source's range, and an image that
cannot be decoded becomes a clear error or a per-row failure with its reason.

- :func:`to_rgb` converts any PIL mode to RGB. PIL's own ``convert("RGB")`` clips 16-bit
  and 32-bit integer images (``I;16``, ``I``) to 0..255, so a 16-bit photograph comes out
  white; here they are scaled (65535 -> 255). Alpha is dropped, as timm, diffusers'
  ``load_image`` and ``datasets`` do, so dbb_hf sees the colours a classifier trained
  with those libraries saw. CMYK, palette, grayscale and bilevel images use PIL's
  conversion.
- :func:`decode_image` decodes one dataset cell (a PIL image, or the ``{"bytes",
  "path"}`` dict of an ``Image(decode=False)`` column) completely, so truncated files
  fail here rather than later, and raises :class:`UnreadableImageError` whose message is
  the reason, without the memory addresses PIL puts in its messages (reasons are saved in
  datasets and must not change between runs).
- :func:`verify_images` decodes every image of a dataset once, at load time, and either
  raises naming the unreadable files or drops them and returns them with their reasons.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Image as ImageFeature
from PIL import Image

from .errors import DatasetFormatError

# Integer modes wider than 8 bits, and the factor that maps their full range onto 0..255.
WIDE_INTEGER_MODES = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0}
BAD_IMAGE_POLICIES = ("error", "drop", "off")
# Datasets larger than this are verified with several processes.
PARALLEL_ABOVE = 20_000
QUOTED = 10

_DECODER = ImageFeature()
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


class UnreadableImageError(ValueError):
    """An image cell that cannot be decoded; the message is the reason."""


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB: wide integer modes scaled to 8 bits, alpha dropped, others via PIL."""
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_INTEGER_MODES:
        values = np.asarray(image).astype(np.float64) / WIDE_INTEGER_MODES[image.mode]
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise UnreadableImageError(f"cannot convert an image of mode {image.mode!r} to RGB: {error}") from None


def describe_error(error: BaseException) -> str:
    """A stable, one-line reason for ``error`` (no object addresses)."""
    message = _OBJECT_REPR.sub("", str(error)).strip() or type(error).__name__
    return " ".join(message.split())


def decode_image(value: Any) -> Image.Image:
    """A fully decoded PIL image from a dataset cell, or :class:`UnreadableImageError`.

    ``value`` is a PIL image (decoded by ``datasets``), a ``{"bytes", "path"}`` dict, or a
    file path. Decoding reads every pixel: truncated files fail here, not in a stage.
    """
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    try:
        image = value if isinstance(value, Image.Image) else _DECODER.decode_example(value)
        image.load()
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, ... for bad bytes
        reason = describe_error(error)
        if path and os.path.basename(path) not in reason:
            reason += f" ({path})"
        raise UnreadableImageError(reason) from None
    return image


def failure_reason(column: str, value: Any) -> str | None:
    """None when the cell decodes, else ``"failed: unreadable <column>: <reason>"``."""
    try:
        decode_image(value)
    except UnreadableImageError as error:
        return f"failed: unreadable {column}: {error}"
    return None


def _reasons(batch: dict, column: str) -> dict:
    return {
        "_unreadable": [
            f"failed: missing {column}" if value is None else failure_reason(column, value) for value in batch[column]
        ]
    }


def unreadable_rows(dataset: Dataset, column: str = "image", num_proc: int | None = None) -> list[tuple[int, str]]:
    """``(row index, reason)`` of every row of ``dataset`` whose ``column`` is empty or cannot be decoded.

    Uses several processes for large datasets unless ``num_proc`` says otherwise.
    """
    if column not in dataset.column_names or len(dataset) == 0:
        return []
    if num_proc is None and len(dataset) > PARALLEL_ABOVE:
        num_proc = min(8, os.cpu_count() or 1)
    raw = dataset.select_columns([column]).cast_column(column, ImageFeature(decode=False))
    found = raw.map(
        _reasons, batched=True, batch_size=256, remove_columns=[column], fn_kwargs={"column": column},
        num_proc=num_proc, keep_in_memory=True, desc=f"verifying {column}",
    )["_unreadable"]
    return [(i, reason) for i, reason in enumerate(found) if reason is not None]


def verify_images(
    dataset: DatasetDict, policy: str = "error", column: str = "image", num_proc: int | None = None
) -> tuple[DatasetDict, list[dict]]:
    """Decode every ``column`` image of every split once; handle unreadable ones by ``policy``.

    ``error``: raise :class:`DatasetFormatError` naming them (all counted, the first few
    quoted with their reasons); ``drop``: remove their rows; ``off``: do nothing. Returns
    the dataset and the dropped rows as ``{"split", "example_id", "reason"}``.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
    if policy == "off":
        return dataset, []
    dropped = []
    for split, data in dataset.items():
        bad = unreadable_rows(data, column, num_proc)
        ids = data.select([i for i, _ in bad])["example_id"] if bad and "example_id" in data.column_names else None
        for k, (i, reason) in enumerate(bad):
            dropped.append({"split": split, "row": i, "example_id": ids[k] if ids else f"row {i}", "reason": reason})
    if dropped and policy == "error":
        quoted = "; ".join(f"{d['split']}/{d['example_id']}: {d['reason']}" for d in dropped[:QUOTED])
        raise DatasetFormatError(
            f"{len(dropped)} unreadable image(s) in column {column!r}: {quoted}"
            f"{' ...' if len(dropped) > QUOTED else ''}. Replace or remove these files, or drop their rows "
            "(--bad_images drop; the report lists them)."
        )
    return keep_rows(dataset, dropped), dropped


def keep_rows(dataset: DatasetDict, dropped: list[dict]) -> DatasetDict:
    """``dataset`` without the rows :func:`verify_images` dropped (``{"split", "row", ...}``),
    without decoding anything: another process applies the main process's verdict this way."""
    kept = {}
    for split, data in dataset.items():
        bad_rows = {d["row"] for d in dropped if d["split"] == split}
        kept[split] = data.select([i for i in range(len(data)) if i not in bad_rows]) if bad_rows else data
    return DatasetDict(kept)
