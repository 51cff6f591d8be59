"""The face recipe's wall time at CelebA test-partition size: ``recipes/celeba.py --preset
miniature`` on a folder of about 10,000 training images, on this machine's CPU cores.

celeba-mini holds 5,419 real faces, so the folder repeats them: a CelebA folder in the
official layout (``img_align_celeba/`` of symlinks, ``list_attr_celeba.txt``,
``list_eval_partition.txt``, ``identity_CelebA.txt``) whose image k is celeba-mini's
image k mod 5,419 under its own file name, with that image's attributes and partition,
and an identity of its own per repeat. Every stage costs what it costs on that many
distinct images (decoding, training, one edit per selected row), so the time is the
recipe's at that size; the accuracies of a folder of repeated faces mean nothing and are
not reported. The recipe runs in a subprocess, as a user runs it, and the benchmark
prints its wall time, the CPU time of the recipe process, every stage's seconds from
``report.json``, the edit counts, and the verdict against the issue's 45 minutes:

    python benchmarks/miniature_recipe_time.py --train-rows 10000
    python benchmarks/miniature_recipe_time.py --train-rows 2000 --target-minutes 10 -- --erm_num_epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import finish, print_machine, verdict

REPO = Path(__file__).resolve().parents[1]


def write_repeated_folder(data_dir: Path, out: Path, train_rows: int) -> dict[str, int]:
    """A CelebA folder of celeba-mini's faces repeated until its training partition holds
    ``train_rows`` images (validation and test grow by the same factor); its split sizes."""
    from dbb_hf.data.celeba import ATTRIBUTES_FILE, IDENTITY_FILE, IMAGE_FOLDER, PARTITION_FILE

    lines = (data_dir / ATTRIBUTES_FILE).read_text().splitlines()
    attributes = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in lines[2:] if line.strip()}
    partition = dict(line.split() for line in (data_dir / PARTITION_FILE).read_text().splitlines() if line.strip())
    identity = dict(line.split() for line in (data_dir / IDENTITY_FILE).read_text().splitlines() if line.strip())
    names = sorted(attributes)
    train = sum(partition[n] == "0" for n in names)
    if train == 0:
        raise ValueError(f"{data_dir / PARTITION_FILE} puts no image in the training partition (0)")
    total = math.ceil(len(names) * train_rows / train)
    (out / IMAGE_FOLDER).mkdir(parents=True)
    rows, parts, ids, sizes = [], [], [], {"0": 0, "1": 0, "2": 0}
    for k in range(total):
        source = names[k % len(names)]
        if partition[source] == "0" and sizes["0"] == train_rows:
            continue  # the training partition is full; the other partitions keep growing to the end
        name = f"{k + 1:06d}.jpg"
        (out / IMAGE_FOLDER / name).symlink_to((data_dir / IMAGE_FOLDER / source).resolve())
        rows.append(f"{name} {attributes[source]}")
        parts.append(f"{name} {partition[source]}")
        # A repeat is another person: identity re-splits keep each copy's faces together.
        ids.append(f"{name} {int(identity[source]) + (k // len(names)) * 100_000}")
        sizes[partition[source]] += 1
    (out / ATTRIBUTES_FILE).write_text("\n".join([str(len(rows)), lines[1], *rows]) + "\n")
    (out / PARTITION_FILE).write_text("\n".join(parts) + "\n")
    (out / IDENTITY_FILE).write_text("\n".join(ids) + "\n")
    return {"train": sizes["0"], "validation": sizes["1"], "test": sizes["2"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "celeba-mini"),
                        help="a CelebA folder in the official layout whose faces are repeated")
    parser.add_argument("--train-rows", type=int, default=10_000, help="images in the training partition")
    parser.add_argument("--output_dir", default=None, help="where the folder and the run go (default: a temporary folder)")
    parser.add_argument("--target-minutes", type=float, default=45.0)
    parser.add_argument("recipe_flags", nargs="*", help="after --: more flags for recipes/celeba.py")
    args = parser.parse_args()
    print_machine("the miniature face recipe at CelebA test-partition size", vars(args))

    with tempfile.TemporaryDirectory(prefix="miniature-recipe-") as tmp:
        root = Path(args.output_dir or tmp)
        folder, run = root / "faces", root / "run"
        sizes = write_repeated_folder(Path(args.data_dir), folder, args.train_rows)
        print(f"folder: {folder} (celeba-mini repeated): {sizes}", flush=True)
        command = [sys.executable, str(REPO / "recipes" / "celeba.py"), "--preset", "miniature",
                   "--data_dir", str(folder), "--output_dir", str(run), *args.recipe_flags]
        print("command: " + " ".join(command), flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr[-4000:])
            raise SystemExit(f"the recipe failed (exit status {done.returncode})")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = json.loads((run / "report.json").read_text())

    print(f"wall {wall / 60:.1f} min; CPU of the recipe process {(usage.ru_utime + usage.ru_stime) / 60:.1f} min")
    for stage, seconds in report["timings_seconds"].items():
        print(f"  {stage:<26} {seconds:8.1f} s")
    for direction, counts in report["counts"].items():
        print(f"  {direction:<26} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return finish([verdict("minutes", wall / 60, args.target_minutes, at_least=False)])


if __name__ == "__main__":
    sys.exit(main())
