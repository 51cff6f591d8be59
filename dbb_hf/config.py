"""Config sections, their YAML form, their command-line form, and the one path from YAML
layers plus flags to config objects.

Every stage has its own config dataclass; a whole run is a set of named sections
(``classifier``, ``erm``, ``masking``, ...). Stage configs share field names (``seed``,
``batch_size``, ``model_id``), so on the command line each field is prefixed with its
section (``--masking_box_threshold 0.3``); the ``data`` and ``run`` sections are not
prefixed (``--dataset``, ``--output_dir``). YAML files hold the nested form
``{section: {field: value}}``.

:func:`resolve_configs` is the one way settings are read: YAML layers (a recipe's YAML,
the presets of :mod:`dbb_hf.presets`, ``--config FILE``), then the command-line flags,
into section configs. Every ``dbb-hf`` command, the recipes, the Space and the
crash-test runner call it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from dataclasses import MISSING, field, fields, make_dataclass
from typing import Any, Mapping, Sequence

import yaml
from transformers import HfArgumentParser

from .images import BAD_IMAGE_POLICIES, verify_images

# YAML sections whose fields are not prefixed on the command line.
PLAIN_SECTIONS = ("data", "run")
# Top-level keys of a YAML layer that are not sections: what a run's config.yaml records
# about itself, so that a run's config.yaml can be given back as --config.
METADATA_KEYS = ("dbb_hf_version", "resolved_revisions")  # written beside the configs, not read back


def _copy_fields(cls: type, name: str, *, prefix: str = "", only: Sequence[str] | None = None) -> type:
    """A dataclass ``name`` with ``cls``'s init fields (those in ``only``), each renamed ``prefix + field``."""
    # Modules with `from __future__ import annotations` store types as strings; resolve them
    # in the module that defined them, since the copy lives elsewhere.
    hints = typing.get_type_hints(cls)
    specs = []
    for f in fields(cls):
        if not f.init or (only is not None and f.name not in only):
            continue
        kwargs = {"metadata": dict(f.metadata)}
        if f.default is not MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not MISSING:
            kwargs["default_factory"] = f.default_factory
        specs.append((prefix + f.name, hints[f.name], field(**kwargs)))
    return make_dataclass(name, specs)


def _prefixed(section: str, cls: type) -> type:
    return _copy_fields(cls, f"{cls.__name__}Args_{section}", prefix=f"{section}_")


def subset(cls: type, names: Sequence[str]) -> type:
    """A dataclass with only the fields ``names`` of ``cls`` (same types, defaults and help).

    For a command that reads a few fields of a section (``dbb-hf mask`` takes ``run``'s
    ``class_prompts`` and ``device``): its flags, help and YAML keys are the section's own.
    """
    missing = sorted(set(names) - {f.name for f in fields(cls)})
    if missing:
        raise ValueError(f"{cls.__name__} has no field(s) {missing}")
    copy = _copy_fields(cls, f"{cls.__name__}Subset", only=names)
    copy.section_class = cls
    return copy


# argparse before Python 3.13 takes "-1e9" for a flag (its negative numbers are -N and -N.M
# only), so `--pruning_P -1e9` failed; this is 3.13's own pattern. No flag starts with a digit.
_NEGATIVE_NUMBER = re.compile(r"-\.?\d")


def _parser(types, **kwargs) -> HfArgumentParser:
    parser = HfArgumentParser(types, **kwargs)
    parser._negative_number_matcher = _NEGATIVE_NUMBER
    return parser


def section_parser(sections: Mapping[str, type], plain: Sequence[type] = ()) -> HfArgumentParser:
    """An HfArgumentParser over ``plain`` dataclasses and prefixed copies of ``sections``."""
    types = list(plain) + [_prefixed(name, cls) for name, cls in sections.items()]
    return _parser(types)


def pipeline_sections() -> dict[str, type]:
    """Every section a YAML layer may hold: ``data``, ``run``, the pipeline's stage sections and
    ``dbb-hf compare``'s (``compare`` and the baselines' own), so one recipe YAML serves every command."""
    from .compare import SECTIONS, CompareConfig
    from .pipeline import RunConfig

    return {"data": DataConfig, "run": RunConfig, "compare": CompareConfig, **SECTIONS}


