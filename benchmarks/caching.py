"""Caching: rerunning a finished pipeline with the same config versus running it the first time.

Runs ``dbb_hf.cli.run_pipeline`` (the demo preset, shrunk by the flags below) in a fresh
output folder, then reruns it ``--repeats`` times with the same config and folder. Every
stage should be reused, so a rerun should cost at most 5% of the first run (target:
rerun / first <= 0.05). The pipeline's modules are imported before the clock starts, so
both runs measure pipeline work, not Python imports (``--import-time`` measures those
separately, in a fresh interpreter, as a command-line rerun would pay them).

    python benchmarks/caching.py
    python benchmarks/caching.py --profile
    python benchmarks/caching.py --pipeline-args --options num_train=3000 --erm_num_epochs 6
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time

import torch

from _common import base_parser, finish, median, print_machine, verdict
from dbb_hf.cli import run_pipeline
from dbb_hf.config import load_yaml
from dbb_hf.presets import DEMO_PRESET

# Appended to the preset's own data options (later keys win), then two shorter trainings.
SHRINK_OPTIONS = ["num_train=600", "num_validation=200", "num_test=200"]
SHRINK_FLAGS = ["--erm_num_epochs", "2", "--retraining_num_epochs", "2"]


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--preset", default=DEMO_PRESET, help="YAML defaults of the run")
    parser.add_argument("--target", type=float, default=0.05, help="largest rerun / first-run time allowed")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one rerun (library code)")
    parser.add_argument("--import-time", action="store_true", help="also time importing the pipeline in a fresh interpreter")
    parser.add_argument(
        "--pipeline-args",
        nargs=argparse.REMAINDER,
        default=None,
        help="flags for run_pipeline, after all other flags (default: the preset's data options plus "
        f"{' '.join(SHRINK_OPTIONS)}, and {' '.join(SHRINK_FLAGS)})",
    )
    parser.set_defaults(repeats=3)
    return parser.parse_args()


def timed_run(argv: list[str], defaults: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    report = run_pipeline(argv, defaults=defaults)
    return time.perf_counter() - start, report


def profile_rerun(argv: list[str], defaults: dict) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run_pipeline(argv, defaults=defaults)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats("dbb_hf", 30)
    print("--- cProfile of one rerun (cumulative, dbb_hf functions)")
    print(out.getvalue())


def import_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dbb_hf.pipeline"], check=True)
    return time.perf_counter() - start


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    import dbb_hf.pipeline  # noqa: F401  (imports are not what is measured)

    print_machine("caching: rerun of a finished pipeline vs its first run", vars(args))
    defaults = load_yaml(args.preset)
    if args.pipeline_args is None:
        options = [*defaults.get("data", {}).get("options", []), *SHRINK_OPTIONS]
        args.pipeline_args = ["--options", *options, *SHRINK_FLAGS]
    print(f"pipeline flags: {' '.join(args.pipeline_args)}")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--output_dir", os.path.join(tmp, "run"), *args.pipeline_args]
        first, report = timed_run(argv, defaults)
        print(f"first run: {first:.2f} s; stage seconds {report['timings_seconds']}")
        reruns = []
        for _ in range(args.repeats):
            seconds, rerun_report = timed_run(argv, defaults)
            reruns.append(seconds)
        stages = rerun_report["timings_seconds"]
        print(f"reruns: {', '.join(f'{s:.2f}' for s in reruns)} s; median {median(reruns):.2f} s")
        print(f"  last rerun's stage seconds {stages} (sum {sum(stages.values()):.2f} s)")
        print(f"  rest of the rerun, outside the stage timings (report writing with its edit grid, config): "
              f"{reruns[-1] - sum(stages.values()):.2f} s")
        missing = [s for s in report["timings_seconds"] if s != "load" and s not in rerun_report["reused_stages"]]
        print(f"  reused stages: {rerun_report['reused_stages']}; recomputed: {missing or 'none'}")
        if args.profile:
            profile_rerun(argv, defaults)
    if args.import_time:
        print(f"importing dbb_hf.pipeline in a fresh interpreter: {import_seconds():.2f} s (paid by a CLI rerun)")
    results = [verdict("rerun / first run time", median(reruns) / first, args.target, at_least=False)]
    return finish(results)


if __name__ == "__main__":
    raise SystemExit(main())
