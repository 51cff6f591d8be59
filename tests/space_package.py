"""The Space's package (examples/space/dbb_space), imported as the Space imports it, for the
tests that drive its computation without a browser."""

import importlib
import sys
from pathlib import Path

SPACE = Path(__file__).resolve().parents[1] / "examples" / "space"


def load_app():
    """The Space's package, imported as ``python app.py`` imports it (from the Space's folder)."""
    if str(SPACE) not in sys.path:
        sys.path.insert(0, str(SPACE))
    package = importlib.import_module("dbb_space")
    for module in ("settings", "models", "edit", "uploads", "page"):
        importlib.import_module(f"dbb_space.{module}")
    return package