def check_layer(name: str, layer: Mapping, known: Mapping[str, type]) -> dict[str, type]:
    """Raise a ValueError naming ``name`` (a file, preset or source) for a section or field that
    no config has; ``known`` maps the command's own sections to their classes. Returns the
    class of each section of ``layer``."""
    schema = None
    classes = {}
    for section, values in layer.items():
        if section in METADATA_KEYS:
            continue
        cls = known.get(section)
        if cls is None:
            schema = schema or pipeline_sections()
            cls = schema.get(section)
        if cls is None:
            raise ValueError(
                f"{name}: unknown config section {section!r}; sections: {sorted({*known, *(schema or {})})}"
            )
        if not isinstance(values, Mapping):
            raise ValueError(f"{name}: section {section!r} must map field names to values, got {values!r}")
        names = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{name}: unknown field(s) {unknown} in section {section!r}; its fields are {names}")
        classes[section] = cls
    return classes


REMOVE = "~"  # "~key" removes the key an earlier layer set (Hydra's override syntax)


def keyed_fields(cls: type) -> dict[str, tuple[str, Any]]:
    """The fields of ``cls`` (or of the section a :func:`subset` copies) that hold ``key=value``
    items and merge by key across layers rather than being replaced, so that a recipe's
    options survive a flag that sets one more: ``{field: (the field its items belong to, that
    field's default)}``, from the class's ``merged_by_key``. A layer that changes that field
    (another ``dataset``) starts the list afresh: the lower layers' items were for another loader."""
    # A class attribute, not field metadata: HfArgumentParser passes metadata on to argparse.
    section_class = getattr(cls, "section_class", cls)
    every = {f.name: f for f in fields(section_class)}
    own = {f.name for f in fields(cls)}
    return {name: (scope, _default(every[scope]))
            for name, scope in getattr(section_class, "merged_by_key", {}).items() if name in own}


def _default(spec) -> Any:
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


def option_key(item: Any, where: str) -> str:
    """The key of a ``key=value`` item; a ValueError naming ``where`` for anything else."""
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"{where}: option {item!r} is not of the form key=value (or {REMOVE}key to remove one)")
    return item.split("=", 1)[0].strip()


def merge_by_key(base: Any, override: Any, where: str) -> list[str]:
    """The ``key=value`` items of ``base`` with those of ``override`` replacing the ones of
    their key (in place; new keys last), and the keys ``override`` names as ``~key`` removed."""
    def items(value) -> list:
        return [] if value is None else [value] if isinstance(value, str) else list(value)

    merged = {option_key(item, where): item for item in items(base)}
    for item in items(override):
        if isinstance(item, str) and item.startswith(REMOVE):
            key = item[len(REMOVE):].strip()
            if key not in merged:
                raise ValueError(f"{where}: {item!r} removes option {key!r}, which no earlier layer sets "
                                 f"(set: {sorted(merged) or 'none'})")
            del merged[key]
        else:
            merged[option_key(item, where)] = item
    return list(merged.values())


def merge_sections(base: dict, overrides: dict, keyed: Mapping[str, dict] | None = None, name: str = "") -> dict:
    """``{section: {field: value}}`` of ``base`` with the fields of ``overrides`` replacing its own;
    the fields ``keyed[section]`` (:func:`keyed_fields`) are merged by key (:func:`merge_by_key`;
    ``name``, the overriding layer, goes in its errors)."""
    keyed = keyed or {}
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in base.items()}
    for section, values in overrides.items():
        if not isinstance(values, dict):
            merged[section] = values
            continue
        if not isinstance(merged.get(section), dict):
            merged[section] = {}
        target = merged[section]
        for key, (scope, default) in keyed.get(section, {}).items():
            if scope in values and values[scope] != target.get(scope, default):
                target.pop(key, None)
        for key, value in values.items():
            if key in keyed.get(section, {}):
                value = merge_by_key(target.get(key), value, f"{name}: {section} {key}" if name else f"{section} {key}")
            target[key] = value
    return merged


def load_yaml(path: str | os.PathLike) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def _named_layer(layer) -> tuple[str, dict]:
    """(name for error messages, sections) of a layer given as a YAML path, a mapping or a (name, mapping) pair."""
    if isinstance(layer, tuple):
        return layer
    if isinstance(layer, Mapping):
        return "defaults", dict(layer)
    return os.fspath(layer), load_yaml(layer)


