"""Training loop: the library's Accelerate retraining loop versus a bare PyTorch loop.

Both train the same timm model (same seed) on the same data: toy training images plus
synthetic edits (``with_directions``), saved to disk and read back as PNG bytes, through
the same DataLoader construction (``dbb_hf.training.make_loader``: decode and
transform in ``--num-workers`` worker processes), for the same epochs, each epoch
followed by a pass over the validation split.

- ``library``: ``dbb_hf.training.train_classifier`` with ``synthetic=`` and ``gammas``
  (the upweighted loss of Eq. 6-8), in a fresh output folder: Accelerate's
  ``prepare``/``accumulate``/``backward``, per-epoch validation metrics, the best
  model saved, and a resumable checkpoint every epoch;
- ``bare``: ``model(x)``, cross-entropy, ``backward``, optimizer and scheduler steps,
  then predictions on the validation split; nothing saved.

Throughput = training samples x epochs / wall time; target: library / bare >= 0.95.
Data loading must never be the bottleneck: the loader alone (iterating the training
DataLoader, no model) must deliver more samples per second than the model step alone
(forward, backward and optimizer step on a batch already in memory).

    python benchmarks/training_loop.py
    python benchmarks/training_loop.py --model resnet18 --num-train 2048 --epochs 3
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import load_from_disk

from _common import base_parser, describe_times, finish, interleaved, median, paired_ratios, print_machine, verdict
from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.modeling import ClassifierConfig, create_classifier, eval_transform, train_transform
from dbb_hf.training import TrainingConfig, make_loader, train_classifier, with_directions


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--model", default="resnet10t", help="timm model name (random weights)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=1024, help="real training images")
    parser.add_argument("--num-synthetic", type=int, default=256, help="synthetic edits added to them")
    parser.add_argument("--num-validation", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--augmentation", choices=["timm", "none"], default="timm")
    parser.add_argument("--target", type=float, default=0.95, help="library / bare samples per second needed")
    return parser.parse_args()


def toy_data(root: Path, args):
    """Training, synthetic and validation splits, saved and loaded back from disk."""
    real = load_toy(
        ToyConfig(num_train=args.num_train, num_validation=args.num_validation, num_test=4, image_size=args.image_size)
    )
    # Another draw of the toy world stands in for the edits: same features, other images.
    synthetic = load_toy(
        ToyConfig(num_train=args.num_synthetic, num_validation=4, num_test=4, image_size=args.image_size, seed=args.seed + 1)
    )["train"]
    real.save_to_disk(root / "real")
    synthetic.save_to_disk(root / "synthetic")
    real = load_from_disk(root / "real")
    return real["train"], load_from_disk(root / "synthetic"), real["validation"]


def classifier_config(args) -> ClassifierConfig:
    return ClassifierConfig(model_name=args.model, pretrained=False, image_size=args.image_size, crop_pct=1.0)


def training_config(args, output_dir: str) -> TrainingConfig:
    return TrainingConfig(
        output_dir=output_dir,
        num_epochs=args.epochs,
        train_batch_size=args.batch_size,
        augmentation=args.augmentation,
        num_workers=args.num_workers,
        seed=args.seed,
        gammas=[3.0, 3.0],
    )


def bare_loop(train, synthetic, validation, args) -> dict:
    """The textbook loop on the same model, loaders, optimizer and schedule; returns its time spent waiting for data."""
    config = training_config(args, output_dir="")
    torch.manual_seed(config.seed)
    model = create_classifier(classifier_config(args), num_classes=train.features["label"].num_classes)
    transform = train_transform(model) if config.augmentation == "timm" else eval_transform(model)
    loader = make_loader(
        with_directions(train, synthetic), transform, config.train_batch_size,
        shuffle=True, num_workers=config.num_workers, seed=config.seed,
    )
    val_loader = make_loader(
        validation, eval_transform(model), config.eval_batch_size, shuffle=False, num_workers=config.num_workers
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(loader) * config.num_epochs)
    waited = 0.0
    for _ in range(config.num_epochs):
        model.train()
        batches = iter(loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - start
            if batch is None:
                break
            loss = F.cross_entropy(model(batch["pixel_values"]), batch["label"])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        model.eval()
        with torch.inference_mode():
            for batch in val_loader:
                model(batch["pixel_values"]).argmax(-1)
    return {"data_wait_seconds": waited}


def loader_alone(train, synthetic, args) -> float:
    """Seconds to iterate one epoch of the training DataLoader, no model."""
    model = create_classifier(classifier_config(args), num_classes=2)
    transform = train_transform(model) if args.augmentation == "timm" else eval_transform(model)
    loader = make_loader(
        with_directions(train, synthetic), transform, args.batch_size, shuffle=True, num_workers=args.num_workers
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def model_step_alone(args, steps: int) -> float:
    """Seconds for ``steps`` forward/backward/optimizer steps on one batch already in memory."""
    torch.manual_seed(args.seed)
    model = create_classifier(classifier_config(args), num_classes=2).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 2, (args.batch_size,))
    start = time.perf_counter()
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    print_machine("training loop: Accelerate (train_classifier) vs bare PyTorch", vars(args))
    samples = (args.num_train + args.num_synthetic) * args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, synthetic, validation = toy_data(root, args)
        bare_info = {}

        def library():
            train_classifier(
                train, validation, classifier_config(args),
                training_config(args, tempfile.mkdtemp(prefix="library-", dir=root)), synthetic=synthetic,
            )

        def bare():
            bare_info.update(bare_loop(train, synthetic, validation, args))

        times = interleaved({"library": library, "bare": bare}, args.repeats)
        print(f"training: {args.num_train} real + {args.num_synthetic} synthetic images x {args.epochs} epochs "
              f"= {samples} samples per run, {args.repeats} repeats")
        describe_times("library (train_classifier)", times["library"], samples, "samples")
        describe_times("bare PyTorch loop", times["bare"], samples, "samples")
        print(f"  bare loop: {bare_info['data_wait_seconds']:.2f} s of its last run waiting for batches "
              f"({100 * bare_info['data_wait_seconds'] / times['bare'][-1]:.1f}%)")
        ratio = median(paired_ratios(times["bare"], times["library"]))
        print(f"  throughput ratio library/bare: ratio of medians {median(times['bare']) / median(times['library']):.3f}, "
              f"median of paired ratios {ratio:.3f}")
        results = [verdict("library/bare training throughput", ratio, args.target)]

        per_epoch = args.num_train + args.num_synthetic
        steps = math.ceil(per_epoch / args.batch_size)
        loader_times = interleaved(
            {"loader": lambda: loader_alone(train, synthetic, args), "step": lambda: model_step_alone(args, steps)},
            args.repeats,
            warmup=0,
        )
        loader_rate = per_epoch / median(loader_times["loader"])
        step_rate = steps * args.batch_size / median(loader_times["step"])
        print(f"data loading: loader alone {loader_rate:.0f} samples/s ({args.num_workers} workers, incl. start-up); "
              f"model step alone {step_rate:.0f} samples/s")
        results.append(verdict("loader / model-step samples per second", loader_rate / step_rate, 1.0))
    return finish(results)


if __name__ == "__main__":
    raise SystemExit(main())
