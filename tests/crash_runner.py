"""Runs the small pipeline of tests/test_crash_safety.py in its own process, and
optionally kills that process with SIGKILL at a chosen point.

    python tests/crash_runner.py MODELS_DIR PLAN.json

``PLAN.json`` lists runs ``{"out": OUTPUT_DIR, "kill": spec or null, "flags": [...]}``,
done one after the other. A kill spec
``"<hook>:<target>:<n>"`` picks the point where the run kills itself; the hooks wrap library
functions from the outside (the library carries no test code):

- ``call:<module.function>[@<phase>]:n``: just before the n-th call of the function;
- ``return:<module.function>[@<phase>]:n``: just after the n-th call returns;
- ``replaced:<path under OUTPUT_DIR>:n``: just after the n-th ``os.replace`` onto a path
  starting with it (a shard, stage folder or file renamed into place);
- ``saved:<path under OUTPUT_DIR>:n``: just after the n-th ``save_to_disk`` into a path
  starting with it (a temporary folder written, not yet renamed).

``@<phase>`` counts only calls made while the pipeline trains into ``OUTPUT_DIR/<phase>``
(``erm`` or ``retrained``), so ERM and retraining steps are told apart.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_point(spec: str, out: Path) -> None:
    import datasets

    import dbb_hf.pipeline

    hook, rest = spec.split(":", 1)
    target, n = rest.rsplit(":", 1)
    n = int(n)
    seen = {"n": 0, "phase": None}

    def hit() -> bool:
        seen["n"] += 1
        return seen["n"] == n

    train = dbb_hf.pipeline.train_classifier

    @functools.wraps(train)
    def train_in_phase(*args, **kwargs):
        seen["phase"] = Path(args[3].output_dir).name
        try:
            return train(*args, **kwargs)
        finally:
            seen["phase"] = None

    dbb_hf.pipeline.train_classifier = train_in_phase

    if hook in ("call", "return"):
        name, _, phase = target.partition("@")
        owner, attribute = _resolve(name)
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            counted = not phase or seen["phase"] == phase
            if counted and hook == "call" and hit():
                _die()
            result = original(*args, **kwargs)
            if counted and hook == "return" and hit():
                _die()
            return result

        setattr(owner, attribute, wrapped)
    elif hook == "replaced":
        replace = os.replace

        def replaced(src, dst, *args, **kwargs):
            replace(src, dst, *args, **kwargs)
            if _under(dst, out, target) and hit():
                _die()

        os.replace = replaced
    elif hook == "saved":
        for cls in (datasets.Dataset, datasets.DatasetDict):
            save = cls.save_to_disk

            def saved(self, path, *args, _save=save, **kwargs):
                _save(self, path, *args, **kwargs)
                if _under(path, out, target) and hit():
                    _die()

            cls.save_to_disk = saved
    else:
        raise SystemExit(f"unknown kill hook {hook!r} in DBB_HF_KILL_AT={spec!r}")


def _resolve(name: str):
    """(owner, attribute) of a dotted name: a module's function or a class's method."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:-1]:
            owner = getattr(owner, part)
        return owner, parts[-1]
    raise SystemExit(f"cannot resolve {name!r}")


def _under(path, out: Path, prefix: str) -> bool:
    """Whether ``path`` is ``out/prefix`` or inside it."""
    try:
        relative = Path(os.path.realpath(path)).relative_to(os.path.realpath(out))
    except ValueError:
        return False
    return relative == Path(prefix) or Path(prefix) in relative.parents


SMALL_RUN = {
    "data": {"dataset": "toy", "options": ["num_train=64", "num_validation=16", "num_test=16", "correlation=0.9"]},
    "erm": {"num_epochs": 2, "train_batch_size": 16, "eval_batch_size": 32, "lr_scheduler": "cosine"},
    "retraining": {"num_epochs": 2, "train_batch_size": 16, "eval_batch_size": 32, "lr_scheduler": "cosine",
                   "gammas": [1.0, 1.0]},
    "selection": {"lowest_loss": "4"},
    "textual_inversion": {"max_train_steps": 3},
    "inpainting": {"batch_size": 2},
    "masking": {"backend": "column", "mask_column": "mask", "batch_size": 2},
    # P = 0 without the psi rule: the tiny models' edits are then part kept, part pruned.
    "pruning": {"batch_size": 2, "internal_batch_size": 8, "psi_rule": False},
    "run": {"shard_size": 4},
}


def small_run_defaults(models_dir: str) -> dict:
    """The toy benchmark, small, with the tiny preset's models (built once, under ``models_dir``):
    every stage in seconds."""
    from dbb_hf.config import resolve_layers

    return resolve_layers(presets=["demo", "tiny"], overrides=[("crash runner", SMALL_RUN)], build_root=models_dir)


def run_plan(models_dir: str, plan: list[dict]) -> list[int]:
    """Run each ``{"out", "kill", "flags"}`` of ``plan`` in turn, each in a process of its
    own forked from this one (which imports the libraries once, and never computes, so a
    run costs its work, not the import time); returns each run's wait status."""
    import dbb_hf.cli  # noqa: F401  (imported once, before forking)

    defaults = small_run_defaults(models_dir)
    statuses = []
    for step in plan:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                out = Path(step["out"])
                if step.get("kill"):
                    install_kill_point(step["kill"], out)
                from dbb_hf.cli import run_pipeline

                run_pipeline(["--output_dir", str(out), *step.get("flags", [])], defaults=defaults)
                code = 0
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        statuses.append(os.waitpid(pid, 0)[1])
    return statuses


if __name__ == "__main__":
    models, plan = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    print("STATUSES " + json.dumps(run_plan(models, plan)))