def merge_layers(layers: Sequence = (), presets: Sequence[str] = (), overrides: Sequence = (),
                 known: Mapping[str, type] | None = None) -> dict:
    """``layers``, then ``presets`` (names or YAML paths), then ``overrides``, each checked, merged in order."""
    from .presets import load_preset

    stack = [_named_layer(layer) for layer in layers]
    stack += [(f"preset {name!r}", load_preset(name)) for name in presets]
    stack += [_named_layer(layer) for layer in overrides]
    merged: dict = {}
    for name, sections in stack:
        classes = check_layer(name, sections, known or {})
        # A run's config.yaml is the whole record of what the run used: its option lists
        # replace the lower layers' (a key the run removed stays removed when it is given back).
        keyed = {} if "dbb_hf_version" in sections else {s: keyed_fields(cls) for s, cls in classes.items()}
        merged = merge_sections(merged, sections, keyed, name)
    return merged


def resolve_layers(layers: Sequence = (), presets: Sequence[str] = (), overrides: Sequence = (),
                   build_root: str | os.PathLike | None = None) -> dict:
    """The merged sections of YAML layers, every preset placeholder replaced by what it stands for
    (models are built under ``build_root``; see :mod:`dbb_hf.presets`)."""
    from .presets import resolve_placeholders

    return resolve_placeholders(merge_layers(layers, presets, overrides), build_root)


def preparse(cls: type, args: Sequence[str], defaults: Mapping[str, Any] | None = None) -> tuple[Any, list[str]]:
    """``cls``'s flags taken out of ``args``: (a ``cls`` instance, the other arguments).

    For flags that decide how the rest is read (``--config``, ``--preset``, the Space's
    ``--tiny``); the rest goes to the full parser afterwards.
    """
    parser = _parser(cls, add_help=False, allow_abbrev=False)
    if defaults:
        parser.set_defaults(**defaults)
    namespace, rest = parser.parse_known_args(args=list(args))
    return cls(**vars(namespace)), rest


def _unused_arguments_error(parser: HfArgumentParser, remaining: list[str]) -> ValueError:
    """The unknown flags, each with the flags of this command it may have meant (``--backend``:
    ``--masking_backend``; ``--train_num_epochs``: ``--erm_num_epochs``)."""
    # HfArgumentParser also accepts each flag with dashes (--masking-backend): name the underscore form.
    options = sorted({o for action in parser._actions for o in action.option_strings if "-" not in o[2:]})
    hints = []
    for arg in remaining:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        tails = [name] + ([name.split("_", 1)[1]] if "_" in name else [])
        for tail in tails:
            close = [o for o in options if o.endswith("_" + tail) or o == f"--{tail}"]
            if close:
                hints.append(f"{arg}: did you mean {' or '.join(close)}?")
                break
    message = f"unknown arguments {remaining}"
    return ValueError(message + ("; " + "; ".join(hints) if hints else "; see --help for every flag"))


def _plain_types(plain: Sequence) -> tuple[list[type], dict[str, type]]:
    """(every plain dataclass, {YAML section: its dataclass}) of ``plain`` entries ``cls`` or ``(section, cls)``."""
    types, by_section = [], {}
    for entry in plain:
        section, cls = entry if isinstance(entry, tuple) else (None, entry)
        types.append(cls)
        if section is not None:
            by_section[section] = cls
    return types, by_section


def _parser_defaults(merged: Mapping, sections: Mapping[str, type], by_section: Mapping[str, type]) -> dict:
    """Parser defaults (flag dests) from the merged YAML sections this command reads."""
    from .presets import as_placeholder

    defaults = {}
    for section, values in merged.items():
        if section in sections:
            defaults.update({f"{section}_{k}": as_placeholder(v) for k, v in values.items()})
        elif section in by_section:
            own = {f.name for f in fields(by_section[section])}
            defaults.update({k: as_placeholder(v) for k, v in values.items() if k in own})
    return defaults


