"""The run's report: ERM versus retrained accuracy, counts per direction, timings, and a
picture grid of edits (source, mask, edit, integrated-gradient heatmap, verdict)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from datasets import Dataset, DatasetDict
from PIL import Image, ImageDraw

from .accounting import data_accounting
from .images import to_rgb
from .metrics import format_group_table
from .stages import write_text_atomic

TILE = 96
UNKNOWN = "unknown"  # a value the run cannot know (edits made elsewhere that do not record it)


def direction_counts(pruned: Dataset) -> dict:
    """Every selected row accounted for, per direction "<source>-><target>"."""
    names = pruned.features["label"].names
    counts = defaultdict(lambda: {"selected": 0, "masked": 0, "generated": 0, "kept": 0, "pruned": 0})
    columns = pruned.select_columns(["label", "target_label", "mask_status", "generation_status", "keep"]).to_dict()
    for source, target, mask_status, gen_status, keep in zip(*columns.values()):
        row = counts[f"{names[source]}->{names[target]}"]
        row["selected"] += 1
        row["masked"] += mask_status == "ok"
        generated = gen_status == "ok"
        row["generated"] += generated
        row["kept"] += bool(keep)
        row["pruned"] += generated and not keep
    return dict(counts)


# prune_reason values of the two rules (pruning.prune_reason), as named in the report.
RULES = {"psi>=Psi": "psi_rule_only", "rho<=P": "rho_rule_only", "psi>=Psi;rho<=P": "both_rules"}


def pruning_counts(pruned: Dataset) -> dict:
    """Per direction: edits kept, edits pruned by each rule, and rows with another reason.

    ``psi_rule_only`` (the edit still looks like its source class: psi >= Psi),
    ``rho_rule_only`` (the edited region does not move the classifier towards the target:
    rho <= P), ``both_rules``; any other ``prune_reason`` (``not_generated``, ...) under
    its own name. ``kept`` plus the rest is ``selected``: every row is accounted for.
    """
    names = pruned.features["label"].names
    counts = defaultdict(lambda: {"selected": 0, "kept": 0, **{name: 0 for name in RULES.values()}})
    columns = pruned.select_columns(["label", "target_label", "keep", "prune_reason"]).to_dict()
    for source, target, keep, reason in zip(*columns.values()):
        row = counts[f"{names[source]}->{names[target]}"]
        row["selected"] += 1
        name = "kept" if keep else RULES.get(reason, reason or "unknown")
        row[name] = row.get(name, 0) + 1
    return dict(counts)


def rho_histograms(pruned: Dataset, bins: int = 20) -> dict:
    """Per direction, histograms of rho for the kept and the pruned edits on shared bins.

    The paper chose P "using IG scores from a subset of generated samples": these show
    where the thresholds fall. Only generated edits with a finite rho count.
    ``{direction: {"edges": [...], "kept": [...], "pruned": [...]}}``.
    """
    import numpy as np

    names = pruned.features["label"].names
    columns = pruned.select_columns(["label", "target_label", "generation_status", "rho", "keep"]).to_dict()
    values = defaultdict(lambda: {"kept": [], "pruned": []})
    for source, target, status, rho, keep in zip(*columns.values()):
        if status == "ok" and rho is not None and np.isfinite(rho):
            values[(source, target)]["kept" if keep else "pruned"].append(rho)
    out = {}
    for (source, target), v in sorted(values.items()):
        edges = _round_edges(min(v["kept"] + v["pruned"]), max(v["kept"] + v["pruned"]), bins)
        out[f"{names[source]}->{names[target]}"] = {
            "edges": edges,
            **{k: np.histogram(v[k], bins=edges)[0].tolist() for k in ("kept", "pruned")},
        }
    return out


def _round_edges(low: float, high: float, bins: int) -> list[float]:
    """About ``bins`` bins of a round width (1, 2, 2.5 or 5 times a power of ten) covering [low, high].

    Round edges read well, and do not move with the float rounding of the scores (rho from
    another batch size differs by ~1e-8), so the same run gives the same histograms.
    """
    raw = max(high - low, 1e-6) / bins
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    start = math.floor(low / step) * step
    count = max(1, math.ceil((high - start) / step))
    while round(start + count * step, 10) < high:
        count += 1
    return [round(start + k * step, 10) for k in range(count + 1)]


def rho_figure(histograms: dict, P: list[float], names: list[str]) -> Image.Image | None:
    """One panel per direction: stacked bars of kept and pruned edits by rho, and the line rho = P."""
    if not histograms:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(histograms), figsize=(4 * len(histograms), 3), squeeze=False)
    for ax, (direction, h) in zip(axes[0], histograms.items()):
        edges = h["edges"]
        widths = [b - a for a, b in zip(edges, edges[1:])] or [1.0]
        ax.bar(edges[:-1], h["kept"], width=widths, align="edge", color="tab:green", label="kept")
        ax.bar(edges[:-1], h["pruned"], width=widths, align="edge", bottom=h["kept"], color="tab:red", label="pruned")
        threshold = P[names.index(direction.split("->")[1])] if len(P) > 1 else P[0]
        ax.axvline(threshold, color="black", linestyle="--", label=f"P = {threshold:g}")
        ax.set_title(direction, fontsize=9)
        ax.set_xlabel("rho")
        ax.set_ylabel("edits")
        ax.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _summary(metrics: dict) -> dict:
    keys = ("worst_group_accuracy", "worst_group", "average_accuracy", "weighted_average_accuracy",
            "per_group_accuracy", "group_counts")
    return {k: metrics.get(k) for k in keys}


def write_report(out: Path, *, metrics, pruned, augmented: DatasetDict, info, configs, data, timings, reused,
                 num_grid_examples: int, fingerprint: str | None = None, revisions: dict | None = None) -> dict:
    """Write report.json, report.md and the picture grid.

    ``metrics`` are ``{model: {split: metrics}}`` for "retrained" and, when known, "erm".
    ``info`` holds what the run knows of how the edits were made: ``Psi``, ``P`` (per class),
    ``purity``, ``tokens``, ``accounting`` and the ERM ``model``; with edits made elsewhere
    (a given augmented dataset), ``generators`` and ``thresholds_from`` instead. Without
    ``pruned`` (no edits made here) the counts and the pictures are left out.
    ``fingerprint`` names everything the pictures depend on (data, models, edits, number
    of examples): a grid saved under the same fingerprint is reused, not drawn again.
    ``revisions``: the resolved version of every model the run loaded (``resolved_revisions``).
    """
    out = Path(out)
    revisions = revisions or {}
    test = {name: m["test"] for name, m in metrics.items()}
    report = {
        "erm": _summary(test["erm"]) if "erm" in test else None,
        "retrained": _summary(test["retrained"]),
        "validation": {name: _summary(m["validation"]) for name, m in metrics.items()},
        "gain_worst_group_accuracy": _gain(test.get("erm"), test["retrained"]),
        "counts": direction_counts(pruned) if pruned is not None else None,
        "pruning": pruning_counts(pruned) if pruned is not None else None,
        "synthetic_rows": len(augmented["synthetic"]),
        "rho_histograms": rho_histograms(pruned) if pruned is not None else None,
        # Every row in of each stage: ok (kept / pruned) or failed with its reason; see dbb_hf.accounting.
        "accounting": {
            "data": data_accounting(
                {s: len(augmented[s]) for s in ("train", "validation", "test") if s in augmented},
                info.get("dropped_images") or [],
            ),
            **(info.get("accounting") or {}),
        },
        "Psi": info.get("Psi"),
        "P": list(info["P"]) if isinstance(info.get("P"), (list, tuple)) else info.get("P"),
        "thresholds_from": info.get("thresholds_from", "this run"),
        "selection_purity": info.get("purity"),
        "tokens": info.get("tokens"),
        "dataset": dataclasses.asdict(data) if dataclasses.is_dataclass(data) else data,
        "models": _models(configs, info),
        # The version each model resolved to: {role: {"id", "revision", "commit"} or {"id", "digest"}}.
        "resolved_revisions": revisions,
        "timings_seconds": {k: round(v, 2) for k, v in timings.items()},
        "reused_stages": reused,
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, default=str))
    has_grid = False
    if pruned is not None and info.get("model") is not None:
        has_grid = _cached_picture(
            out / "grid.png", fingerprint,
            lambda: edit_grid(pruned, info["model"], configs["pruning"], num_grid_examples),
        )
    has_pruned_grid = False
    if pruned is not None and info.get("model") is not None:
        has_pruned_grid = _cached_picture(
            out / "pruned.png", fingerprint,
            lambda: pruned_grid(pruned, info["model"], configs["pruning"], num_grid_examples),
        )
    has_rho = False
    if report["rho_histograms"]:
        has_rho = _cached_picture(
            out / "rho.png", fingerprint,
            lambda: rho_figure(report["rho_histograms"], report["P"], pruned.features["label"].names),
        )
    write_text_atomic(out / "report.md", _markdown(report, metrics, has_grid, has_pruned_grid, has_rho))
    return report


def _gain(erm, retrained) -> float | None:
    if erm is None or erm["worst_group_accuracy"] is None or retrained["worst_group_accuracy"] is None:
        return None
    return retrained["worst_group_accuracy"] - erm["worst_group_accuracy"]


def _models(configs: dict, info: dict) -> dict:
    """The models behind the report: the classifier, and the generation stages' models as
    configured, or as the given augmented dataset records them (its ``generator`` column)."""
    models = {"classifier": configs["classifier"].model_name}
    if "generators" in info:
        models["inpainting"] = {"generators": info["generators"] or UNKNOWN}
        models["masking"] = models["textual_inversion"] = UNKNOWN
        return models
    models["inpainting"] = {"backend": configs["inpainting"].backend, "id": configs["inpainting"].model_id,
                            "revision": configs["inpainting"].revision}
    models["masking"] = {"backend": configs["masking"].backend, "detector": configs["masking"].detector_id,
                         "segmenter": configs["masking"].segmenter_id}
    models["textual_inversion"] = {"id": configs["textual_inversion"].model_id,
                                   "revision": configs["textual_inversion"].revision}
    return models


def _cached_picture(path: Path, fingerprint: str | None, draw) -> bool:
    """Save ``draw()`` (a PIL image or None) at ``path`` unless it was saved under ``fingerprint``.

    The fingerprint is kept in ``<path>.json`` beside the picture. Returns whether the
    picture exists.
    """
    mark = path.with_name(path.name + ".json")
    if fingerprint is not None and path.exists() and mark.exists():
        if json.loads(mark.read_text()).get("fingerprint") == fingerprint:
            return True
    picture = draw()
    mark.unlink(missing_ok=True)
    if picture is None:
        path.unlink(missing_ok=True)
        return False
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    picture.save(tmp)
    os.replace(tmp, path)
    if fingerprint is not None:
        write_text_atomic(mark, json.dumps({"fingerprint": fingerprint}))
    return True


def _thresholds(values) -> str:
    """Per-class thresholds as text, "unknown" where the run does not know them."""
    if values is None or values == UNKNOWN:
        return UNKNOWN
    return "[" + ", ".join(UNKNOWN if v is None else str(v) for v in values) + "]"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _accounting_markdown(accounting: dict) -> list[str]:
    """Rows dropped at load, and the one outcome of every selected row (kept, pruned, or the stage that failed it)."""
    lines = []
    dropped = {split: c["failed"] for split, c in accounting.get("data", {}).items() if c["failed"]}
    if dropped:
        lines += [f"Rows dropped at load for an unreadable image (listed in dropped_images.json): {dropped}.", ""]
    if accounting.get("outcomes"):
        lines += ["## Outcome of every selected row", "", "| direction | outcome | rows |", "|---|---|---|"]
        for direction, counts in accounting["outcomes"].items():
            lines += [f"| {direction} | {outcome} | {n} |" for outcome, n in sorted(counts.items())]
        lines.append("")
    return lines


def _markdown(report: dict, metrics: dict, has_grid: bool, has_pruned_grid: bool = False, has_rho: bool = False) -> str:
    lines = [
        "# dbb_hf run report",
        "",
        "| model | test worst-group acc. | test average acc. | test weighted avg. | validation worst-group acc. |",
        "|---|---|---|---|---|",
    ]
    names = [name for name in ("erm", "retrained") if name in metrics]
    for name in names:
        t, v = report[name], report["validation"][name]
        lines.append(f"| {name} | {_pct(t['worst_group_accuracy'])} | {_pct(t['average_accuracy'])} "
                     f"| {_pct(t['weighted_average_accuracy'])} | {_pct(v['worst_group_accuracy'])} |")
    gain = report["gain_worst_group_accuracy"]
    lines += ["", "Worst-group gain: " + ("n/a" if gain is None else f"{100 * gain:+.1f} points") + ".", ""]
    for name in names:
        lines += [f"## {name}: test accuracy per group", "", format_group_table(metrics[name]["test"]), ""]
    if report["counts"]:
        lines += ["## Edits per direction", "", "| direction | selected | masked | generated | kept | pruned |",
                  "|---|---|---|---|---|---|"]
        for direction, c in report["counts"].items():
            lines.append(f"| {direction} | {c['selected']} | {c['masked']} | {c['generated']} | {c['kept']} | {c['pruned']} |")
        lines.append("")
    lines += [f"Psi (per source class): {_thresholds(report['Psi'])}; P (per target class): "
              f"{_thresholds(report['P'])} (from {report['thresholds_from']})", ""]
    lines += _revisions_markdown(report.get("resolved_revisions") or {})
    lines += _accounting_markdown(report.get("accounting") or {})
    if report.get("pruning"):
        lines += _pruning_markdown(report["pruning"], has_pruned_grid)
    if has_rho:
        lines += ["## rho of the kept and the pruned edits", "",
                  "Histograms per direction (the paper chose P from IG scores of generated samples; the dashed "
                  "line is P). The bins are in report.json (`rho_histograms`).", "", "![rho](rho.png)", ""]
    lines += ["## Time per stage (seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["timings_seconds"].items()]
    if report["reused_stages"]:
        lines += ["", f"Reused from an earlier run: {', '.join(report['reused_stages'])}."]
    if has_grid:
        lines += ["", "## Edits", "", "Source, mask, edit, integrated gradients (red: towards the target class), verdict.",
                  "", "![edits](grid.png)"]
    return "\n".join(lines) + "\n"


def _revisions_markdown(revisions: dict) -> list[str]:
    """The version of every model the run loaded: the Hub commit, or a local folder's digest."""
    from .revisions import describe

    if not revisions:
        return []
    lines = ["## Models", "", "| role | id | version |", "|---|---|---|"]
    lines += [f"| {role} | {entry['id']} | {describe(entry)} |" for role, entry in revisions.items()]
    return lines + [""]


