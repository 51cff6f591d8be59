"""Presets: YAML layers shipped with the package, and the builders of what their values name.

A preset is a YAML file in this folder, nested by section like a recipe's YAML:

- ``demo.yaml``: the demo's run (toy benchmark, ERM, selection, retraining) with the
  ``compose`` generator; ``demo_diffusion.yaml`` is what ``dbb-hf demo --generator
  diffusion`` changes on top of it;
- ``tiny.yaml``: every model swapped for a tiny random one built offline, and short
  trainings (``recipes/<dataset>.py --preset tiny``: the real code paths in seconds);
- ``miniature.yaml``: ``recipes/celeba.py --preset miniature``, the whole method offline
  on real aligned faces with the shipped face prior (``<miniature-face-prior>``), the
  ``template`` hair masks and a classifier trained from scratch at the prior's 64 px;
- ``full_size_random.yaml``: every default model at its real architecture with random
  weights (:mod:`dbb_hf.full_size`), the recipe's settings unchanged: the real code path
  at full size, for time, memory and FLOPs (``benchmarks/full_size_dry_run.py``).

Every command, recipe and the Space read presets the same way
(:func:`dbb_hf.config.resolve_configs`): ``--preset NAME [NAME ...]`` (a name here or the
path of a YAML file) applies them in order over the recipe's YAML and under
``--config FILE`` and the flags.

A YAML file cannot name a model that does not exist yet or a folder inside the installed
package, so a preset value ``<builder>`` or ``<builder:key>`` stands for what a registered
*builder* makes: ``<miniature-prior>`` is the miniature prior shipped in the package,
``<tiny:inpaint>`` the tiny inpainting pipeline that the ``tiny`` builder saves under
``<run folder>/tiny_models/``. A builder runs once per run folder, on the main process.

Adding a preset is declarative: write ``dbb_hf/presets/<name>.yaml``. When it needs models
made first, also register one builder, anywhere that is imported before the configs are
read (here for the package's own presets)::

    @builder("my-models")
    def build_my_models(folder: Path) -> dict[str, str]:
        ...  # save each model under folder (skip what is already there), return {key: path}

and write ``<my-models:key>`` in the YAML. ``@builder(name, needs_folder=False)`` is for
values that need no building (``<miniature-prior>``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..config import load_yaml, resolve_layers

PRESETS_DIR = os.path.dirname(__file__)
DEMO_PRESET = os.path.join(PRESETS_DIR, "demo.yaml")
# The presets each `dbb-hf demo --generator` runs, in order.
DEMO_GENERATORS = {"compose": ("demo",), "diffusion": ("demo", "demo_diffusion")}
# The generator `dbb-hf demo` uses when --generator is not given: diffusion since the
# miniature prior passed its quality gates (dbb_hf/miniature/prior/README.md).
DEFAULT_DEMO_GENERATOR = "diffusion"
# A preset value standing for the miniature prior shipped in the package.
MINIATURE_PRIOR = "<miniature-prior>"


def preset_names() -> list[str]:
    return sorted(name[: -len(".yaml")] for name in os.listdir(PRESETS_DIR) if name.endswith(".yaml"))


def load_preset(name: str | os.PathLike) -> dict:
    """The sections of preset ``name``: a preset of this folder, or the path of a YAML file."""
    name = os.fspath(name)
    if name.endswith((".yaml", ".yml")) and os.path.isfile(name):
        return load_yaml(name)
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}: presets are {preset_names()}, or the path of a YAML file")
    return load_yaml(os.path.join(PRESETS_DIR, f"{name}.yaml"))


@dataclass
class LayerArgs:
    """The flags that name YAML layers, read before the other flags (their values are defaults)."""

    config: Optional[str] = field(
        default=None,
        metadata={"help": "A YAML file of config sections {section: {field: value}} (a recipe's YAML, or a run's "
                  "config.yaml): defaults over the presets, under the flags."},
    )
    preset: Optional[list[str]] = field(
        default=None,
        metadata={"help": f"Preset(s) applied in order under --config and the flags: {', '.join(preset_names())} "
                  "(dbb_hf/presets), or paths of YAML files."},
    )


# ----------------------------------------------------------------------------- builders

BUILDERS: dict[str, tuple[Callable[[Optional[Path]], Any], bool]] = {}
_PLACEHOLDER = re.compile(r"^<([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_.-]+))?>$")


def builder(name: str, *, needs_folder: bool = True):
    """Register ``build(folder)`` as what ``<name>`` / ``<name:key>`` preset values stand for.

    ``folder`` is ``<run folder>/<name>_models`` (None with ``needs_folder=False``); the
    builder returns the value itself, or a mapping of values by key. It must skip what is
    already built, as a rerun calls it again.
    """

    def register(build):
        BUILDERS[name] = (build, needs_folder)
        return build

    return register


@dataclass(frozen=True)
class Placeholder:
    """A config value that a builder has yet to make (``<tiny:inpaint>``)."""

    text: str

    def __str__(self) -> str:
        return self.text


def as_placeholder(value: Any) -> Any:
    """``value`` as a :class:`Placeholder` when it names a registered builder, else unchanged."""
    if isinstance(value, str):
        match = _PLACEHOLDER.match(value)
        if match and match.group(1) in BUILDERS:
            return Placeholder(value)
    return value


def _built(placeholder: Placeholder, root: str | os.PathLike | None, built: dict) -> Any:
    name, key = _PLACEHOLDER.match(placeholder.text).groups()
    build, needs_folder = BUILDERS[name]
    if name not in built:
        if needs_folder and root is None:
            raise ValueError(f"{placeholder} is built into a folder, and none was given")
        built[name] = build(Path(root) / f"{name}_models" if needs_folder else None)
    value = built[name]
    if key is None:
        return value
    if not isinstance(value, Mapping) or key not in value:
        made = sorted(value) if isinstance(value, Mapping) else type(value).__name__
        raise ValueError(f"{placeholder}: builder {name!r} makes {made}, not {key!r}")
    return value[key]


def has_placeholder(config: Any) -> bool:
    """Whether a field of ``config`` (a dataclass) is still to be built."""
    return any(isinstance(getattr(config, f.name), Placeholder) for f in dataclasses.fields(config) if f.init)


def materialize(config: Any, root: str | os.PathLike | None, built: dict | None = None) -> Any:
    """``config`` (a dataclass) with its :class:`Placeholder` fields built; ``built`` caches the builders' results."""
    built = {} if built is None else built
    changes = {
        f.name: _built(getattr(config, f.name), root, built)
        for f in dataclasses.fields(config)
        if f.init and isinstance(getattr(config, f.name), Placeholder)
    }
    # replace() runs __post_init__ again: the built values are validated like any other.
    return dataclasses.replace(config, **changes) if changes else config