def _keyed_flag_layer(args: list[str], sections: Mapping[str, type], by_section: Mapping[str, type],
                      merged: dict) -> tuple[dict, list[str]]:
    """(``merged`` with the flags of fields merged by key (``--options``) and of the fields they
    belong to (``--dataset``) as its last layer, the other arguments for the parser, which then
    reads the merged values as defaults)."""
    flags, keyed, hints = {}, {}, {}
    for section, cls, prefix in [*((s, c, "") for s, c in by_section.items()),
                                 *((s, c, f"{s}_") for s, c in sections.items())]:
        keyed[section] = keyed_fields(cls)
        hints.update({prefix + name: hint for name, hint in typing.get_type_hints(cls).items()})
        for name, (scope, _) in keyed[section].items():
            flags.update({prefix + f: (section, f) for f in (name, scope) if f in {g.name for g in fields(cls)}})
    if not flags:
        return merged, args
    specs = [(dest, typing.Optional[hints[dest]], field(default=None)) for dest in flags]
    given, args = preparse(make_dataclass("KeyedFlags", specs), args)
    layer: dict = {}
    for dest, (section, name) in flags.items():
        if getattr(given, dest) is not None:
            layer.setdefault(section, {})[name] = getattr(given, dest)
    return merge_sections(merged, layer, keyed, "the command line"), args


def _run_folder(parsed_plain: Sequence, by_section: Mapping[str, type], merged: Mapping) -> str:
    """The run folder, under which presets build their models: the command's ``--output_dir`` of
    the ``run`` section when it has one, else the layers' ``run.output_dir``, else RunConfig's default."""
    run_class = by_section.get("run")
    for value in parsed_plain:
        if run_class is not None and isinstance(value, run_class) and hasattr(value, "output_dir"):
            return value.output_dir
    if "output_dir" in merged.get("run", {}):
        return merged["run"]["output_dir"]
    run_fields = {f.name: f for f in fields(pipeline_sections()["run"])}
    return run_fields["output_dir"].default


def resolve_configs(
    sections: Mapping[str, type],
    plain: Sequence = (),
    args: Sequence[str] | None = None,
    *,
    layers: Sequence = (),
    presets: Sequence[str] = (),
    overrides: Sequence = (),
    build: bool = True,
    build_root: str | os.PathLike | None = None,
):
    """Config objects from YAML layers plus command-line ``args``: ``(*plain configs, {section: config})``.

    ``sections`` are the prefixed sections (``--masking_backend``); ``plain`` the unprefixed
    dataclasses, each ``cls`` (flags only, such as a command's ``--input``) or ``(section,
    cls)``, which also reads that YAML section's fields (``("data", DataConfig)``).

    Layers, lowest first: ``layers`` (a recipe's YAML: paths, mappings or ``(name, mapping)``
    pairs), ``presets`` and then ``--preset NAME...`` (:mod:`dbb_hf.presets`), ``overrides``
    (the Space's environment variables), ``--config FILE``, and last the flags. Every layer
    is checked whole: a section or field that no config has is an error naming the layer,
    even in a section this command does not read (a recipe's YAML works with every command).
    A later layer replaces a field's value, except for ``key=value`` lists (``--options``),
    which merge by key through every layer, flags included (``~key`` removes a key); a run's
    own ``config.yaml`` (it records ``dbb_hf_version``) gives the whole list the run used.

    A preset value such as ``<tiny:inpaint>`` stands for a model its builder makes; with
    ``build`` the builders run (once, on the main process) under ``build_root``, by default
    the run folder (``--output_dir``), and the configs get the built paths. With
    ``build=False`` such fields hold :class:`dbb_hf.presets.Placeholder` objects, to be
    built later with :func:`dbb_hf.presets.materialize`.
    """
    from .presets import LayerArgs, has_placeholder, materialize

    args = list(sys.argv[1:] if args is None else args)
    layer_args, args = preparse(LayerArgs, args)
    plain_types, by_section = _plain_types(plain)
    known = {section: getattr(cls, "section_class", cls) for section, cls in by_section.items()}
    known.update(sections)
    merged = merge_layers(
        layers, [*presets, *(layer_args.preset or ())], [*overrides, *([layer_args.config] if layer_args.config else [])],
        known=known,
    )
    merged, args = _keyed_flag_layer(args, sections, by_section, merged)
    # LayerArgs is parsed again only so that --help lists --config and --preset.
    parser = section_parser(sections, [*plain_types, LayerArgs])
    parser.set_defaults(**_parser_defaults(merged, sections, by_section))
    *parsed, remaining = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    if remaining:
        raise _unused_arguments_error(parser, remaining)
    plain_out = list(parsed[: len(plain_types)])
    configs = {}
    for (name, cls), prefixed in zip(sections.items(), parsed[len(plain_types) + 1 :]):
        configs[name] = cls(**{f.name[len(name) + 1 :]: getattr(prefixed, f.name) for f in fields(prefixed)})
    if build and any(has_placeholder(value) for value in [*plain_out, *configs.values()]):
        root = build_root if build_root is not None else _run_folder(plain_out, by_section, merged)
        built: dict = {}
        plain_out = [materialize(value, root, built) for value in plain_out]
        configs = {name: materialize(config, root, built) for name, config in configs.items()}
    return (*plain_out, configs)


