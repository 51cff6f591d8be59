"""The `dbb-hf` command: one subcommand per stage, reading and writing datasets on disk.

Every subcommand reads its settings as ``dbb-hf run`` does (:func:`dbb_hf.config.resolve_configs`),
so the flags are the same everywhere: a stage section's field is ``--<section>_<field>``
(``--masking_backend``, ``--pruning_P``, ``--retraining_gammas``), a ``data`` or ``run``
field is unprefixed (``--dataset``, ``--class_prompts``, ``--device``), ``--config FILE``
reads a recipe's YAML (or a run's ``config.yaml``) and ``--preset NAME`` a preset.
``dbb-hf <cmd> --help`` lists every flag with its help text. So the stages run one at a
time, by hand, with the settings of a whole run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .config import DataConfig, pop_flag, resolve_configs, subset

DATA = ("data", DataConfig)

COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {}


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return register


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _run_fields(*names: str) -> tuple[str, type]:
    """The ``run`` section's fields ``names``, for a command that reads only those."""
    from .pipeline import RunConfig

    return "run", subset(RunConfig, names)


@dataclass
class GroupsArgs:
    json: bool = field(default=False, metadata={"help": "Print {split: {'<label>/<spurious>': count}} as JSON."})


@command("groups", "Images per split and group of a dataset.")
def groups_main(argv: list[str]) -> int:
    from .data.common import group_counts

    data, args, _ = resolve_configs({}, [DATA, GroupsArgs], argv)
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

    data, configs = resolve_configs({"classifier": ClassifierConfig, "erm": TrainingConfig}, [DATA], argv)
    dataset = data.load()
    result = train_classifier(
        dataset["train"], dataset["validation"], configs["classifier"], configs["erm"],
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

    data, args, _ = resolve_configs({}, [DATA, EvaluateArgs], argv)
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


def _prompts(dataset, run) -> list[str]:
    from .preflight import resolve_class_prompts

    return resolve_class_prompts(dataset.features["label"].names, run.class_prompts)


@dataclass
class ModelArg:
    model: str = field(default=None, metadata={"help": "A saved classifier folder (or hf-hub:<id>)."})


@command("score", "Stage 1a: per-image ERM loss and class probabilities (erm_loss, erm_probs).")
def score_main(argv: list[str]) -> int:
    from .modeling import load_classifier
    from .selection import score_dataset

    data, io, m, run, _ = resolve_configs({}, [DATA, StageIO, ModelArg, _run_fields("device")], argv)
    if m.model is None:
        raise SystemExit("score: --model is required")
    dataset = _load_input(io, data)
    _save_output(score_dataset(dataset, load_classifier(m.model), device=run.device, model_id=m.model), io)
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

    io, extra, configs = resolve_configs({"selection": SelectionConfig}, [StageIO, SelectArgs], argv)
    config = configs["selection"]
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
    from .masking import MaskingConfig
    from .textual_inversion import TextualInversionConfig, learn_tokens

    # The masking section for its template_* fields: mask_region "template" learns on that region.
    io, args, run, configs = resolve_configs(
        {"textual_inversion": TextualInversionConfig, "masking": MaskingConfig},
        [StageIO, TokensArgs, _run_fields("class_prompts")], argv,
    )
    if args.output_dir is None:
        raise SystemExit("learn-tokens: --output_dir is required")
    images = _load_input(io)
    prompts = _prompts(images, run)
    per_class = {c: images.filter(lambda y: y == c, input_columns="label")["image"] for c in range(len(prompts))}
    # Tokens are named after the classes; the prompts name the object with the words inpainting uses.
    names = images.features["label"].names
    _print_json(learn_tokens(per_class, names, configs["textual_inversion"], args.output_dir, prompt_name=prompts,
                             hair_template=configs["masking"].hair_template()))
    return 0


@command("mask", "Stage 3: text-prompted masks of each row's class object (mask, mask_box, mask_score, mask_status).")
def mask_main(argv: list[str]) -> int:
    from .masking import MaskingConfig, keep_source_mask, load_masking_models, run_masking

    io, run, configs = resolve_configs({"masking": MaskingConfig}, [StageIO, _run_fields("class_prompts", "device")], argv)
    dataset, config = keep_source_mask(_load_input(io), configs["masking"])
    prompts = _prompts(dataset, run)  # checked before any model is loaded
    models = load_masking_models(config, run.device) if config.loads_models() else None
    _save_output(run_masking(dataset, config, class_names=prompts, models=models, device=run.device), io)
    return 0


@dataclass
class InpaintArgs:
    tokens_dir: Optional[str] = field(default=None, metadata={"help": "Learned tokens (the learn-tokens output_dir)."})


@command("inpaint", "Stage 4: edit each row's masked object into its target class (generated, prompt, seed, ...).")
def inpaint_main(argv: list[str]) -> int:
    from .inpainting import InpaintingConfig, load_inpainting_pipeline, prepare_donors, run_inpainting
    from .textual_inversion import load_tokens

    io, args, run, configs = resolve_configs(
        {"inpainting": InpaintingConfig}, [StageIO, InpaintArgs, _run_fields("class_prompts", "device")], argv
    )
    config = configs["inpainting"]
    dataset = _load_input(io)
    prompts = _prompts(dataset, run)  # checked before any model is loaded
    pipe = donors = tokens = None
    if config.backend == "diffusers":
        if args.tokens_dir is None:
            raise SystemExit("inpaint: --tokens_dir is required with the diffusers backend")
        pipe = load_inpainting_pipeline(config, run.device)
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

    io, m, args, configs = resolve_configs({"pruning": PruningConfig}, [StageIO, ModelArg, PruneArgs], argv)
    config = configs["pruning"]
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


# What augment needs of prune's output: the verdict, the edit and what its thresholds read.
PRUNED_COLUMNS = ("keep", "target_label", "generated", "psi", "rho", "psi_threshold", "example_id")


@command("augment", "The augmented dataset (train, synthetic = kept edits, validation, test) from prune's output.")
def augment_main(argv: list[str]) -> int:
    from .augmented import build_augmented
    from .checks import check_class_names
    from .pruning import PruningConfig, apply_thresholds
    from .stages import save_to_disk

    data, io, configs = resolve_configs({"pruning": PruningConfig}, [DATA, StageIO], argv)
    config = configs["pruning"]
    if io.input is None:
        raise SystemExit("augment: --input (the output of dbb-hf prune) is required")
    pruned = _load_input(io)
    missing = [c for c in PRUNED_COLUMNS if c not in pruned.column_names]
    if missing:
        raise SystemExit(f"augment: --input {io.input} has no column(s) {missing}: give the output of dbb-hf prune")
    # Each edit records the P it passed, so the given thresholds must be the ones its verdict used.
    verdicts = apply_thresholds(pruned, config.P, psi_rule=config.psi_rule)["keep"]
    differ = [e for e, kept, again in zip(pruned["example_id"], pruned["keep"], verdicts) if bool(kept) != bool(again)]
    if differ:
        raise SystemExit(
            f"augment: {len(differ)} of {len(pruned)} rows of {io.input} were not pruned with --pruning_P "
            f"{config.P} --pruning_psi_rule {config.psi_rule} (e.g. {differ[:3]}); pass the thresholds dbb-hf prune used"
        )
    dataset = data.load()
    check_class_names(dataset["train"].features["label"].names, pruned.features["label"].names,
                      expected_what=f"the dataset {data.dataset!r}", actual_what=f"--input {io.input}")
    if io.output is None:
        raise SystemExit("--output is required")
    augmented = build_augmented(dataset, pruned, config.P)
    save_to_disk(augmented, io.output)
    print(f"saved {io.output}: " + ", ".join(f"{split} {len(ds)} rows" for split, ds in augmented.items()))
    return 0


@dataclass
class RetrainArgs:
    augmented: str = field(default=None, metadata={"help": "Augmented dataset: a Hub id, a Hub-layout folder or a run's augmented/."})


@command("retrain", "Stage 6: upweighted retraining (Eq. 6-8) on an augmented dataset, evaluated on its test split "
                    "(report.json, report.md in --retraining_output_dir).")
def retrain_main(argv: list[str]) -> int:
    from .augmented import load_augmented, thresholds
    from .modeling import ClassifierConfig
    from .report import write_report
    from .training import TrainingConfig, evaluate_models, train_classifier

    args, run, configs = resolve_configs(
        {"classifier": ClassifierConfig, "retraining": TrainingConfig},
        [RetrainArgs, _run_fields("erm_model", "retrain_from_erm", "device")], argv,
        # TrainingConfig's own default folder is ERM's.
        layers=[("retrain defaults", {"retraining": {"output_dir": "runs/retrained"}})],
    )
    if args.augmented is None:
        raise SystemExit("retrain: --augmented is required")
    augmented = load_augmented(args.augmented)
    missing = [split for split in ("validation", "test") if split not in augmented]
    if missing:
        raise SystemExit(f"retrain: {args.augmented} has no {missing} split(s); retraining selects its model on "
                         f"validation and the report evaluates on test (it has {list(augmented)})")
    config = configs["retraining"]
    start = time.perf_counter()
    result = train_classifier(
        augmented["train"], augmented["validation"], configs["classifier"], config, synthetic=augmented["synthetic"],
        init_model_dir=run.erm_model if run.retrain_from_erm else None, metadata={"augmented": args.augmented},
    )
    timings = {"retrained": time.perf_counter() - start}
    start = time.perf_counter()
    models = {**({"erm": run.erm_model} if run.erm_model else {}), "retrained": result.model_dir}
    metrics = evaluate_models(models, augmented, device=run.device)
    timings["evaluation"] = time.perf_counter() - start
    report = write_report(
        Path(config.output_dir), metrics=metrics, pruned=None, augmented=augmented,
        info={**thresholds(augmented), "thresholds_from": f"the augmented dataset {args.augmented}"},
        configs=configs, data={"augmented": args.augmented}, timings=timings, reused=[], num_grid_examples=0,
    )
    _print_json({"model_dir": result.model_dir, "best_epoch": result.best_epoch, "validation": result.best_validation,
                 "test": {name: report[name] for name in ("erm", "retrained")},
                 "report": str(Path(config.output_dir) / "report.md")})
    return 0


@dataclass
class PushArgs:
    """Flags of ``dbb-hf push`` besides the run's own. No token flag: tokens in command lines end
    up in shell histories; the token comes from HF_TOKEN or ``hf auth login``."""

    to_folder: Optional[str] = field(
        default=None,
        metadata={"help": "Write the repositories' folders here instead of pushing (with --hub_namespace: cards "
                  "link the final ids)."},
    )
    name_prefix: Optional[str] = field(
        default=None, metadata={"help": "Repository name prefix (default: the dataset name)."}
    )


@command("push", "Publish a run (--output_dir): dataset, tokens and model (--to_folder OUT writes the Hub folders).")
def push_main(argv: list[str]) -> int:
    from .hub import publish_run, repo_url

    run, args, _ = resolve_configs({}, [_run_fields("output_dir", "hub_namespace", "hub_private"), PushArgs], argv)
    published = publish_run(
        run.output_dir, namespace=run.hub_namespace, to_folder=args.to_folder, private=run.hub_private,
        name_prefix=args.name_prefix,
    )
    for kind, where in published.items():
        print(f"{kind}: {where if args.to_folder is not None else repo_url(kind, where)}")
    return 0


def run_pipeline(argv: list[str] | None = None, defaults=None, *, presets=(), overrides=(), build_root=None) -> dict:
    """Run the pipeline with the configs of :func:`dbb_hf.config.resolve_configs`: ``defaults``
    (a recipe's YAML: a path or sections), ``presets``, ``overrides``, then ``--preset``,
    ``--config`` and the flags of ``argv``."""
    from .pipeline import SECTIONS, Pipeline, RunConfig

    data, run, configs = resolve_configs(
        SECTIONS, [DATA, ("run", RunConfig)], argv, layers=[defaults] if defaults else [], presets=presets,
        overrides=overrides, build_root=build_root,
    )
    return Pipeline(data, run, configs)()


def run_compare(argv: list[str] | None = None, defaults=None, *, presets=(), overrides=()) -> dict:
    """Run ``dbb-hf compare`` with the configs of :func:`dbb_hf.config.resolve_configs` (as
    :func:`run_pipeline`, plus the baselines' sections and ``compare``'s own)."""
    from .compare import SECTIONS, CompareConfig, run_compare as compare
    from .pipeline import RunConfig

    data, run, compare_config, configs = resolve_configs(
        SECTIONS, [DATA, ("run", RunConfig), ("compare", CompareConfig)], argv,
        layers=[defaults] if defaults else [], presets=presets, overrides=overrides,
    )
    return compare(data, run, configs, compare_config)


def _demo_generator(argv: list[str], name: str) -> tuple[tuple[str, ...], list[str]]:
    """The demo's presets for ``--generator`` (default: the demo's generator), and the other arguments."""
    from .presets import DEFAULT_DEMO_GENERATOR, DEMO_GENERATORS

    generator, argv = pop_flag(argv, "--generator")
    generator = generator or DEFAULT_DEMO_GENERATOR
    if generator not in DEMO_GENERATORS:
        raise SystemExit(f"{name}: --generator must be one of {sorted(DEMO_GENERATORS)}, got {generator!r}")
    if "-h" in argv or "--help" in argv:
        print(f"--generator {{{','.join(sorted(DEMO_GENERATORS))}}}: how edits are made "
              f"(default: {DEFAULT_DEMO_GENERATOR}); the flags below override the preset's values.\n")
    return DEMO_GENERATORS[generator], argv


@command(
    "compare",
    "DBB against ERM, group reweighting/upsampling, GroupDRO, JTT and DFR over several seeds in one harness "
    "(results.json, results.md, results.png); without --config, on the toy with the demo's settings "
    "(--generator as for demo).",
)
def compare_main(argv: list[str]) -> int:
    from .compare import results_markdown

    presets, overrides = (), ()
    if "--config" not in argv:
        # Without a YAML file the toy runs offline with the demo's settings (the library's
        # defaults name ResNet-50 and Stable Diffusion 2 on the Hub).
        presets, argv = _demo_generator(argv, "compare")
        overrides = ({"run": {"output_dir": "runs/compare"}},)
    elif "--generator" in argv:
        raise SystemExit("compare: --generator chooses the demo's settings; with --config the YAML file does")
    results = run_compare(argv, presets=presets, overrides=overrides)
    print(results_markdown(results))
    return 0


@command("run", "The whole method end to end (resumable); --config FILE for YAML defaults, --preset NAME.")
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
    presets, argv = _demo_generator(argv, "demo")
    report = run_pipeline(argv, presets=presets)
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
