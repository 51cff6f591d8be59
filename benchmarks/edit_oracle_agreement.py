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


def agreement(run_dir: str, oracle) -> list[dict]:
    """Per direction: counts and the oracle's target-class share of kept, pruned and all edits."""
    edits = load_run_stage(run_dir, "pruning")
    edits = edits.filter(lambda status: status == "ok", input_columns="generation_status")
    names = edits.features["label"].names
    judged = image_probabilities(oracle, edits["generated"]).argmax(axis=1)
    target = np.asarray(edits["target_label"])
    source = np.asarray(edits["label"])
    keep = np.asarray(edits["keep"], dtype=bool)
    rows = []
    for s, t in sorted(set(zip(source.tolist(), target.tolist()))):
        direction = (source == s) & (target == t)
        hit = judged == t
        row = {"run": run_dir, "direction": f"{names[s]}->{names[t]}", "edits": int(direction.sum())}
        for part, chosen in (("kept", direction & keep), ("pruned", direction & ~keep), ("all", direction)):
            row[part] = int(chosen.sum())
            row[f"{part}_target"] = float(hit[chosen].mean()) if chosen.any() else float("nan")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("run_dirs", nargs="+", help="finished run folders (their pruning stage)")
    parser.add_argument("--oracle", default=FACE_ORACLE_PATH, help="the judge (a dbb_hf classifier folder)")
    args = parser.parse_args(argv)
    print_machine("edits judged by an independent oracle", {"oracle": args.oracle})
    oracle = load_classifier(args.oracle)
    print("| run | direction | edits | kept | judged target, kept | pruned | judged target, pruned "
          "| judged target, all |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run_dir in args.run_dirs:
        for row in agreement(run_dir, oracle):
            print(f"| {row['run']} | {row['direction']} | {row['edits']} | {row['kept']} | {row['kept_target']:.1%} "
                  f"| {row['pruned']} | {row['pruned_target']:.1%} | {row['all_target']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
