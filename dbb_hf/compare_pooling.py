"""``dbb-hf compare`` results pooled over several output folders, and two methods compared cell by cell.

One ``compare`` folder varies the training seed on one data split. On a small folder that is not
enough: the face experiment's test split holds 7 blond men, so one face moves its worst group by
14 points, and its validation 2, so model selection is a coin. Rerunning ``compare`` on other
splits of the same faces (``--options seed=K`` re-splits the identities) gives independent test
sets; this module pools their saved cells (``output_dir/cells/<method>/seed_<s>.json``) and
compares two methods on the cells they share, split by split and seed by seed, with an exact
sign-flip permutation test of the mean paired difference.

A run is named ``LABEL:METHOD``: LABEL names a list of compare folders, one per split, in the
same order for every label (``benchmarks/pooled_compare.py`` reads them from the command line).
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .compare import METRICS, mean_std, saved_cells


def parse_run(name: str) -> tuple[str, str]:
    """``"LABEL:METHOD"`` -> (label, method)."""
    label, sep, method = name.rpartition(":")
    if not sep or not label or not method:
        raise ValueError(f"a run is named LABEL:METHOD (e.g. 'face prior:dbb'), got {name!r}")
    return label, method


def run_cells(folders: Mapping[str, Sequence[str | Path]], name: str, read=saved_cells) -> dict[tuple[int, int], dict]:
    """The cells of run ``LABEL:METHOD``, keyed by (split, seed): split is the folder's place in LABEL's list.
    ``read`` reads one folder's cells (:func:`dbb_hf.compare.saved_cells`)."""
    label, method = parse_run(name)
    if label not in folders:
        raise ValueError(f"run {name!r}: no folders are labelled {label!r} (labels: {', '.join(folders)})")
    out = {}
    for split, folder in enumerate(folders[label]):
        cells = read(folder)
        if method not in cells:
            raise ValueError(f"run {name!r}: {folder} has no {method!r} cells (it has: {', '.join(cells) or 'none'})")
        out.update({(split, cell["seed"]): cell for cell in cells[method]})
    return out


def _mean_std(values) -> dict:
    values = list(values)
    return {**mean_std(values), "n": len(values)}


def pooled_summary(cells: Mapping[tuple[int, int], dict]) -> dict:
    """Mean ± std over every cell of each test metric; per split, the mean ± std of its worst group."""
    runs = [cells[key] for key in sorted(cells)]
    splits = sorted({split for split, _ in cells})
    return {
        **{metric: _mean_std(r["test"][metric] for r in runs) for metric in METRICS},
        "per_split_worst_group": [
            _mean_std(cell["test"]["worst_group_accuracy"] for (s, _), cell in sorted(cells.items()) if s == split)
            for split in splits
        ],
    }


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Two-sided exact permutation p-value of the mean of paired differences (every sign flip):
    the share of flips whose mean is at least as far from 0 as the observed one."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no paired cells to compare")
    if d.size > 20:
        raise ValueError(f"{d.size} paired cells: the exact test enumerates 2^n sign flips; at most 20")
    observed = abs(d.mean())
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means = np.abs(flips @ d) / d.size
    return float(np.mean(means >= observed - 1e-12))


def paired(a: Mapping[tuple[int, int], dict], b: Mapping[tuple[int, int], dict], metric: str = "worst_group_accuracy") -> dict:
    """Run a against run b on the (split, seed) cells both have: the differences a - b of ``metric``,
    their mean ± std, wins / ties / losses of a, and the sign-flip p-value."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two runs share no (split, seed) cell: are their folders listed in the same order?")
    d = [a[key]["test"][metric] - b[key]["test"][metric] for key in shared]
    return {
        "cells": shared, "differences": d, **_mean_std(d),
        "wins": sum(x > 1e-12 for x in d), "ties": sum(abs(x) <= 1e-12 for x in d), "losses": sum(x < -1e-12 for x in d),
        "p_value": sign_flip_p_value(d),
    }


def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def pooled_markdown(folders: Mapping[str, Sequence[str | Path]], runs: Sequence[str], pairs: Sequence[tuple[str, str]]) -> str:
    """The tables ``benchmarks/pooled_compare.py`` prints: each run pooled, then each pair compared."""
    read = functools.lru_cache(maxsize=None)(saved_cells)  # a label's folders serve each of its methods
    cells = {name: run_cells(folders, name, read) for name in dict.fromkeys([*runs, *itertools.chain(*pairs)])}
    num_splits = max(len(v) for v in folders.values())
    lines = [
        "Test accuracy in %, mean ± std over every (split, seed) cell; per split, the mean over its seeds.", "",
        "| run | cells | worst group | average | " + " | ".join(f"split {k}" for k in range(num_splits)) + " |",
        "|---|---:|---:|---:|" + "---:|" * num_splits,
    ]
    for name in runs:
        s = pooled_summary(cells[name])
        per_split = [_pct(x) for x in s["per_split_worst_group"]]
        lines.append(f"| {name} | {s['worst_group_accuracy']['n']} | {_pct(s['worst_group_accuracy'])} "
                     f"| {_pct(s['average_accuracy'])} | " + " | ".join(per_split) + " |")
    if pairs:
        lines += ["", "Worst group, paired by (split, seed): a - b in points; p: exact sign-flip test of the mean.", "",
                  "| a | b | cells | a - b | a wins / ties / losses | p |", "|---|---|---:|---:|---:|---:|"]
        for a, b in pairs:
            p = paired(cells[a], cells[b])
            lines.append(f"| {a} | {b} | {p['n']} | {100 * p['mean']:+.1f} ± {100 * p['std']:.1f} "
                         f"| {p['wins']} / {p['ties']} / {p['losses']} | {p['p_value']:.3f} |")
    return "\n".join(lines) + "\n"