def environment_layer(prefix: str, sections: Mapping[str, type], plain: Mapping[str, type],
                      environ: Mapping[str, str] = os.environ) -> dict:
    """The fields set as environment variables ``<prefix><FLAG>``, as YAML sections.

    ``<FLAG>`` is the field's flag in capitals: ``DBB_SPACE_PRUNING_P`` for the prefixed
    section ``pruning``'s ``P``, ``DBB_SPACE_CLASSIFIER`` for the plain section's
    ``classifier``. Lists are comma-separated; booleans are 1/0, true/false, yes/no, on/off.
    """
    layer: dict = {}
    known = set()
    for section, cls, flag_prefix in [*((s, c, f"{s}_") for s, c in sections.items()),
                                      *((s, c, "") for s, c in plain.items())]:
        hints = typing.get_type_hints(cls)
        for spec in fields(cls):
            name = (prefix + flag_prefix + spec.name).upper()
            known.add(name)
            if spec.init and name in environ:
                layer.setdefault(section, {})[spec.name] = _from_text(hints[spec.name], environ[name], name)
    # A variable of ours that names no field would be ignored without a word (a renamed setting, a typo).
    unknown = sorted(name for name in environ if name.startswith(prefix) and name not in known)
    if unknown:
        close = {name: [k for k in sorted(known) if k.endswith("_" + name[len(prefix):])] for name in unknown}
        raise ValueError("unknown setting(s) " + "; ".join(
            name + (f" (did you mean {' or '.join(close[name])}?)" if close[name] else "") for name in unknown))
    return layer


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _from_text(hint: Any, text: str, name: str) -> Any:
    """An environment variable's text as a value of the field type ``hint``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X] or X | None
        if text == "":
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return [_from_text(item, part.strip(), name) for part in text.split(",") if part.strip()]
    if hint is bool:
        if text.strip().lower() not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"{name}={text!r} is not a boolean (use 1 or 0)")
        return text.strip().lower() in TRUE_WORDS
    try:
        return hint(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {hint.__name__}") from None


def pop_flag(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """Pull ``flag VALUE`` out of argv: (VALUE or None, the other arguments).

    For ``dbb-hf demo --generator``, read before the rest of argv goes to the parser.
    """
    if flag not in argv:
        return None, argv
    i = argv.index(flag)
    if i + 1 >= len(argv):
        raise SystemExit(f"{flag} needs a value")
    return argv[i + 1], argv[:i] + argv[i + 2 :]


def to_yaml(configs: Mapping[str, Any]) -> str:
    """The nested YAML form of config objects (dataclasses become mappings)."""
    plain = {
        name: dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg for name, cfg in configs.items()
    }
    return yaml.safe_dump(plain, sort_keys=False)


@dataclasses.dataclass
class DataConfig:
    merged_by_key: typing.ClassVar[dict] = {"options": "dataset"}  # options are the dataset's; see keyed_fields

    dataset: str = field(default="toy", metadata={"help": "toy, celeba, waterbirds, metashift or hub."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Data folder (for hub: a Hub dataset id or a local folder)."}
    )
    options: list[str] = field(
        default_factory=list,
        metadata={"help": "Loader options as key=value, merged by key over the recipe's YAML, presets and "
                  "--config (a key given here replaces that key only; ~key removes it): fields of the "
                  "benchmark's config, e.g. split_by_identity=true target_attribute=Blond_Hair (celeba)."},
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
        return {option_key(item, "dataset options"): yaml.safe_load(item.split("=", 1)[1]) for item in self.options}

    def load(self):
        return self.load_checked()[0]

    def load_checked(self):
        """The dataset, every ``image`` decoded once and unreadable ones handled by ``bad_images``,
        and the dropped rows (``{"split", "example_id", "reason"}``)."""
        from .data import load_benchmark

        return verify_images(load_benchmark(self.dataset, self.data_dir, **self.option_dict()), self.bad_images)
