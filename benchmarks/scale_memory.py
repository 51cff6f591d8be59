"""Scale: peak memory of the sharded stages over N and over 4N images.

Masking (tiny GroundingDINO + SAM), generation (tiny SD2 inpainting pipeline) and
pruning (tiny timm resnet, integrated gradients) each run through the resumable sharded
runner (``run_masking`` / ``run_inpainting`` / ``score_edits`` with ``output_dir``, i.e.
``dbb_hf.stages.run_resumable``) on a toy dataset saved to disk, once over N images and
once over 4N, each run in a fresh Python process. A thread samples the process's
resident memory (RSS, from /proc) every few milliseconds while the stage runs; the peak
of 4N over the peak of N must stay at most 1.2 (a stage that streams holds one shard,
not the dataset). RSS is also split into anonymous memory (what the process allocated)
and file-backed pages (memory-mapped Arrow files, which the kernel can drop at will).

    python benchmarks/scale_memory.py
    python benchmarks/scale_memory.py --num-images 512 --image-size 64 --shard-size 128

``--run`` measures a real-size run's stages instead: a dataset folder of real CelebA faces
(``--data_dir``, celeba-mini's 5,419 JPEGs repeated) of each size in ``--rows`` goes
through the pipeline's own stages (``Pipeline.load_data`` and ``Pipeline.generate``:
data, scores, selection, masks, generation, pruning, then ``Pipeline.augmented``) with offline
stand-ins for the models (a random resnet10t at 32 px, the ``column`` masks and the
``compose`` generator), each size in a fresh process. Per stage it prints the seconds,
the peak anonymous and total RSS, and the disk its folder takes; then each figure's
ratio between the sizes (linear growth: the rows' ratio for disk, about 1 for memory)
and the copies of the source images the run folder holds (its size over the data stage's):

    python benchmarks/scale_memory.py --run --run-rows 25000 100000 --data_dir ../shared/data/celeba-mini
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import base_parser, finish, print_machine, verdict

STAGES = ("masking", "generation", "pruning")
CLASS_NAMES = ["horizontal bar", "vertical bar"]
RUN_STAGES = ("data", "scores", "selection", "masks", "generation", "pruning", "augmented")


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--num-images", type=int, default=256, help="N (the large run has 4N)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the toy images")
    parser.add_argument("--shard-size", type=int, default=64, help="rows per shard")
    parser.add_argument("--target", type=float, default=1.2, help="largest peak(4N) / peak(N) allowed")
    parser.add_argument("--run", action="store_true", help="measure a real-size run's stages (see above)")
    parser.add_argument("--run-rows", type=int, nargs="+", default=[25000, 100000], help="--run: dataset sizes")
    parser.add_argument("--data_dir", default="../shared/data/celeba-mini", help="--run: CelebA faces to repeat")
    parser.add_argument("--fraction", default="0.1", help="--run: selection.lowest_loss (share of train edited)")
    # A run of one stage in this fresh process (used by the benchmark itself).
    parser.add_argument("--child", choices=STAGES + ("run",), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


# ------------------------------------------------------------------ memory sampling


def memory_kib() -> dict:
    """Current RSS and its anonymous and file-backed parts, in KiB (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0])
    return values


