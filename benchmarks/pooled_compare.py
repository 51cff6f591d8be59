"""``dbb-hf compare`` folders of several data splits, pooled, and two runs compared cell by cell.

The face experiment on identity re-splits of the experiment half (docs/baselines.md, "Identity
re-splits"), DBB with the face prior against the compose control and ERM (``--options seed=K``
re-splits; K = 0 is the split of every earlier run; the control's folders start as copies of the
DBB folders, so they share the ERM models), here with three of its five splits:

    python benchmarks/pooled_compare.py \\
        --folders prior=runs/compare-preset,runs/compare-split1,runs/compare-split2 \\
        --folders compose=runs/compare-preset-compose,runs/compare-split1-compose,runs/compare-split2-compose \\
        --runs prior:erm prior:dbb compose:dbb --pair prior:dbb prior:erm --pair prior:dbb compose:dbb

Each ``--folders LABEL=DIR,DIR,...`` lists one compare folder per split, in the same split order for
every label; a run is ``LABEL:METHOD`` (a method's cells in those folders). The tables are those of
:mod:`dbb_hf.compare_pooling`.
"""

from __future__ import annotations

import argparse
import sys

from _common import print_machine
from dbb_hf.compare_pooling import pooled_markdown


def _folders(text: str) -> tuple[str, list[str]]:
    label, sep, dirs = text.partition("=")
    if not sep or not label or not dirs:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR,DIR,..., got {text!r}")
    return label, dirs.split(",")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", type=_folders, action="append", required=True, metavar="LABEL=DIR,DIR,...")
    parser.add_argument("--runs", nargs="+", required=True, metavar="LABEL:METHOD")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="compare run A with run B on the cells both have (repeatable)")
    args = parser.parse_args(argv)
    print_machine("dbb-hf compare, pooled over folders")
    try:
        print(pooled_markdown(dict(args.folders), args.runs, [tuple(p) for p in args.pair]))
    except (ValueError, FileNotFoundError) as error:
        print(f"pooled_compare: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
