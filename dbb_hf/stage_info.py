"""``stage.json``: the mark a finished stage folder holds, and the one reader of it.

A stage writes the file last (:func:`dbb_hf.stages.save_stage_output`, or the pipeline for a
model stage), so its presence means the stage finished. It records the stage's
``fingerprint`` and what else the stage says about itself (the input a column stage was
joined to, where an augmented folder's real splits are). This module is light (json only)
so that :mod:`dbb_hf.augmented` can read it without importing the stages machinery.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STAGE_INFO = "stage.json"


def read_stage_info(stage_dir: str | os.PathLike) -> dict | None:
    """A stage folder's ``stage.json``, or None when no finished stage is there."""
    path = Path(stage_dir) / STAGE_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def saved_fingerprint(stage_dir: str | os.PathLike) -> str | None:
    """The fingerprint of the stage finished in ``stage_dir``, or None."""
    info = read_stage_info(stage_dir)
    return None if info is None else info.get("fingerprint")