class PeakSampler(threading.Thread):
    """Samples :func:`memory_kib` every ``interval`` seconds and keeps each part's maximum."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = memory_kib()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for key, value in memory_kib().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.interval)

    def stop(self) -> dict:
        self.done.set()
        self.join()
        return self.peak


# ------------------------------------------------------------------ inputs (parent process)


def _edits(batch):
    """An edit per image (the object repainted magenta), its mask and a target class."""
    generated = []
    for image, mask in zip(batch["image"], batch["mask"]):
        pixels = np.asarray(image.convert("RGB")).copy()
        pixels[np.asarray(mask) > 127] = (255, 0, 255)
        generated.append(Image.fromarray(pixels))
    return {"generated": generated, "generated_mask": batch["mask"], "target_label": [1 - y for y in batch["label"]]}


def prepare(root: Path, args) -> None:
    """Tiny models and 4N-row inputs of each stage, on disk; a run over N reads the first N rows."""
    from datasets import Image as ImageFeature

    from dbb_hf.data.toy import ToyConfig, load_toy
    from dbb_hf.tiny.detection import save_tiny_grounding_dino, save_tiny_sam
    from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline

    save_tiny_grounding_dino(root / "grounding-dino")
    save_tiny_sam(root / "sam")
    save_tiny_inpaint_pipeline(root / "tiny-sd2-inpainting")
    config = ToyConfig(num_train=4 * args.num_images, num_validation=4, num_test=4, image_size=args.image_size)
    train = load_toy(config)["train"]
    features = train.features.copy()
    features.update({"generated": ImageFeature(), "generated_mask": ImageFeature(), "target_label": features["label"]})
    data = train.map(_edits, batched=True, features=features, desc="toy edits")
    inputs = {
        # Masking must not find a `mask` column: the ground truth stays under another name.
        "masking": data.rename_column("mask", "gt_mask").select_columns(["image", "label", "example_id", "gt_mask"]),
        "generation": data.select_columns(["image", "mask", "label", "target_label", "example_id"]),
        "pruning": data.select_columns(["image", "label", "target_label", "generated", "generated_mask", "example_id"]),
    }
    for stage, dataset in inputs.items():
        dataset.save_to_disk(root / f"input-{stage}")


# ------------------------------------------------------------------ one run (child process)


def setup_stage(stage: str, root: Path, args):
    """Models loaded and inputs opened; returns a function that runs the stage into a fresh folder."""
    import torch
    from datasets import load_from_disk

    torch.set_num_threads(args.threads)
    data = load_from_disk(root / f"input-{stage}").select(range(args.rows))
    output_dir = tempfile.mkdtemp(prefix=f"{stage}-", dir=root)
    from dbb_hf.stages import ShardPlan

    sharding = {"output_dir": output_dir, "shards": ShardPlan(shard_size=args.shard_size)}
    if stage == "masking":
        from dbb_hf.masking import MaskingConfig, load_masking_models, run_masking

        config = MaskingConfig(
            detector_id=str(root / "grounding-dino"), segmenter_id=str(root / "sam"), box_threshold=0.0, text_threshold=0.0
        )
        models = load_masking_models(config, "cpu")
        return lambda: run_masking(data, config, class_names=CLASS_NAMES, models=models, **sharding)
    if stage == "generation":
        from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline, run_inpainting

        config = InpaintingConfig(model_id=str(root / "tiny-sd2-inpainting"), num_inference_steps=2, resolution=32)
        pipe = load_inpainting_pipeline(config, "cpu")
        tokens = ["horizontal", "vertical"]
        return lambda: run_inpainting(data, config, pipe=pipe, class_names=CLASS_NAMES, tokens=tokens, **sharding)
    from dbb_hf.modeling import ClassifierConfig, create_classifier
    from dbb_hf.pruning import PruningConfig, score_edits

    torch.manual_seed(args.seed)
    model = create_classifier(ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32), 2).eval()
    config = PruningConfig(n_steps=8)
    return lambda: score_edits(data, model, config, Psi=[0.5, 0.5], **sharding)


def child(args) -> None:
    run = setup_stage(args.child, Path(args.root), args)
    baseline = memory_kib()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    if len(result) != args.rows:
        raise RuntimeError(f"{args.child}: {len(result)} rows out of {args.rows}")
    print("RESULT-JSON " + json.dumps({"baseline": baseline, "peak": peak, "seconds": seconds}))


def stage_child(stage: str, rows: int, root: Path, args) -> dict:
    command = [
        sys.executable, __file__, "--child", stage, "--root", str(root), "--rows", str(rows),
        "--threads", str(args.threads), "--shard-size", str(args.shard_size), "--seed", str(args.seed),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} over {rows} rows failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT-JSON "))
    return json.loads(line[len("RESULT-JSON ") :])


# ------------------------------------------------------------------ a real-size run's stages (--run)


def write_face_folder(folder: Path, rows: int, data_dir: str) -> None:
    """A dataset folder (``save_to_disk``, read by the ``hub`` loader) of ``rows`` real CelebA
    faces: celeba-mini's images, labels (Blond_Hair) and spurious attribute (Male) repeated,
    each row with its own id and a hair-region box as its mask, split 8:1:1 as CelebA's
    official partition is (row k: train, validation or test by k mod 10)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature, Value

    from dbb_hf.data.celeba import read_attributes

    attributes, _ = read_attributes(str(Path(data_dir) / "list_attr_celeba.txt"))
    files = list(attributes.index)
    mask = Path(folder.parent) / "hair-box.png"
    box = np.zeros((218, 178), np.uint8)
    box[:80, 30:148] = 255
    Image.fromarray(box, mode="L").save(mask)
    features = Features({"image": ImageFeature(), "mask": ImageFeature(), "label": ClassLabel(names=["not_blond", "blond"]),
                         "spurious": ClassLabel(names=["female", "male"]), "example_id": Value("string")})
    splits = {"train": [], "validation": [], "test": []}
    for k in range(rows):
        name = files[k % len(files)]
        split = "train" if k % 10 < 8 else ("validation", "test")[k % 10 - 8]
        splits[split].append({"image": str(Path(data_dir) / "img_align_celeba" / name), "mask": str(mask),
                              "label": int(attributes.loc[name, "Blond_Hair"] > 0),
                              "spurious": int(attributes.loc[name, "Male"] > 0), "example_id": f"face-{k:06d}"})
    DatasetDict({split: Dataset.from_list(items, features=features) for split, items in splits.items()}).save_to_disk(folder)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_child(args) -> None:
    """One run of the pipeline's stages over the folder of ``--rows`` faces, each stage measured."""
    from dbb_hf.config import DataConfig
    from dbb_hf.modeling import create_classifier, save_classifier
    from dbb_hf.pipeline import SECTIONS, Pipeline, RunConfig

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    sections = {
        "classifier": {"model_name": "resnet10t", "pretrained": False, "image_size": 32, "crop_pct": 1.0},
        "selection": {"lowest_loss": args.fraction, "ti_num_images": 2},
        "masking": {"backend": "column", "mask_column": "mask", "region": "box"},
        "inpainting": {"backend": "compose", "batch_size": 64},
        "pruning": {"n_steps": 2, "batch_size": 64, "psi_rule": False, "P": [0.0]},
    }
    configs = {name: cls(**sections.get(name, {})) for name, cls in SECTIONS.items()}
    data = DataConfig(dataset="hub", data_dir=str(root / f"faces-{args.rows}"),
                      options=["label_column=label", "spurious_column=spurious", "example_id_column=example_id",
                               "mask_column=mask"])
    out = root / f"run-{args.rows}"
    run = Pipeline(data, RunConfig(output_dir=str(out), shard_size=args.shard_size), configs)
    figures = {}
    cached = run._cached

    def measured(stage, fingerprint, compute, **kwargs):
        sampler = PeakSampler(interval=0.02)
        sampler.start()
        start = time.perf_counter()
        result = cached(stage, fingerprint, compute, **kwargs)
        peak = sampler.stop()
        figures[stage] = {"seconds": time.perf_counter() - start, "peak_anon_kib": peak["RssAnon"],
                          "peak_rss_kib": peak["VmRSS"], "disk_bytes": folder_bytes(out / stage),
                          "rows": sum(len(s) for s in result.values()) if hasattr(result, "values") else len(result)}
        return result

    run._cached = measured
    out.mkdir(parents=True, exist_ok=True)
    dataset, fp_data = run.load_data()
    torch.manual_seed(args.seed)
    erm_dir = root / f"erm-{args.rows}"
    save_classifier(create_classifier(configs["classifier"], 2).eval(), str(erm_dir), ["not_blond", "blond"])
    pruned, _ = run.generate(dataset, str(erm_dir), "random-erm")
    run.augmented(dataset, pruned, "augmented-" + fp_data, fp_data)
    # Each folder again at the end: a later stage's cache files beside an earlier stage's would show here.
    figures["run_folder"] = {"disk_bytes": folder_bytes(out),
                             "folders_at_end": {p.name: folder_bytes(p) for p in sorted(out.iterdir()) if p.is_dir()}}
    print("RESULT-JSON " + json.dumps(figures))


