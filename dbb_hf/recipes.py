"""What the scripts in ``recipes/`` share: YAML defaults beside the script, and the pipeline run.

A recipe is ``accelerate launch recipes/<dataset>.py --data_dir DIR [--flags]``; every
flag is a config field (``--<section>_<field>``, or unprefixed for ``data`` and ``run``),
so ``--help`` lists them all. ``--preset tiny`` (any preset of :mod:`dbb_hf.presets`)
goes over the recipe's YAML: tiny random models built offline, the real code path in seconds.
"""

from __future__ import annotations

import sys


def run_recipe(recipe_yaml: str, argv: list[str] | None = None) -> int:
    """Run the pipeline with ``recipe_yaml`` as defaults, then ``--preset``, ``--config`` and the flags.

    ``compare`` as the first argument runs ``dbb-hf compare`` on the recipe's settings instead
    (the YAML's ``compare`` section, then the flags): DBB against the baselines.
    """
    from accelerate import PartialState

    from .cli import run_compare, run_pipeline

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        from .compare import results_markdown

        results = run_compare(argv[1:], defaults=recipe_yaml)
        if PartialState().is_main_process:
            print(results_markdown(results))
        return 0
    report = run_pipeline(argv, defaults=recipe_yaml)
    if report is not None:
        erm, retrained = report["erm"], report["retrained"]
        print(f"worst-group accuracy: ERM {erm['worst_group_accuracy']} -> retrained {retrained['worst_group_accuracy']}")
    return 0
