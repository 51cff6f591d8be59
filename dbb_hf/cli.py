"""The `dbb-hf` command: one subcommand per stage, reading and writing datasets on disk.

Each subcommand parses config dataclasses with HfArgumentParser (``dbb-hf <cmd> --help``
lists every flag with its help text), so the stages can be run one at a time.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from .config import DataConfig, parse_sections, pop_flag

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
    from .training import train_group_counts_of, evaluate_split

    data, args, _ = parse_sections({}, [DataConfig, EvaluateArgs], argv)
    if args.model is None:
        raise SystemExit("evaluate: --model is required")
    dataset = data.load()
    if args.split not in dataset:
        raise SystemExit(f"evaluate: no split {args.split!r}; the dataset has {list(dataset)}")
    model = load_classifier(args.model)
    metrics = evaluate_split(
        model, dataset[args.split], batch_size=args.batch_size, train_group_counts=train_group_counts_of(dataset["train"])
    )
    if args.json:
        _print_json(metrics)
    else:
        print(format_group_table(metrics))
    return 0


@dataclass
class StageIO:
    input: str = field(default=None, metadata={"help": "Input dataset saved with save_to_disk (a Dataset or DatasetDict)."})
    split: str = field(default="train", metadata={"help": "Split to take when the input is a DatasetDict or a benchmark."})
    output: str = field(default=None, metadata={"help": "Where to save the output dataset (save_to_disk)."})
    class_prompts: Optional[list[str]] = field(
        default=None, metadata={"help": "Word(s) naming each class's object in prompts; default: the class names."}
    )


def _load_input(io: StageIO, data: DataConfig | None = None):
    """The stage's input rows: a saved dataset (``--input``), else the benchmark's ``--split``."""
    from datasets import DatasetDict, load_from_disk

    if io.input is None:
        if data is None:
            raise SystemExit("--input is required (a dataset saved with save_to_disk)")
        return data.load()[io.split]
    if not os.path.exists(io.input):
        raise SystemExit(f"--input {io.input!r} does not exist")
    dataset = load_from_disk(io.input)
    if isinstance(dataset, DatasetDict):
        if io.split not in dataset:
            raise SystemExit(f"--input has no split {io.split!r}; it has {list(dataset)}")
        dataset = dataset[io.split]
    return dataset


def _save_output(dataset, io: StageIO) -> None:
    if io.output is None:
        raise SystemExit("--output is required")
    dataset.save_to_disk(io.output)
    print(f"saved {len(dataset)} rows with columns {dataset.column_names} to {io.output}")


def _prompts(dataset, io: StageIO) -> list[str]:
    from .preflight import resolve_class_prompts

    return resolve_class_prompts(dataset.features["label"].names, io.class_prompts)


@dataclass
class ModelArg:
    model: str = field(default=None, metadata={"help": "A saved classifier folder (or hf-hub:<id>)."})


@dataclass
class DeviceArg:
    device: Optional[str] = field(default=None, metadata={"help": "Torch device (default: cuda when available)."})


@command("score", "Stage 1a: per-image ERM loss and class probabilities (erm_loss, erm_probs).")
def score_main(argv: list[str]) -> int:
    from .modeling import load_classifier
    from .selection import score_dataset

    data, io, m, d, _ = parse_sections({}, [DataConfig, StageIO, ModelArg, DeviceArg], argv)
    if m.model is None:
        raise SystemExit("score: --model is required")
    dataset = _load_input(io, data)
    _save_output(score_dataset(dataset, load_classifier(m.model), device=d.device, model_id=m.model), io)
    return 0


@dataclass
class SelectArgs:
    ti_output: Optional[str] = field(default=None, metadata={"help": "Also save the textual-inversion picks here."})
    validation_input: Optional[str] = field(
        default=None, metadata={"help": "Scored validation split (for ti_source=validation_group)."}
    )


@command("select", "Stage 1b: lowest-loss images per class (+ target_label) and textual-inversion picks.")
def select_main(argv: list[str]) -> int:
    from .selection import SelectionConfig, select_lowest_loss, select_textual_inversion, selection_purity

    io, extra, config, _ = parse_sections({}, [StageIO, SelectArgs, SelectionConfig], argv)
    scored = _load_input(io)
    selected = select_lowest_loss(scored, config)
    _save_output(selected, io)
    if "group" in selected.column_names:
        _print_json({"purity": selection_purity(selected, scored)})
    if extra.ti_output:
        validation = _load_input(StageIO(input=extra.validation_input, split="validation")) if extra.validation_input else None
        select_textual_inversion(scored, validation, config).save_to_disk(extra.ti_output)
    return 0


@dataclass
class TokensArgs:
    output_dir: str = field(default=None, metadata={"help": "Folder for the learned tokens (one subfolder per class)."})


@command("learn-tokens", "Stage 2: one textual-inversion token per class from images with `label`.")
def learn_tokens_main(argv: list[str]) -> int:
    from .textual_inversion import TextualInversionConfig, learn_tokens

    io, args, config, _ = parse_sections({}, [StageIO, TokensArgs, TextualInversionConfig], argv)
    if args.output_dir is None:
        raise SystemExit("learn-tokens: --output_dir is required")
    images = _load_input(io)
    prompts = _prompts(images, io)
    per_class = {c: images.filter(lambda y: y == c, input_columns="label")["image"] for c in range(len(prompts))}
    # Tokens are named after the classes; the prompts name the object with the words inpainting uses.
    names = images.features["label"].names
    _print_json(learn_tokens(per_class, names, config, args.output_dir, prompt_name=prompts))
    return 0


@command("mask", "Stage 3: text-prompted masks of each row's class object (mask, mask_box, mask_score, mask_status).")
def mask_main(argv: list[str]) -> int:
    from .masking import MaskingConfig, load_masking_models, run_masking

    io, d, config, _ = parse_sections({}, [StageIO, DeviceArg, MaskingConfig], argv)
    dataset = _load_input(io)
    prompts = _prompts(dataset, io)  # checked before any model is loaded
    models = load_masking_models(config, d.device) if config.loads_models() else None
    _save_output(run_masking(dataset, config, class_names=prompts, models=models, device=d.device), io)
    return 0


@dataclass
class InpaintArgs:
    tokens_dir: Optional[str] = field(default=None, metadata={"help": "Learned tokens (the learn-tokens output_dir)."})
    device: Optional[str] = field(default=None, metadata={"help": "Torch device."})


@command("inpaint", "Stage 4: edit each row's masked object into its target class (generated, prompt, seed, ...).")
def inpaint_main(argv: list[str]) -> int:
    from .inpainting import InpaintingConfig, load_inpainting_pipeline, prepare_donors, run_inpainting
    from .textual_inversion import load_tokens

    io, args, config, _ = parse_sections({}, [StageIO, InpaintArgs, InpaintingConfig], argv)
    dataset = _load_input(io)
    prompts = _prompts(dataset, io)  # checked before any model is loaded
    pipe = donors = tokens = None
    if config.backend == "diffusers":
        if args.tokens_dir is None:
            raise SystemExit("inpaint: --tokens_dir is required with the diffusers backend")
        pipe = load_inpainting_pipeline(config, args.device)
        load_tokens(pipe, args.tokens_dir)
        tokens = _tokens_by_class(args.tokens_dir, dataset.features["label"].names)
    else:
        donors = prepare_donors(dataset)
    result = run_inpainting(dataset, config, pipe=pipe, donors=donors, class_names=prompts, tokens=tokens)
    _save_output(result, io)
    return 0


def _tokens_by_class(tokens_dir: str, class_names: list[str]) -> list[str]:
    """Each class's token in the token folder ``tokens_dir``; exits naming the classes without one."""
    from .textual_inversion import tokens_by_class

    try:
        return tokens_by_class(tokens_dir, class_names)
    except ValueError as error:
        raise SystemExit(f"inpaint: --tokens_dir {error}") from None


