"""Config presets shipped with the package (YAML, nested by section)."""

import os

DEMO_PRESET = os.path.join(os.path.dirname(__file__), "demo.yaml")