def resolve_placeholders(sections: Mapping, root: str | os.PathLike | None = None) -> dict:
    """YAML sections with every placeholder value replaced by what its builder makes under ``root``."""
    built: dict = {}

    def resolve(value):
        value = as_placeholder(value)
        return _built(value, root, built) if isinstance(value, Placeholder) else value

    return {
        section: {k: resolve(v) for k, v in values.items()} if isinstance(values, Mapping) else values
        for section, values in sections.items()
    }


@builder("miniature-prior", needs_folder=False)
def miniature_prior(_folder: None = None) -> str:
    from ..miniature import PRIOR_PATH

    return PRIOR_PATH


@builder("miniature-face-prior", needs_folder=False)
def miniature_face_prior(_folder: None = None) -> str:
    from ..miniature import FACE_PRIOR_PATH

    return FACE_PRIOR_PATH


@builder("tiny")
def build_tiny_models(folder: str | os.PathLike) -> dict[str, str]:
    """Tiny random SD (text-to-image and inpainting), GroundingDINO and SAM, saved once."""
    from ..processes import process_state
    from ..tiny.detection import save_tiny_grounding_dino, save_tiny_sam
    from ..tiny.diffusion import save_tiny_inpaint_pipeline, save_tiny_text2img_pipeline

    folder = Path(folder)
    builders = {
        "text2img": save_tiny_text2img_pipeline,
        "inpaint": save_tiny_inpaint_pipeline,
        "detector": save_tiny_grounding_dino,
        "segmenter": save_tiny_sam,
    }
    state = process_state()  # often a run's first state: its processes start with the long barrier timeout
    paths = {name: str(folder / name) for name in builders}
    if state.is_main_process:
        for name, build in builders.items():
            done = folder / f"{name}.done"
            if not done.exists():
                build(paths[name])
                done.touch()
    state.wait_for_everyone()
    return paths


@builder("full_size")
def build_full_size_random_models(folder: str | os.PathLike) -> dict[str, str]:
    """Every default model at its real architecture with random weights (:mod:`dbb_hf.full_size`), saved once."""
    from ..full_size import build_full_size_models, model_paths
    from ..processes import process_state

    state = process_state()
    if state.is_main_process:
        build_full_size_models(folder)  # skips the models already saved there
    state.wait_for_everyone()
    return model_paths(folder)


def demo_preset(generator: str = DEFAULT_DEMO_GENERATOR) -> dict:
    """The demo's YAML sections for ``generator`` ("diffusion" or "compose"), package paths resolved."""
    if generator not in DEMO_GENERATORS:
        raise ValueError(f"generator must be one of {sorted(DEMO_GENERATORS)}, got {generator!r}")
    return resolve_layers(presets=DEMO_GENERATORS[generator])