def _pruning_markdown(pruning: dict, has_pruned_grid: bool) -> list[str]:
    other = sorted({k for c in pruning.values() for k in c} - {"selected", "kept", *RULES.values()})
    lines = [
        "## Pruning", "",
        "Each edit is kept only if the classifier no longer sees its source class (psi rule: pruned when "
        "psi >= Psi) and its edited region pushes the classifier towards the target class (rho rule: "
        "pruned when rho <= P).", "",
        "| direction | selected | kept | psi rule only | rho rule only | both rules |"
        + "".join(f" {name} |" for name in other),
        "|---|---|---|---|---|---|" + "---|" * len(other),
    ]
    for direction, c in pruning.items():
        lines.append(f"| {direction} | {c['selected']} | {c['kept']} | {c['psi_rule_only']} | {c['rho_rule_only']} "
                     f"| {c['both_rules']} |" + "".join(f" {c.get(name, 0)} |" for name in other))
    if has_pruned_grid:
        lines += ["", "Pruned edits (source, mask, edit, integrated gradients, reason):", "", "![pruned](pruned.png)"]
    return lines + [""]


def _tile(image: Image.Image) -> Image.Image:
    return to_rgb(image).resize((TILE, TILE), Image.NEAREST)


def edit_grid(pruned: Dataset, model, pruning_config, num_examples: int) -> Image.Image | None:
    """Rows of source | mask | edit | IG heatmap | verdict, half kept and half pruned edits."""
    generated = [i for i, s in enumerate(pruned["generation_status"]) if s == "ok"]
    if not generated or num_examples < 1:
        return None
    keep = pruned.select(generated)["keep"]
    kept = [i for i, k in zip(generated, keep) if k]
    dropped = [i for i, k in zip(generated, keep) if not k]
    half = num_examples // 2
    rows = kept[: max(half, num_examples - len(dropped))] + dropped[: max(half, num_examples - len(kept))]
    return _draw_rows(pruned, rows[:num_examples], model, pruning_config)


