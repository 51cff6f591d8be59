"""The accounting invariant: every input row of a stage is kept, pruned or failed, with its reason.

Masking, generation and pruning each return one output row per input row (a row is
identified by ``(example_id, target_label)``), with an outcome in its status column:

- masks: ``mask_status`` "ok", else the reason ("no_detection", "empty_mask",
  "failed: unreadable image: ...");
- generation: ``generation_status`` "ok", else the reason ("skipped_empty_mask",
  "skipped_no_background", "skipped_no_mask", "failed: ...");
- pruning: ``keep`` true (kept), else ``prune_reason``: a pruning rule ("psi>=Psi",
  "rho<=P", both) means pruned, anything else ("not_generated", "failed: ...") failed.

:func:`account_stage` checks that a stage lost, added or duplicated no row and that every
row has an outcome, and counts the outcomes per direction ("<source>-><target>");
:func:`AccountingError` names the rows otherwise. :func:`row_outcomes` gives each row of
the final (pruned) dataset its one outcome: kept, pruned with the rule, or the first
stage that failed it, with the reason.
"""

from __future__ import annotations

from collections import Counter

from datasets import Dataset

STATUS_COLUMNS = {"masks": "mask_status", "generation": "generation_status"}
STAGES = ("masks", "generation", "pruning")
PRUNING_RULES = ("psi>=Psi", "rho<=P")
OK = "ok"
QUOTED = 5


class AccountingError(RuntimeError):
    """A stage lost, added or duplicated rows, or left a row without an outcome."""


def reason_kind(reason: str) -> str:
    """The kind of a reason, for counting: ``"failed: unreadable image: <error>"`` -> ``"failed: unreadable image"``."""
    return ": ".join(reason.split(": ")[:2]) if reason.startswith("failed: ") else reason


def _is_pruning_rule(reason: str) -> bool:
    return bool(reason) and all(part in PRUNING_RULES for part in reason.split(";"))


def _keys(dataset: Dataset) -> list[tuple[str, int]]:
    columns = dataset.select_columns(["example_id", "target_label"]).to_dict()
    return list(zip(map(str, columns["example_id"]), columns["target_label"]))


def _directions(dataset: Dataset) -> list[str]:
    names = getattr(dataset.features["label"], "names", None)
    columns = dataset.select_columns(["label", "target_label"]).to_dict()
    name = (lambda c: names[c]) if names else str
    return [f"{name(s)}->{name(t)}" for s, t in zip(columns["label"], columns["target_label"])]


def _outcome(stage: str, row: dict) -> tuple[str, str]:
    """(``ok`` / ``kept`` / ``pruned`` / ``failed`` / ``unaccounted``, reason) of one output row."""
    if stage == "pruning":
        reason = row["prune_reason"]
        if row["keep"]:
            return ("kept", "") if not reason else ("unaccounted", f"kept with reason {reason!r}")
        if not reason:
            return "unaccounted", "not kept and no prune_reason"
        return ("pruned" if _is_pruning_rule(reason) else "failed"), reason
    status = row[STATUS_COLUMNS[stage]]
    if status == OK:
        return "ok", ""
    return ("failed", status) if status else ("unaccounted", f"empty {STATUS_COLUMNS[stage]}")


def _quote(keys) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - QUOTED} more)" if len(keys) > QUOTED else ""
    return ", ".join(f"{e}->t{t}" for e, t in keys[:QUOTED]) + more


