"""How often an independent oracle judges a run's edits as their target class, kept and pruned.

A run's pruning keeps an edit when the run's own ERM classifier no longer sees the source
class (psi) and the edited region pushes it towards the target (rho). This asks a judge
that is not that classifier: the face oracle shipped in ``dbb_hf/miniature/face_oracle``
(timm ``test_resnet`` trained on group-balanced real faces of the prior's identities;
``miniature_gates.py`` trains and measures it). Per run folder and edit direction it prints:

- the edits, kept and pruned, and the share of each that the oracle calls the target class;
- the share among all edits (what retraining would get without pruning).

It tells apart what the experiment's worst-group accuracy cannot: whether a generator's
edits are the class they are labelled, and whether pruning removes the ones that are not.

    python benchmarks/edit_oracle_agreement.py runs/compare-faces/seed_0 runs/compare-faces-compose/seed_0

Each argument is a finished run folder of ``recipes/celeba.py --preset miniature`` (or any
run on aligned faces at the oracle's resolution). The oracle sees each edit squashed to its
64x64 input, as it saw the faces it was trained on.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from _common import print_machine
from dbb_hf.miniature import FACE_ORACLE_PATH
from dbb_hf.modeling import image_probabilities, load_classifier
from dbb_hf.stages import load_run_stage


def judged_edits(run_dir: str, oracle):
    """A run's generated edits (its pruning stage) and the oracle's class for each."""
    edits = load_run_stage(run_dir, "pruning")
    edits = edits.filter(lambda status: status == "ok", input_columns="generation_status")
    return edits, image_probabilities(oracle, edits["generated"]).argmax(axis=1)


def _directions(edits):
    names = edits.features["label"].names
    source, target = np.asarray(edits["label"]), np.asarray(edits["target_label"])
    for s, t in sorted(set(zip(source.tolist(), target.tolist()))):
        yield f"{names[s]}->{names[t]}", (source == s) & (target == t), t


def agreement(run_dir: str, edits, judged) -> list[dict]:
    """Per direction: counts and the oracle's target-class share of kept, pruned and all edits."""
    keep = np.asarray(edits["keep"], dtype=bool)
    rows = []
    for name, direction, t in _directions(edits):
        hit = judged == t
        row = {"run": run_dir, "direction": name, "edits": int(direction.sum())}
        for part, chosen in (("kept", direction & keep), ("pruned", direction & ~keep), ("all", direction)):
            row[part] = int(chosen.sum())
            row[f"{part}_target"] = float(hit[chosen].mean()) if chosen.any() else float("nan")
        rows.append(row)
    return rows


def stricter(run_dir: str, edits, judged, rho_above=(), psi_below=()) -> list[dict]:
    """Per direction and threshold: the kept edits that a stricter rule would still keep (rho
    above a larger P, or psi below a value under Psi), and the oracle's target-class share of
    them. It asks whether a threshold separates the edits the oracle calls right."""
    keep = np.asarray(edits["keep"], dtype=bool)
    rho, psi = np.asarray(edits["rho"], dtype=float), np.asarray(edits["psi"], dtype=float)
    rows = []
    for name, direction, t in _directions(edits):
        rules = [(f"rho > {v:g}", rho > v) for v in rho_above] + [(f"psi < {v:g}", psi < v) for v in psi_below]
        for rule, passes in rules:
            chosen = direction & keep & passes
            rows.append({"run": run_dir, "direction": name, "rule": rule, "kept": int(chosen.sum()),
                         "kept_target": float((judged == t)[chosen].mean()) if chosen.any() else float("nan")})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("run_dirs", nargs="+", help="finished run folders (their pruning stage)")
    parser.add_argument("--oracle", default=FACE_ORACLE_PATH, help="the judge (a dbb_hf classifier folder)")
    parser.add_argument("--rho_above", type=float, nargs="*", default=[],
                        help="also: the kept edits with rho above each value (a larger P), judged")
    parser.add_argument("--psi_below", type=float, nargs="*", default=[],
                        help="also: the kept edits with psi below each value (a stricter psi rule), judged")
    args = parser.parse_args(argv)
    print_machine("edits judged by an independent oracle", {"oracle": args.oracle})
    oracle = load_classifier(args.oracle)
    print("| run | direction | edits | kept | judged target, kept | pruned | judged target, pruned "
          "| judged target, all |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    judged = {run_dir: judged_edits(run_dir, oracle) for run_dir in args.run_dirs}  # once per run
    for run_dir in args.run_dirs:
        for row in agreement(run_dir, *judged[run_dir]):
            print(f"| {row['run']} | {row['direction']} | {row['edits']} | {row['kept']} | {row['kept_target']:.1%} "
                  f"| {row['pruned']} | {row['pruned_target']:.1%} | {row['all_target']:.1%} |")
    if args.rho_above or args.psi_below:
        print("\n| run | direction | kept edits that also pass | kept | judged target |")
        print("|---|---|---|---:|---:|")
        for run_dir in args.run_dirs:
            for row in stricter(run_dir, *judged[run_dir], args.rho_above, args.psi_below):
                print(f"| {row['run']} | {row['direction']} | {row['rule']} | {row['kept']} | {row['kept_target']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