def pruned_grid(pruned: Dataset, model, pruning_config, num_examples: int) -> Image.Image | None:
    """The grid's rows for pruned edits only, taking each reason in turn so every rule is shown."""
    reasons = pruned.select_columns(["generation_status", "keep", "prune_reason"]).to_dict()
    by_reason = defaultdict(list)
    for i, (status, keep, reason) in enumerate(zip(*reasons.values())):
        if status == "ok" and not keep:
            by_reason[reason].append(i)
    queues = [by_reason[r] for r in sorted(by_reason)]
    rows = [queue[k] for k in range(max(map(len, queues), default=0)) for queue in queues if k < len(queue)]
    if not rows or num_examples < 1:
        return None
    return _draw_rows(pruned, rows[:num_examples], model, pruning_config)


def _draw_rows(pruned: Dataset, rows: list[int], model, pruning_config) -> Image.Image:
    """One row per edit: source | mask | edit | IG heatmap | verdict."""
    from .pruning import explain_edit

    names = pruned.features["label"].names
    mask_column = "generated_mask" if "generated_mask" in pruned.column_names else "mask"
    grid = Image.new("RGB", (TILE * 4 + 220, TILE * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, i in enumerate(rows):
        ex = pruned[i]
        explained = explain_edit(model, ex["image"], ex["generated"], ex[mask_column], ex["label"], ex["target_label"], pruning_config)
        for c, img in enumerate((ex["image"], ex[mask_column], ex["generated"], explained["heatmap"])):
            grid.paste(_tile(img), (c * TILE, r * TILE))
        verdict = "kept" if ex["keep"] else f"pruned: {ex['prune_reason']}"
        text = (f"{names[ex['label']]} -> {names[ex['target_label']]}\n"
                f"psi={ex['psi']:.3f} (Psi={ex['psi_threshold']:.3f})\nrho={ex['rho']:.3f}\n{verdict}")
        draw.multiline_text((4 * TILE + 6, r * TILE + 6), text, fill=(0, 0, 0))
    return grid
