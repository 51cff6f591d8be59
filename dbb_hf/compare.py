"""``dbb-hf compare``: DBB against the simple methods on one dataset, over several seeds, in one harness.

The paper's Table 1 copies its baseline numbers from other papers. Here every method runs on
the user's data with the same splits, the same timm model factory, the same Accelerate loop,
the same evaluation and the same model selection (SpuCo's and SubpopBench's practice):

``erm``, ``reweight`` and ``upsample`` (group-balanced, training group labels),
``groupdro`` (Sagawa et al. 2020), ``jtt`` (Liu et al. 2021), ``dfr`` (Kirichenko et al.
2023), ``dbb`` (the pipeline) and ``dbb_dfr`` (the DBB model's last layer reset by DFR).

Each seed has its own run folder ``output_dir/seed_<s>/``, where the pipeline's stage cache
shares what methods have in common: one ERM model per seed serves ERM, JTT (its error set,
from the pipeline's ``scores`` stage), DFR and DBB. Each finished (method, seed) cell is
saved under ``output_dir/cells/`` with the fingerprint of everything it depends on, so a
rerun (or a rerun with more seeds or methods) computes only the missing cells. The results
go to ``results.json``, ``results.md`` (mean ± std over seeds, and accuracy per group) and
``results.png`` (worst-group accuracy per method with error bars).

Model selection (``model_selection``) is one criterion for every method: validation
worst-group accuracy (uses validation group labels), or, with no group label anywhere
(SubpopBench's "attribute no" setting, ``ValWorstAccAttributeNo``), validation
worst-class accuracy or average accuracy; DFR then balances classes instead of groups.
``P_sweep`` retrains DBB for each pruning threshold P on the same scored edits (integrated
gradients are computed once) and reports worst-group accuracy per P.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .baselines import (
    USES_TRAIN_GROUPS, DFRConfig, GroupDROConfig, GroupDROLoss, GroupReweightedLoss, JTTConfig, error_set, run_dfr,
    upsample, upsampling_weights,
)
from .baselines.dfr import dfr_info
from .config import DataConfig
from .modeling import load_classifier
from .augmented import build_augmented
from .pipeline import SECTIONS as PIPELINE_SECTIONS, Pipeline, RunConfig, local_models
from .pruning import apply_thresholds, parse_thresholds, thresholds_per_class
from .stages import source_signature, stage_fingerprint, write_text_atomic
from .training import evaluate_split, train_classifier, train_group_counts_of

METHODS = ("erm", "reweight", "upsample", "groupdro", "jtt", "dfr", "dbb", "dbb_dfr")
# model_selection -> the training loop's selection_metric
MODEL_SELECTIONS = {"worst_group": "worst_group_accuracy", "worst_class": "worst_class_accuracy", "average": "accuracy"}
SECTIONS = {**PIPELINE_SECTIONS, "groupdro": GroupDROConfig, "jtt": JTTConfig, "dfr": DFRConfig}
METRICS = ("worst_group_accuracy", "average_accuracy", "weighted_average_accuracy")


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,5,7"`` -> those seeds."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"seeds must be a count ('3') or a comma-separated list of seeds ('0,5,7'), got {text!r}") from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise ValueError(f"seeds must be at least 1, got {text!r}")
        return list(range(numbers[0]))
    if len(set(numbers)) != len(numbers) or min(numbers) < 0:
        raise ValueError(f"seeds must be distinct and >= 0, got {text!r}")
    return numbers


@dataclass
class CompareConfig:
    methods: str = field(
        default="erm,reweight,groupdro,jtt,dfr,dbb,dbb_dfr",
        metadata={"help": f"Comma-separated methods, from {', '.join(METHODS)}."},
    )
    seeds: str = field(default="3", metadata={"help": "Number of seeds (0..N-1), or a comma-separated list."})
    model_selection: str = field(
        default="worst_group",
        metadata={"help": "Model selection for every method: worst_group (validation worst-group accuracy; uses "
                  "validation group labels), worst_class or average (validation accuracy, no group labels: "
                  "SubpopBench's 'attribute no' setting; DFR then balances classes)."},
    )
    P_sweep: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Pruning thresholds P to retrain DBB with, one per value (a value may be per class: "
                  "'2,0.3'); the scores are computed once. Default: only the run's pruning P."},
    )

    def __post_init__(self):
        names = [m.strip() for m in str(self.methods).split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if not names or unknown:
            raise ValueError(f"methods must be a comma-separated list of {list(METHODS)}; unknown: {unknown}")
        self.methods = ",".join(dict.fromkeys(names))
        parse_seeds(self.seeds)
        if self.model_selection not in MODEL_SELECTIONS:
            raise ValueError(f"model_selection must be one of {list(MODEL_SELECTIONS)}, got {self.model_selection!r}")
        if self.P_sweep is not None:
            self.P_sweep = [str(p) for p in self.P_sweep]
            for p in self.P_sweep:
                parse_thresholds(p)

    @property
    def method_list(self) -> list[str]:
        return self.methods.split(",")

    @property
    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds)

    @property
    def balance_by(self) -> str:
        """What DFR balances: groups when validation group labels are in use, else classes."""
        return "group" if self.model_selection == "worst_group" else "class"


def seeded_configs(configs: dict, seed: int, compare: CompareConfig) -> dict:
    """Every section with a ``seed`` field set to ``seed``; the compare's model selection in every training."""
    out = {}
    for name, config in configs.items():
        changes = {"seed": seed} if any(f.name == "seed" for f in dataclasses.fields(config)) else {}
        if name in ("erm", "retraining"):
            changes["selection_metric"] = MODEL_SELECTIONS[compare.model_selection]
        out[name] = dataclasses.replace(config, **changes)
    return out