def account_stage(stage: str, inputs: Dataset, outputs: Dataset) -> dict:
    """Check the invariant for ``stage`` (one of ``STAGES``) and count outcomes per direction.

    Raises :class:`AccountingError` when an input row is missing from ``outputs``, a row
    appears more often than in ``inputs`` (or was not an input), or a row has no outcome.
    Returns ``{direction: {"input", "ok" (or "kept" and "pruned"), "failed",
    "failed_reasons": {kind: n}}}`` plus a ``"total"`` entry; pruning also counts
    ``pruned_reasons``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    expected, found = Counter(_keys(inputs)), Counter(_keys(outputs))
    lost, extra = expected - found, found - expected
    if lost or extra:
        problems = []
        if lost:
            problems.append(f"{sum(lost.values())} input row(s) missing: {_quote(lost)}")
        if extra:
            problems.append(f"{sum(extra.values())} row(s) duplicated or not in the input: {_quote(extra)}")
        raise AccountingError(f"{stage}: {len(inputs)} rows in, {len(outputs)} out; " + "; ".join(problems))

    columns = ["keep", "prune_reason"] if stage == "pruning" else [STATUS_COLUMNS[stage]]
    missing = [c for c in columns if c not in outputs.column_names]
    if missing:
        raise AccountingError(f"{stage}: the output has no {missing} column(s) to account for its rows")
    outcomes = ("kept", "pruned", "failed") if stage == "pruning" else ("ok", "failed")
    rows = outputs.select_columns(columns).to_list()
    counts: dict = {}
    unaccounted = []
    for key, direction, row in zip(_keys(outputs), _directions(outputs), rows):
        outcome, reason = _outcome(stage, row)
        if outcome == "unaccounted":
            unaccounted.append((key, reason))
            continue
        for entry in (direction, "total"):
            c = counts.setdefault(entry, {"input": 0, **{o: 0 for o in outcomes}, "failed_reasons": {}}
                                  | ({"pruned_reasons": {}} if stage == "pruning" else {}))
            c["input"] += 1
            c[outcome] += 1
            if outcome in ("failed", "pruned"):
                bucket = c[f"{outcome}_reasons"]
                bucket[reason_kind(reason)] = bucket.get(reason_kind(reason), 0) + 1
    if unaccounted:
        shown = "; ".join(f"{e}->t{t}: {why}" for (e, t), why in unaccounted[:QUOTED])
        raise AccountingError(f"{stage}: {len(unaccounted)} row(s) without an outcome: {shown}")
    if "total" in counts:
        counts["total"] = counts.pop("total")  # last, after the directions
    return counts


def row_outcomes(pruned: Dataset) -> list[tuple[str, int, str]]:
    """``(example_id, target_label, outcome)`` of every row of the pruning output.

    The outcome is "kept", "pruned: <rule>", or "<stage>: <reason>" for the first stage
    that did not pass the row on ("masks: empty_mask", "generation:
    skipped_no_background", "pruning: failed: unreadable image: ...").
    """
    columns = [c for c in ("mask_status", "generation_status", "keep", "prune_reason") if c in pruned.column_names]
    outcomes = []
    for (example_id, target), row in zip(_keys(pruned), pruned.select_columns(columns).to_list()):
        outcomes.append((example_id, target, _final(row)))
    return outcomes


def _final(row: dict) -> str:
    for stage, column in STATUS_COLUMNS.items():
        status = row.get(column)
        if status is not None and status != OK:
            return f"{stage}: {status}"
    if row["keep"]:
        return "kept"
    reason = row["prune_reason"]
    return f"pruned: {reason}" if _is_pruning_rule(reason) else f"pruning: {reason}"


def outcome_counts(pruned: Dataset) -> dict:
    """Final outcomes counted per direction (failure reasons by kind), from :func:`row_outcomes`."""
    counts: dict = {}
    for direction, (_, _, outcome) in zip(_directions(pruned), row_outcomes(pruned)):
        kind = outcome if outcome == "kept" or outcome.startswith("pruned: ") else _stage_kind(outcome)
        per = counts.setdefault(direction, {})
        per[kind] = per.get(kind, 0) + 1
    return counts


def _stage_kind(outcome: str) -> str:
    stage, _, reason = outcome.partition(": ")
    return f"{stage}: {reason_kind(reason)}"


def data_accounting(kept: dict[str, int], dropped: list[dict]) -> dict:
    """Per split: rows loaded (``input``), kept (``ok``) and dropped for an unreadable image
    (``failed``, reasons by kind); ``kept`` holds each split's size after the drop."""
    counts = {}
    for split, size in kept.items():
        reasons = Counter(reason_kind(d["reason"]) for d in dropped if d["split"] == split)
        failed = sum(reasons.values())
        counts[split] = {"input": size + failed, "ok": size, "failed": failed, "failed_reasons": dict(reasons)}
    return counts
