"""Upload safety: an uploaded file is checked against the Space's limits before it is decoded."""

from __future__ import annotations

import os
import warnings
from typing import Optional

import gradio as gr
from PIL import Image, ImageOps, UnidentifiedImageError

from .settings import SpaceConfig


def _file_size(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


def open_upload(path: str | os.PathLike, limits: SpaceConfig) -> Image.Image:
    """An uploaded file as a decoded image, or a ``gr.Error`` that says what is wrong with it.

    The size in bytes and the dimensions (read from the header: nothing is decoded yet)
    are checked against the limits first, so neither a huge file nor a decompression bomb
    (a small file that decodes to billions of pixels) is ever decoded. The messages never
    repeat the file's name: gradio renders them as HTML.
    """
    size = os.path.getsize(path)
    if size > limits.max_upload_bytes:
        raise gr.Error(
            f"The upload is {_file_size(size)}; this Space accepts images up to {_file_size(limits.max_upload_bytes)}."
        )
    too_large = (
        f"this Space accepts images of at most {limits.max_upload_pixels:,} pixels "
        f"and {limits.max_upload_side} pixels a side."
    )
    try:
        with warnings.catch_warnings():
            # The limits below decide; PIL still refuses outright what is twice its own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise gr.Error(f"The upload has too many pixels; {too_large}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise gr.Error("The upload is not an image this Space can read: use a PNG, JPEG or WebP file.") from None
    width, height = image.size
    if width * height > limits.max_upload_pixels or max(width, height) > limits.max_upload_side:
        raise gr.Error(f"The upload is {width} x {height} pixels; {too_large}")
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise gr.Error(f"The upload is a damaged or truncated image that cannot be decoded ({error}).") from None


def checked_image(limits: SpaceConfig, **kwargs) -> gr.Image:
    """A ``gr.Image`` whose uploads go through :func:`open_upload` instead of gradio's decoding.

    The page gets a clear message for an oversize, non-image or damaged upload instead of
    a bare "Error", and the limits hold for the page and its API alike.
    """
    component = gr.Image(type="pil", **kwargs)

    def preprocess(payload) -> Optional[Image.Image]:
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("Upload the image as a file.")
        return open_upload(payload.path, limits)

    # gradio calls the instance's preprocess; a gr.Image subclass would instead make gradio
    # write a type stub (.pyi) beside this file whenever it is imported.
    component.preprocess = preprocess
    return component
