"""The `dbb-hf` command: one subcommand per stage, reading and writing datasets on disk.

Each subcommand parses config dataclasses with HfArgumentParser (``dbb-hf <cmd> --help``
lists every flag with its help text), so the stages can be run one at a time.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from .config import DataConfig, parse_sections

COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {}


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return register


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


@dataclass
class GroupsArgs:
    json: bool = field(default=False, metadata={"help": "Print {split: {'<label>/<spurious>': count}} as JSON."})


@command("groups", "Images per split and group of a dataset.")
def groups_main(argv: list[str]) -> int:
    from .data.common import group_counts

    data, args, _ = parse_sections({}, [DataConfig, GroupsArgs], argv)
    counts = group_counts(data.load())
    if args.json:
        _print_json(counts)
        return 0
    for split, per_group in counts.items():
        print(f"{split}: {sum(per_group.values())} images")
        for name, n in per_group.items():
            print(f"  {name:<40} {n}")
    return 0


@command("erm", "Train the ERM classifier (stage 0).")
def erm_main(argv: list[str]) -> int:
    from .modeling import ClassifierConfig
    from .training import TrainingConfig, train_classifier

    data, configs = parse_sections({"classifier": ClassifierConfig, "train": TrainingConfig}, [DataConfig], argv)
    dataset = data.load()
    result = train_classifier(
        dataset["train"], dataset["validation"], configs["classifier"], configs["train"],
        metadata={"dataset": data.dataset, "data_dir": data.data_dir},
    )
    _print_json({"model_dir": result.model_dir, "best_epoch": result.best_epoch, "validation": result.best_validation})
    return 0


@dataclass
class EvaluateArgs:
    model: str = field(default=None, metadata={"help": "A saved classifier folder (or hf-hub:<id>)."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    batch_size: int = field(default=128, metadata={"help": "Evaluation batch size."})
    json: bool = field(default=False, metadata={"help": "Print the metrics as JSON."})


@command("evaluate", "Worst-group and average accuracy of a saved classifier.")
def evaluate_main(argv: list[str]) -> int:
    from .metrics import format_group_table
    from .modeling import load_classifier
    from .training import _train_group_counts, evaluate_split

    data, args, _ = parse_sections({}, [DataConfig, EvaluateArgs], argv)
    if args.model is None:
        raise SystemExit("evaluate: --model is required")
    dataset = data.load()
    if args.split not in dataset:
        raise SystemExit(f"evaluate: no split {args.split!r}; the dataset has {list(dataset)}")
    model = load_classifier(args.model)
    metrics = evaluate_split(
        model, dataset[args.split], batch_size=args.batch_size, train_group_counts=_train_group_counts(dataset["train"])
    )
    if args.json:
        _print_json(metrics)
    else:
        print(format_group_table(metrics))
    return 0


PRESETS_DIR = os.path.join(os.path.dirname(__file__), "presets")


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config FILE`` out of argv (YAML defaults that the other flags override)."""
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a YAML file")
        return argv[i + 1], argv[:i] + argv[i + 2 :]
    return None, argv


def run_pipeline(argv: list[str], defaults: dict | None = None) -> dict:
    """Parse the pipeline's configs (YAML defaults, then flags) and run it."""
    from .config import load_yaml
    from .pipeline import SECTIONS, Pipeline, RunConfig

    config_file, argv = _split_config_flag(argv)
    merged = dict(defaults or {})
    if config_file:
        for section, values in load_yaml(config_file).items():
            merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    data, run, configs = parse_sections(SECTIONS, [DataConfig, RunConfig], argv, defaults=merged)
    return Pipeline(data, run, configs)()


@command("run", "The whole method end to end (resumable); --config FILE for YAML defaults.")
def run_main(argv: list[str]) -> int:
    report = run_pipeline(argv)
    if report is not None:
        _print_json({k: report[k] for k in ("erm", "retrained", "gain_worst_group_accuracy")})
    return 0


@command("demo", "The whole method offline on the embedded toy benchmark.")
def demo_main(argv: list[str]) -> int:
    from .config import load_yaml

    report = run_pipeline(argv, defaults=load_yaml(os.path.join(PRESETS_DIR, "demo.yaml")))
    if report is not None:
        erm, retrained = report["erm"], report["retrained"]
        print(
            f"worst-group accuracy: ERM {100 * erm['worst_group_accuracy']:.1f} -> retrained "
            f"{100 * retrained['worst_group_accuracy']:.1f}; average accuracy: ERM "
            f"{100 * erm['average_accuracy']:.1f} -> retrained {100 * retrained['average_accuracy']:.1f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dbb-hf <command> [--help] [options]\n\ncommands:")
        for name, (_, help) in COMMANDS.items():
            print(f"  {name:<14} {help}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dbb-hf: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[name][0](rest) or 0


if __name__ == "__main__":
    sys.exit(main())