@dataclass
class PruneArgs:
    train_scores: Optional[str] = field(
        default=None, metadata={"help": "Scored training split (score output) for Psi (Eq. 3)."}
    )


@command("prune", "Stage 5: psi, rho (integrated gradients), keep, prune_reason; without --model, re-threshold a scored set.")
def prune_main(argv: list[str]) -> int:
    from .modeling import load_classifier
    from .pruning import PruningConfig, apply_thresholds, class_confidence, score_edits

    io, m, args, config, _ = parse_sections({}, [StageIO, ModelArg, PruneArgs, PruningConfig], argv)
    dataset = _load_input(io)
    if m.model is None:
        if not {"psi", "rho"} <= set(dataset.column_names):
            raise SystemExit("prune: without --model the input must already hold psi and rho (a scored set)")
        result = apply_thresholds(dataset, config.P, psi_rule=config.psi_rule)
    else:
        if args.train_scores is None:
            raise SystemExit("prune: --train_scores (the scored training split) is required to compute Psi")
        Psi = class_confidence(_load_input(StageIO(input=args.train_scores)))
        scored = score_edits(dataset, load_classifier(m.model), config, Psi=Psi)
        result = apply_thresholds(scored, config.P, Psi=Psi, psi_rule=config.psi_rule)
    kept = sum(result["keep"])
    _save_output(result, io)
    print(f"kept {kept} of {len(result)} edits")
    return 0