def group_labels_used(method: str, configs: dict, compare: CompareConfig) -> str:
    """"train", "validation" or "none": the group labels a method used (for training or selection)."""
    if method in USES_TRAIN_GROUPS:
        return "train"
    uses_validation = compare.model_selection == "worst_group"  # also DFR's balancing (balance_by)
    if method in ("dbb", "dbb_dfr") and configs["inpainting"].backend == "diffusers":
        uses_validation |= configs["selection"].ti_source == "validation_group"
    return "validation" if uses_validation else "none"


class SeedRun:
    """One seed: its run folder (the pipeline's stage cache, shared by every method) and the methods."""

    def __init__(self, data: DataConfig, run: RunConfig, configs: dict, compare: CompareConfig, seed: int):
        self.seed, self.compare, self.configs = seed, compare, configs
        self.pipeline = Pipeline(
            data, dataclasses.replace(run, output_dir=str(Path(run.output_dir) / f"seed_{seed}"), push_to_hub=False),
            {name: configs[name] for name in PIPELINE_SECTIONS},
        )
        self.out = self.pipeline.out
        self._memo: dict = {}

    def _once(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def data(self):
        """(the dataset, its fingerprint)."""
        return self._once("data", self.pipeline.load_data)

    def erm(self) -> tuple[str, str]:
        return self._once("erm", lambda: self.pipeline.train_erm(*self.data))

    def train(self, stage: str, fingerprint_parts: list, *, train=None, **changes_and_hooks) -> tuple[str, str]:
        """A classifier trained into ``<seed folder>/<stage>`` with the ERM section's settings.

        ``changes_and_hooks``: TrainingConfig fields to change, and ``loss_fn`` /
        ``sample_weights`` for :func:`dbb_hf.training.train_classifier`.
        """
        hooks = {k: changes_and_hooks.pop(k) for k in ("loss_fn", "sample_weights") if k in changes_and_hooks}
        dataset, fp_data = self.data
        config = dataclasses.replace(self.configs["erm"], output_dir=str(self.out / stage), **changes_and_hooks)
        fp = stage_fingerprint(stage, [self.configs["classifier"], dataclasses.replace(config, output_dir="")],
                               fp_data, *fingerprint_parts)
        rows = dataset["train"] if train is None else train
        model_dir = self.pipeline.trained(stage, fp, lambda stage_dir: train_classifier(
            rows, dataset["validation"], self.configs["classifier"], config,
            metadata={"stage": stage, "seed": self.seed}, **hooks,
        ))
        return model_dir, fp

    def dfr(self, stage: str, source_dir: str, fp_source: str) -> tuple[str, dict]:
        config = self.configs["dfr"]
        fp = stage_fingerprint(stage, config, self.compare.balance_by, fp_source, self.data[1])
        model_dir = self.pipeline.trained(stage, fp, lambda stage_dir: run_dfr(
            source_dir, self.data[0]["validation"], str(stage_dir / "model"), config,
            balance_by=self.compare.balance_by, device=self.pipeline.device,
        ))
        info = dfr_info(model_dir)
        return model_dir, {"dfr_C": info["C"], "dfr_balanced_rows": info["balanced_rows"]}

    def dbb(self) -> dict:
        """The whole pipeline (its ERM stage is the seed's ERM model); its report."""
        return self._once("dbb", self.pipeline)


def _num_groups(train) -> int:
    return train.features["label"].num_classes * train.features["spurious"].num_classes


def _run_erm(s: SeedRun):
    return s.erm()[0], {}


def _run_reweight(s: SeedRun):
    train = s.data[0]["train"]
    return s.train("reweight", [], loss_fn=GroupReweightedLoss(train_group_counts_of(train)))[0], {}


def _run_upsample(s: SeedRun):
    train = s.data[0]["train"]
    return s.train("upsample", [], sample_weights=upsampling_weights(train["group"], _num_groups(train)).tolist())[0], {}


def _run_groupdro(s: SeedRun):
    config = s.configs["groupdro"]
    loss = GroupDROLoss(_num_groups(s.data[0]["train"]), config.eta)
    return s.train("groupdro", [config], loss_fn=loss)[0], {}


def _run_jtt(s: SeedRun):
    config = s.configs["jtt"]
    dataset, _ = s.data
    if config.identification_epochs is None:
        ident_dir, fp_ident = s.erm()
        stage = "scores"
    else:
        ident_dir, fp_ident = s.train("jtt_identification", [], num_epochs=config.identification_epochs,
                                      selection_metric="last")
        stage = "jtt_identification_scores"
    model = load_classifier(ident_dir, device=s.pipeline.device)
    scored = s.pipeline.score_split(stage, dataset, "train", model, fp_ident)
    errors = error_set(scored)
    model_dir = s.train("jtt", [config, fp_ident], train=upsample(dataset["train"], errors, config.lambda_up))[0]
    groups = np.asarray(dataset["train"]["group"])[errors]
    names = dataset["train"].features["label"].names
    spurious = dataset["train"].features["spurious"].names
    by_group = {f"{names[g // len(spurious)]}/{spurious[g % len(spurious)]}": int((groups == g).sum())
                for g in np.unique(groups)}
    # The error set's groups are counted for the report only; JTT itself never reads them.
    return model_dir, {"jtt_error_set": len(errors), "jtt_error_set_groups": by_group}


def _run_dfr(s: SeedRun):
    return s.dfr("dfr", *s.erm())


def _run_dbb(s: SeedRun):
    report = s.dbb()
    return str(s.out / "retrained" / "model"), {"synthetic_rows": report["synthetic_rows"]}


def _run_dbb_dfr(s: SeedRun):
    retrained, _ = _run_dbb(s)
    return s.dfr("dbb_dfr", retrained, stage_fingerprint("retrained-folder", local_models(retrained)))


RUNNERS: dict[str, Callable] = {
    "erm": _run_erm, "reweight": _run_reweight, "upsample": _run_upsample, "groupdro": _run_groupdro,
    "jtt": _run_jtt, "dfr": _run_dfr, "dbb": _run_dbb, "dbb_dfr": _run_dbb_dfr,
}


def _run_dbb_at(P: str):
    """DBB retrained on the run's scored edits thresholded at ``P`` instead of the run's own P."""

    def run(s: SeedRun):
        s.dbb()
        dataset, fp_data = s.data
        erm_dir, fp_erm = s.erm()
        pruned, info = s.pipeline.generate(dataset, erm_dir, fp_erm)  # every stage reused
        pruning = s.configs["pruning"]
        thresholded = apply_thresholds(pruned, P, Psi=info["Psi"], psi_rule=pruning.psi_rule)
        augmented = build_augmented(dataset, thresholded, P)
        configs = {**s.pipeline.configs, "pruning": dataclasses.replace(pruning, P=P)}
        sweep = Pipeline(s.pipeline.data, dataclasses.replace(s.pipeline.run, output_dir=str(s.out / f"dbb_P={P}")),
                         configs)
        fp_aug = stage_fingerprint("augmented", stage_fingerprint("thresholds", P, info["fingerprint"]), fp_data)
        model_dir, _ = sweep.retrain(augmented, erm_dir, fp_aug, fp_erm)
        return model_dir, {"synthetic_rows": len(augmented["synthetic"])}

    return run


def _same_thresholds(a, b, num_classes: int) -> bool:
    return thresholds_per_class(a, num_classes) == thresholds_per_class(b, num_classes)


def _cells(compare: CompareConfig, configs: dict, num_classes: int) -> list[tuple[str, str, Callable]]:
    """(cell name, method, runner): the methods, then DBB at each swept P other than the run's own."""
    cells = [(m, m, RUNNERS[m]) for m in compare.method_list]
    for P in compare.P_sweep or ():
        if not _same_thresholds(P, configs["pruning"].P, num_classes):
            cells.append((f"dbb@P={P}", "dbb", _run_dbb_at(P)))
    return cells


def _evaluate(model_dir: str, dataset, device: str) -> dict:
    model = load_classifier(model_dir, device=device)
    counts = train_group_counts_of(dataset["train"])
    return {split: evaluate_split(model, dataset[split], train_group_counts=counts) for split in ("validation", "test")}


def run_compare(data: DataConfig, run: RunConfig, configs: dict, compare: CompareConfig) -> dict:
    """Run every (method, seed) cell that is not saved yet, then write the results (module docstring)."""
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    cells: dict = {}
    for seed in compare.seed_list:
        seeded = seeded_configs(configs, seed, compare)
        s = SeedRun(data, run, seeded, compare, seed)
        for cell_name, method, runner in _cells(compare, seeded, _num_classes_hint(s, compare)):
            path = out / "cells" / cell_name / f"seed_{seed}.json"
            fp = stage_fingerprint("compare-cell", cell_name, seed, {k: dataclasses.asdict(v) for k, v in seeded.items()},
                                   data, source_signature(data.data_dir), compare.model_selection,
                                   run.result_settings())
            saved = json.loads(path.read_text()) if path.exists() else None
            if saved is None or saved.get("fingerprint") != fp:
                cell_start, cell_cpu_start = time.perf_counter(), time.process_time()
                model_dir, extra = runner(s)
                metrics = _evaluate(model_dir, s.data[0], s.pipeline.device)
                saved = {
                    "method": method, "seed": seed, "fingerprint": fp, "model_dir": model_dir,
                    "group_labels_used": group_labels_used(method, seeded, compare),
                    "model_selection": compare.model_selection, "seconds": round(time.perf_counter() - cell_start, 1),
                    # CPU time of this process (all its threads): the cost on a busy machine too.
                    "cpu_seconds": round(time.process_time() - cell_cpu_start, 1),
                    "extra": extra, **metrics,
                }
                if s.pipeline.state.is_main_process:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(path, json.dumps(saved, indent=2, default=str))
                saved = json.loads(json.dumps(saved, default=str))
            else:
                saved["reused"] = True
            cells.setdefault(cell_name, []).append(saved)
        # After every seed, so that a long comparison shows (and keeps) what it has so far.
        results = summarise(cells, compare, configs)
        results["seconds"] = round(time.perf_counter() - start, 1)
        results["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
        if _is_main():
            write_results(out, results)
    return results


def saved_cells(out_dir: str | Path) -> dict[str, list[dict]]:
    """Every finished (method, seed) cell of one compare folder: method -> cells sorted by seed."""
    cells_dir = Path(out_dir) / "cells"
    if not cells_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no cells/ folder; is it the output_dir of a finished dbb-hf compare?")
    cells: dict[str, list[dict]] = {}
    for method_dir in sorted(p for p in cells_dir.iterdir() if p.is_dir()):
        for path in method_dir.glob("seed_*.json"):
            try:
                cell = json.loads(path.read_text())
                worst = cell["test"]["worst_group_accuracy"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}: not a compare cell ({error!r})") from None
            if not isinstance(worst, (int, float)):  # None when a test group is empty
                raise ValueError(f"{path}: its test worst-group accuracy is {worst!r}, not a number")
            cells.setdefault(method_dir.name, []).append(cell)
    for runs in cells.values():
        runs.sort(key=lambda cell: cell["seed"])
    return cells


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _num_classes_hint(s: SeedRun, compare: CompareConfig) -> int:
    # Only the P sweep needs the class count (to compare per-class thresholds); it avoids
    # loading the data otherwise.
    return s.data[0]["train"].features["label"].num_classes if compare.P_sweep else 1


def mean_std(values: list) -> dict | None:
    """Mean and sample std (0 for one value); None when a value is missing."""
    if not values or any(v is None for v in values):
        return None
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def _cell_summary(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda r: r["seed"])
    groups = list(runs[0]["test"]["per_group_accuracy"])
    return {
        "seeds": [r["seed"] for r in runs],
        **{metric: mean_std([r["test"][metric] for r in runs]) for metric in METRICS},
        "validation_worst_group_accuracy": mean_std([r["validation"]["worst_group_accuracy"] for r in runs]),
        "per_group_accuracy": {g: mean_std([r["test"]["per_group_accuracy"][g] for r in runs]) for g in groups},
        "group_counts": runs[0]["test"]["group_counts"],
        "group_labels_used": runs[0]["group_labels_used"],
        "model_selection": runs[0]["model_selection"],
        "seconds": mean_std([r["seconds"] for r in runs if not r.get("reused")]),
        "cpu_seconds": mean_std([r["cpu_seconds"] for r in runs if not r.get("reused")]),
        "extra": [r["extra"] for r in runs],
    }


def summarise(cells: dict, compare: CompareConfig, configs: dict) -> dict:
    """results.json's content: per method, mean and std over seeds of each metric and of each group;
    with a P sweep, DBB's worst-group accuracy and kept edits per P."""
    results = {"methods": {m: _cell_summary(cells[m]) for m in compare.method_list if m in cells},
               "model_selection": compare.model_selection}
    if compare.P_sweep:
        sweep = {}
        for P in compare.P_sweep:
            runs = cells.get(f"dbb@P={P}") or cells.get("dbb")
            if runs is None:
                continue
            summary = _cell_summary(runs)
            sweep[P] = {key: summary[key] for key in ("worst_group_accuracy", "validation_worst_group_accuracy")}
            sweep[P]["synthetic_rows"] = mean_std([e["synthetic_rows"] for e in summary["extra"]])
        results["P_sweep"] = sweep
    return results


def _seconds(method: dict) -> str:
    """Mean time of the cells computed in this run (a reused cell costs nothing): the first method
    of a seed also pays for the stages it shares with the others (data, ERM)."""
    wall, cpu = method["seconds"], method["cpu_seconds"]
    return "reused" if wall is None else f"{wall['mean']:.0f} / {cpu['mean']:.0f}"


def _pct(stat: dict | None) -> str:
    return "n/a" if stat is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


SELECTION_WORDS = {
    "worst_group": "validation worst-group accuracy (uses validation group labels)",
    "worst_class": "validation worst-class accuracy (no group labels)",
    "average": "validation average accuracy (no group labels)",
}


def results_markdown(results: dict) -> str:
    methods = results["methods"]
    seeds = sorted({s for m in methods.values() for s in m["seeds"]})
    lines = [
        "# dbb-hf compare", "",
        f"Seeds {', '.join(map(str, seeds))}; model selection for every method: "
        f"{SELECTION_WORDS[results['model_selection']]}. Test accuracy in %, mean ± std over seeds.", "",
        "| method | group labels used | worst-group acc. | average acc. | weighted avg. acc. | validation worst-group "
        "| seconds per seed (wall / CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['group_labels_used']} | {_pct(m['worst_group_accuracy'])} "
                     f"| {_pct(m['average_accuracy'])} | {_pct(m['weighted_average_accuracy'])} "
                     f"| {_pct(m['validation_worst_group_accuracy'])} | {_seconds(m)} |")
    groups = list(next(iter(methods.values()))["per_group_accuracy"])
    lines += ["", "## Test accuracy per group", "", "| group | n | " + " | ".join(methods) + " |",
              "|---|---:|" + "---|" * len(methods)]
    for g in groups:
        n = next(iter(methods.values()))["group_counts"][g]
        lines.append(f"| {g} | {n} | " + " | ".join(_pct(m["per_group_accuracy"][g]) for m in methods.values()) + " |")
    if results.get("P_sweep"):
        lines += ["", "## DBB per pruning threshold P", "", "The edits are scored once; each P keeps its own "
                  "edits and retrains. The paper chose P on validation worst-group accuracy.", "",
                  "| P | synthetic rows kept | validation worst-group | test worst-group |", "|---|---|---|---|"]
        for P, row in results["P_sweep"].items():
            kept = "n/a" if row["synthetic_rows"] is None else f"{row['synthetic_rows']['mean']:.0f}"
            lines.append(f"| {P} | {kept} "
                         f"| {_pct(row['validation_worst_group_accuracy'])} | {_pct(row['worst_group_accuracy'])} |")
    lines += ["", "Group labels used: none (neither split's group labels), validation (model selection or DFR's "
              "balanced set), train (the method trains on training group labels).", "", "![results](results.png)"]
    return "\n".join(lines) + "\n"


COLOURS = {"none": "tab:green", "validation": "tab:blue", "train": "tab:orange"}


def results_figure(results: dict, path: Path) -> None:
    """Worst-group accuracy per method (mean over seeds, error bar: std), coloured by group labels used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = {k: m for k, m in results["methods"].items() if m["worst_group_accuracy"] is not None}
    figure, ax = plt.subplots(figsize=(1.1 * len(methods) + 2, 3.5))
    names = list(methods)
    means = [100 * m["worst_group_accuracy"]["mean"] for m in methods.values()]
    stds = [100 * m["worst_group_accuracy"]["std"] for m in methods.values()]
    ax.bar(names, means, yerr=stds, capsize=4, color=[COLOURS[m["group_labels_used"]] for m in methods.values()])
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=30)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, [f"group labels: {k}" for k in COLOURS], fontsize=7, loc="lower right")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(path)


def write_results(out: Path, results: dict) -> None:
    write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=str))
    write_text_atomic(out / "results.md", results_markdown(results))
    results_figure(results, out / "results.png")
