"""Config presets shipped with the package (YAML, nested by section).

``demo.yaml`` is the demo's run (toy benchmark, ERM, selection, retraining) with the
``compose`` generator; ``demo_diffusion.yaml`` holds what ``--generator diffusion``
changes on top of it. A YAML file cannot name a path inside the installed package, so the
diffusion preset writes the miniature prior as :data:`MINIATURE_PRIOR`, which
:func:`demo_preset` replaces by :data:`dbb_hf.miniature.PRIOR_PATH`.
"""

from __future__ import annotations

import os

from ..config import load_yaml, merge_sections

PRESETS_DIR = os.path.dirname(__file__)
DEMO_PRESET = os.path.join(PRESETS_DIR, "demo.yaml")
DEMO_DIFFUSION_PRESET = os.path.join(PRESETS_DIR, "demo_diffusion.yaml")
DEMO_GENERATORS = {"compose": (), "diffusion": (DEMO_DIFFUSION_PRESET,)}
# The generator `dbb-hf demo` uses when --generator is not given: diffusion since the
# miniature prior passed its quality gates (dbb_hf/miniature/prior/README.md).
DEFAULT_DEMO_GENERATOR = "diffusion"
# A preset value standing for the miniature prior shipped in the package.
MINIATURE_PRIOR = "<miniature-prior>"


def resolve_package_paths(sections: dict) -> dict:
    """Replace every field value equal to :data:`MINIATURE_PRIOR` by the prior's folder."""
    from ..miniature import PRIOR_PATH

    return {
        section: {k: PRIOR_PATH if v == MINIATURE_PRIOR else v for k, v in values.items()}
        if isinstance(values, dict) else values
        for section, values in sections.items()
    }


def demo_preset(generator: str = DEFAULT_DEMO_GENERATOR) -> dict:
    """The demo's YAML sections for ``generator`` ("diffusion" or "compose"), package paths resolved."""
    if generator not in DEMO_GENERATORS:
        raise ValueError(f"generator must be one of {sorted(DEMO_GENERATORS)}, got {generator!r}")
    sections = load_yaml(DEMO_PRESET)
    for overlay in DEMO_GENERATORS[generator]:
        sections = merge_sections(sections, load_yaml(overlay))
    return resolve_package_paths(sections)