@dataclass
class RetrainArgs:
    augmented: str = field(default=None, metadata={"help": "Augmented dataset: a Hub id, a Hub-layout folder or a run's augmented/."})
    init_model: Optional[str] = field(default=None, metadata={"help": "Start from this classifier (e.g. the ERM model)."})


@command("retrain", "Stage 6: upweighted retraining (Eq. 6-8) on an augmented dataset.")
def retrain_main(argv: list[str]) -> int:
    from .augmented import load_augmented
    from .modeling import ClassifierConfig
    from .training import TrainingConfig, train_classifier

    args, configs = parse_sections({"classifier": ClassifierConfig, "train": TrainingConfig}, [RetrainArgs], argv)
    if args.augmented is None:
        raise SystemExit("retrain: --augmented is required")
    augmented = load_augmented(args.augmented)
    result = train_classifier(
        augmented["train"], augmented["validation"], configs["classifier"], configs["train"],
        synthetic=augmented["synthetic"], init_model_dir=args.init_model, metadata={"augmented": args.augmented},
    )
    _print_json({"model_dir": result.model_dir, "best_epoch": result.best_epoch, "validation": result.best_validation})
    return 0


@command("push", "Publish a run: dataset, tokens and model (--to_folder OUT writes the Hub folders).")
def push_main(argv: list[str]) -> int:
    import argparse

    from .hub import add_push_arguments, push_main as hub_push_main

    parser = add_push_arguments(argparse.ArgumentParser(prog="dbb-hf push"))
    return hub_push_main(parser.parse_args(argv))


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


@command(
    "demo",
    "The whole method offline on the embedded toy benchmark; --generator diffusion (textual inversion + "
    "inpainting with the miniature prior shipped in the package) or compose (paste donor objects).",
)
def demo_main(argv: list[str]) -> int:
    from .presets import DEFAULT_DEMO_GENERATOR, DEMO_GENERATORS, demo_preset

    generator, argv = pop_flag(argv, "--generator")
    generator = generator or DEFAULT_DEMO_GENERATOR
    if generator not in DEMO_GENERATORS:
        raise SystemExit(f"demo: --generator must be one of {sorted(DEMO_GENERATORS)}, got {generator!r}")
    if "-h" in argv or "--help" in argv:
        print(f"--generator {{{','.join(sorted(DEMO_GENERATORS))}}}: how edits are made "
              f"(default: {DEFAULT_DEMO_GENERATOR}); the flags below override the preset's values.\n")
    report = run_pipeline(argv, defaults=demo_preset(generator))
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