def measure_run(args) -> int:
    print_machine("scale: a real-size run's stages, disk and memory", vars(args))
    with tempfile.TemporaryDirectory(prefix="scale-run-") as tmp:
        root = Path(tmp)
        results = {}
        for rows in args.run_rows:
            start = time.perf_counter()
            write_face_folder(root / f"faces-{rows}", rows, args.data_dir)
            print(f"{rows} rows: input folder {folder_bytes(root / f'faces-{rows}') / 2**30:.2f} GiB "
                  f"written in {time.perf_counter() - start:.0f} s", flush=True)
            command = [sys.executable, __file__, "--child", "run", "--root", str(root), "--rows", str(rows),
                       "--threads", str(args.threads), "--shard-size", str(args.shard_size), "--seed", str(args.seed),
                       "--fraction", args.fraction]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"the run over {rows} rows failed:\n{done.stderr[-4000:]}")
            line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT-JSON "))
            results[rows] = json.loads(line[len("RESULT-JSON "):])
            shutil.rmtree(root / f"run-{rows}")
            shutil.rmtree(root / f"faces-{rows}")
            figures = results[rows]
            print(f"{rows} rows:")
            for stage in RUN_STAGES:
                f = figures.get(stage)
                if f:
                    print(f"  {stage:<11} {f['rows']:7d} rows {f['seconds']:7.1f} s  peak anonymous {mib(f['peak_anon_kib'])}"
                          f", peak RSS {mib(f['peak_rss_kib'])}, disk {f['disk_bytes'] / 2**20:9.1f} MiB")
            data_disk = figures["data"]["disk_bytes"]
            print(f"  run folder {figures['run_folder']['disk_bytes'] / 2**30:.2f} GiB = "
                  f"{figures['run_folder']['disk_bytes'] / data_disk:.2f} x the data stage (copies of the source images)")
            print("  at the end: " + ", ".join(f"{name} {size / 2**20:.1f} MiB"
                                              for name, size in figures["run_folder"]["folders_at_end"].items()))
        small, large = min(args.run_rows), max(args.run_rows)
        print(f"ratios {large} / {small} rows (rows ratio {large / small:g}):")
        for stage in RUN_STAGES:
            a, b = results[small].get(stage), results[large].get(stage)
            if a and b:
                print(f"  {stage:<11} disk {b['disk_bytes'] / max(a['disk_bytes'], 1):6.2f}  peak anonymous "
                      f"{b['peak_anon_kib'] / a['peak_anon_kib']:5.2f}  seconds {b['seconds'] / a['seconds']:6.2f}")
    return 0


