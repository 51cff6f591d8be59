"""Config sections, their YAML form, and their command-line form.

Every stage has its own config dataclass; a whole run is a set of named sections
(``classifier``, ``erm``, ``masking``, ...). Stage configs share field names (``seed``,
``batch_size``, ``model_id``), so on the command line each field is prefixed with its
section (``--masking_box_threshold 0.3``); :func:`section_parser` builds an
``HfArgumentParser`` over prefixed copies of the dataclasses and :func:`parse_sections`
turns the result back into the real config objects. YAML files hold the nested form
``{section: {field: value}}``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, field, fields, make_dataclass
from typing import Any, Mapping, Sequence

import yaml
from transformers import HfArgumentParser

from .images import BAD_IMAGE_POLICIES, verify_images


def _prefixed(section: str, cls: type) -> type:
    # Modules with `from __future__ import annotations` store types as strings; resolve them
    # in the module that defined them, since the copy lives elsewhere.
    hints = typing.get_type_hints(cls)
    specs = []
    for f in fields(cls):
        if not f.init:
            continue
        kwargs = {"metadata": dict(f.metadata)}
        if f.default is not MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not MISSING:
            kwargs["default_factory"] = f.default_factory
        specs.append((f"{section}_{f.name}", hints[f.name], field(**kwargs)))
    return make_dataclass(f"{cls.__name__}Args_{section}", specs)


def section_parser(sections: Mapping[str, type], plain: Sequence[type] = ()) -> HfArgumentParser:
    """An HfArgumentParser over ``plain`` dataclasses and prefixed copies of ``sections``."""
    types = list(plain) + [_prefixed(name, cls) for name, cls in sections.items()]
    return HfArgumentParser(types)


PLAIN_SECTIONS = ("data", "run", "compare")  # YAML sections whose fields are not prefixed on the command line


def flatten(nested: Mapping[str, Mapping[str, Any]]) -> dict:
    """``{section: {field: v}}`` -> ``{section_field: v}`` (CLI defaults from a YAML file)."""
    flat = {}
    for section, values in nested.items():
        if not isinstance(values, Mapping):
            flat[section] = values
            continue
        for key, value in values.items():
            flat[key if section in PLAIN_SECTIONS else f"{section}_{key}"] = value
    return flat


def parse_sections(
    sections: Mapping[str, type],
    plain: Sequence[type] = (),
    args: Sequence[str] | None = None,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
):
    """Parse ``args`` into (plain configs..., {section: config}); ``defaults`` come from YAML."""
    parser = section_parser(sections, plain)
    if defaults:
        known = {action.dest for action in parser._actions}
        flat = flatten(defaults)
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        parser.set_defaults(**flat)
    parsed = parser.parse_args_into_dataclasses(args=args)
    plain_out = list(parsed[: len(plain)])
    configs = {}
    for (name, cls), prefixed in zip(sections.items(), parsed[len(plain) :]):
        values = {f.name[len(name) + 1 :]: getattr(prefixed, f.name) for f in fields(prefixed)}
        configs[name] = cls(**values)
    return (*plain_out, configs)


def pop_flag(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """Pull ``flag VALUE`` out of argv: (VALUE or None, the other arguments).

    For the few flags a command reads itself (``--preset``, ``--generator``) before the
    rest of argv goes to the section parser.
    """
    if flag not in argv:
        return None, argv
    i = argv.index(flag)
    if i + 1 >= len(argv):
        raise SystemExit(f"{flag} needs a value")
    return argv[i + 1], argv[:i] + argv[i + 2 :]


def merge_sections(base: dict, overrides: dict) -> dict:
    """``{section: {field: value}}`` of ``base`` with the fields of ``overrides`` replacing its own."""
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in base.items()}
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def load_yaml(path: str) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def to_yaml(configs: Mapping[str, Any]) -> str:
    """The nested YAML form of config objects (dataclasses become mappings)."""
    plain = {
        name: dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg for name, cfg in configs.items()
    }
    return yaml.safe_dump(plain, sort_keys=False)


@dataclasses.dataclass
class DataConfig:
    dataset: str = field(default="toy", metadata={"help": "toy, celeba, waterbirds, metashift or hub."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Data folder (for hub: a Hub dataset id or a local folder)."}
    )
    options: list[str] = field(
        default_factory=list,
        metadata={"help": "Loader options as key=value, e.g. identity_split=true target_attribute=Blond_Hair."},
    )
    bad_images: str = field(
        default="error",
        metadata={"help": "Unreadable (corrupt, truncated) images found when loading: error (name them), "
                  "drop (remove their rows; the run's report lists them) or off (no check)."},
    )

    def __post_init__(self):
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {self.bad_images!r}")

    def option_dict(self) -> dict:
        out = {}
        for item in self.options:
            if "=" not in item:
                raise ValueError(f"dataset option {item!r} is not of the form key=value")
            key, value = item.split("=", 1)
            out[key.strip()] = yaml.safe_load(value)
        return out

    def load(self):
        return self.load_checked()[0]

    def load_checked(self):
        """The dataset, every ``image`` decoded once and unreadable ones handled by ``bad_images``,
        and the dropped rows (``{"split", "example_id", "reason"}``)."""
        from .data import load_benchmark

        return verify_images(load_benchmark(self.dataset, self.data_dir, **self.option_dict()), self.bad_images)