def mib(kib: int) -> str:
    return f"{kib / 1024:7.1f} MiB"


def main():
    args = parse_args()
    if args.child == "run":
        run_child(args)
        return 0
    if args.child:
        child(args)
        return 0
    if args.run:
        return measure_run(args)
    torch.set_num_threads(args.threads)
    print_machine("scale: peak memory of the sharded stages over N and 4N images", vars(args))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, args)
        for stage in args.stages:
            runs = {n: stage_child(stage, n, root, args) for n in (args.num_images, 4 * args.num_images)}
            print(f"{stage}:")
            for n, run in runs.items():
                grown = {k: run["peak"][k] - run["baseline"][k] for k in run["peak"]}
                print(
                    f"  {n:5d} images: peak RSS {mib(run['peak']['VmRSS'])} (anonymous {mib(run['peak']['RssAnon'])}, "
                    f"file-backed {mib(run['peak']['RssFile'])}); above the loaded-models baseline: RSS "
                    f"{mib(grown['VmRSS'])}, anonymous {mib(grown['RssAnon'])}; {run['seconds']:.1f} s"
                )
            small, large = runs[args.num_images]["peak"], runs[4 * args.num_images]["peak"]
            print(f"  peak 4N / N: RSS {large['VmRSS'] / small['VmRSS']:.3f}, anonymous {large['RssAnon'] / small['RssAnon']:.3f}")
            results.append(verdict(f"{stage} peak RSS 4N / N", large["VmRSS"] / small["VmRSS"], args.target, at_least=False))
    return finish(results)


if __name__ == "__main__":
    raise SystemExit(main())
