"""Quality gates of the miniature diffusion prior (issue 8), measured with dbb_hf's own stage code.

An independent oracle classifier, trained on balanced toy data (all four groups equally,
so it reads the bar, not the background), judges edits of balanced toy test images whose
object (its square box, :func:`dbb_hf.masking.region_mask`) is repainted into the other
class by :func:`dbb_hf.inpainting.run_inpainting` on the shipped prior:

- gate A: prompt with the class word (``"A photo of a  vertical bar"``): the oracle
  assigns the target class to at least 80 % of the edits;
- gate B: prompt with the textual-inversion token learned on the prior by
  :func:`dbb_hf.textual_inversion.learn_tokens` instead of the class word
  (``"A photo of a <dbb-vertical_bar> bar"``: "bar" names no orientation): at least 70 %;
- gate C: every pixel outside the mask is the source pixel (exact).

    python benchmarks/miniature_gates.py                    # all gates, the shipped oracle
    python benchmarks/miniature_gates.py --train_oracle     # (re)train the shipped oracle first
    python benchmarks/miniature_gates.py --num_images 200 --gates A C
    python benchmarks/miniature_gates.py --update_card      # and write the figures into the prior's card
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from _common import finish, print_machine, verdict
from dbb_hf.data.toy import LABEL_NAMES, ToyConfig, load_toy
from dbb_hf.miniature import ORACLE_PATH, PRIOR_PATH

TARGETS = {"A": 0.80, "B": 0.70, "C": 1.0}
CLASS_WORDS = [name.replace("_", " ") for name in LABEL_NAMES]
GROUP_NAMES = ["horizontal_bar/land", "horizontal_bar/water", "vertical_bar/land", "vertical_bar/water"]


def train_oracle(output_dir: str, seed: int = 7) -> dict:
    """A small timm classifier (``test_resnet``, 0.37 M parameters) on balanced toy data, with dbb_hf's trainer."""
    from dbb_hf.modeling import ClassifierConfig, save_classifier, load_classifier
    from dbb_hf.training import TrainingConfig, evaluate_split, train_classifier

    data = load_toy(ToyConfig(num_train=4000, num_validation=400, num_test=1200, correlation=0.5, seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        result = train_classifier(
            data["train"],
            data["validation"],
            ClassifierConfig(model_name="test_resnet", pretrained=False, image_size=32, crop_pct=1.0),
            TrainingConfig(output_dir=tmp, num_epochs=10, optimizer="adam", learning_rate=1e-3, lr_scheduler="constant",
                           augmentation="none", num_workers=0, seed=seed),
        )
        model = load_classifier(result.model_dir)
    test = evaluate_split(model, data["test"])
    figures = {"test_accuracy": test["average_accuracy"], "test_worst_group_accuracy": test["worst_group_accuracy"],
               "data": f"toy seed={seed}, 4000 balanced training images (correlation 0.5), 10 epochs"}
    save_classifier(model, output_dir, LABEL_NAMES, metadata={"oracle": figures})
    return figures


@torch.no_grad()
def oracle_predictions(oracle, images) -> np.ndarray:
    from dbb_hf.modeling import eval_transform

    transform = eval_transform(oracle)
    batch = torch.stack([transform(image.convert("RGB")) for image in images])
    return oracle(batch).argmax(dim=1).numpy()


def edit_inputs(num_images: int, seed: int, dilation: int):
    """Balanced toy test images, their square-box masks and the other class as target."""
    from dbb_hf.masking import region_mask, dilate
    from PIL import Image

    test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=num_images, seed=seed))["test"]

    def prepare(row):
        box = dilate(region_mask(np.asarray(row["mask"]) > 127, "square_box"), dilation)
        return {"mask": Image.fromarray(box.astype(np.uint8) * 255, mode="L"), "target_label": 1 - row["label"]}

    return test.map(prepare)


def learn_gate_tokens(output_dir: str, steps: int, seed: int) -> list[str]:
    """Tokens learned on the prior from balanced toy images of each class, with "bar" as the object word."""
    from dbb_hf.textual_inversion import TextualInversionConfig, learn_tokens

    images = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=128, seed=seed + 1000))["test"]
    per_class = {c: images.filter(lambda r: r["label"] == c)["image"] for c in (0, 1)}
    config = TextualInversionConfig(
        model_id=PRIOR_PATH,
        initializer_token="bar",
        prompt_templates=["a photo of a {token} {class_name}", "a {token} {class_name}", "{token} {class_name}"],
        max_train_steps=steps,
        train_batch_size=16,
        gradient_accumulation_steps=1,
        learning_rate=5e-4,
        resolution=32,
        checkpointing_steps=steps,
        seed=seed,
    )
    tokens = learn_tokens(per_class, LABEL_NAMES, config, output_dir, prompt_name="bar")
    return [tokens[c] for c in (0, 1)]


def run_gate(dataset, pipe, config, class_names, tokens, oracle) -> dict:
    from dbb_hf.inpainting import binary_mask, run_inpainting

    started = time.time()
    edited = run_inpainting(dataset, config, pipe=pipe, class_names=class_names, tokens=tokens)
    seconds = time.time() - started
    ok = [s == "ok" for s in edited["generation_status"]]
    generated = [g for g, good in zip(edited["generated"], ok) if good]
    targets = np.asarray([t for t, good in zip(edited["target_label"], ok) if good])
    flipped = oracle_predictions(oracle, generated) == targets
    unchanged = []
    for row in edited.select(np.flatnonzero(ok)):
        outside = ~binary_mask(row["generated_mask"])
        unchanged.append(np.array_equal(np.asarray(row["generated"])[outside], np.asarray(row["image"].convert("RGB"))[outside]))
    groups = np.asarray([g for g, good in zip(edited["group"], ok) if good])
    return {
        "flip_rate": float(flipped.mean()),
        "flip_rate_per_source_group": {int(g): float(flipped[groups == g].mean()) for g in np.unique(groups)},
        "outside_unchanged_rate": float(np.mean(unchanged)),
        "prompts": sorted(set(edited["prompt"])),
        "seconds": round(seconds, 1),
        "edits": len(generated),
        "_edited": edited,
    }


def save_grid(edited, path: str, count: int = 16) -> None:
    from PIL import Image

    rows = edited.select(range(min(count, len(edited))))
    top = np.concatenate([np.asarray(r["image"].convert("RGB")) for r in rows], axis=1)
    bottom = np.concatenate([np.asarray(r["generated"].convert("RGB")) for r in rows], axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)


def update_card(prior: str, results: dict, lines) -> None:
    """Replace the card's text between ``<!-- gates -->`` and ``<!-- /gates -->`` with these figures."""
    import re

    path = os.path.join(prior, "README.md")
    card = open(path).read()
    gates = results["gates"]
    table = ["| gate | what | measured | target |", "|---|---|---:|---:|"]
    for gate, what, value in lines:
        table.append(f"| {gate} | {what} | {value:.1%} | >= {TARGETS[gate]:.0%} |")
    first = gates.get("A") or gates.get("B")
    details = [
        f"Measured by `{results['command']}` on {first['edits']} balanced toy test images (seed "
        f"{results['seed']}, each object's square box grown by {results['mask_dilation']} px, repainted into the "
        f"other class with `dbb_hf.inpainting.run_inpainting`, {results['steps']} DPM-Solver++ steps, guidance "
        f"{results['guidance_scale']}). Judge: the oracle shipped in `dbb_hf/miniature/oracle` (timm `test_resnet`, "
        f"trained on balanced toy data; {results['oracle_accuracy_on_sources']:.1%} on these unedited sources).",
    ]
    if "control" in gates:
        details.append(f"Control, a prompt naming no orientation ({gates['control']['prompts'][0]!r}): "
                       f"{gates['control']['flip_rate']:.1%} of the edits land in the other class (chance: about 50 %).")
    for gate in ("A", "B"):
        if gate in gates:
            per_group = ", ".join(f"{GROUP_NAMES[g]} {v:.0%}" for g, v in gates[gate]["flip_rate_per_source_group"].items())
            details.append(f"Gate {gate} per source group: {per_group}; prompts {gates[gate]['prompts']}.")
    if "B" in gates:
        details.append(f"Gate B tokens: `learn_tokens` on this prior, {results['ti_steps']} steps per class, "
                       f"initialiser \"bar\", {gates['B']['textual_inversion_seconds']:.0f} s on the CPU.")
    block = "\n".join(table) + "\n\n" + "\n".join(details)
    card = re.sub(r"<!-- gates -->.*<!-- /gates -->", lambda _: f"<!-- gates -->\n{block}\n<!-- /gates -->", card, flags=re.S)
    with open(path, "w") as f:
        f.write(card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default=PRIOR_PATH, help="Inpainting pipeline folder (default: the shipped prior).")
    parser.add_argument("--oracle", default=ORACLE_PATH, help="Oracle classifier folder (default: the shipped one).")
    parser.add_argument("--train_oracle", action="store_true", help="Train the oracle into --oracle first.")
    parser.add_argument("--gates", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"])
    parser.add_argument("--num_images", type=int, default=400, help="Balanced toy test images edited per gate.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the test images (not the prior's training seeds).")
    parser.add_argument("--steps", type=int, default=25, help="Denoising steps.")
    parser.add_argument("--scheduler", default=None,
                        help="A diffusers scheduler class (default: the prior's own, DPM-Solver++).")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="dbb_hf's default (InpaintingConfig).")
    parser.add_argument("--mask_dilation", type=int, default=1, help="Pixels the square box is grown by.")
    parser.add_argument("--ti_steps", type=int, default=300, help="Textual-inversion steps per token (gate B).")
    parser.add_argument("--update_card", action="store_true",
                        help="Write the measured figures into the prior's README.md card (between its gates markers).")
    parser.add_argument("--output_dir", default=None, help="Where tokens, grids and results.json go (default: a temp dir).")
    args = parser.parse_args(argv)
    print_machine("miniature prior: quality gates", vars(args))

    from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline
    from dbb_hf.modeling import load_classifier
    from dbb_hf.textual_inversion import load_tokens

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="miniature_gates_")
    os.makedirs(output_dir, exist_ok=True)
    results = {"prior": args.prior, "command": "python benchmarks/miniature_gates.py " + " ".join(sys.argv[1:] if argv is None else argv),
               **{k: getattr(args, k) for k in ("seed", "steps", "scheduler", "guidance_scale", "mask_dilation", "ti_steps",
                                         "num_images")}}
    if args.train_oracle:
        results["oracle_training"] = train_oracle(args.oracle)
    oracle = load_classifier(args.oracle)
    dataset = edit_inputs(args.num_images, args.seed, args.mask_dilation)
    results["oracle_accuracy_on_sources"] = float(
        (oracle_predictions(oracle, dataset["image"]) == np.asarray(dataset["label"])).mean()
    )
    config = InpaintingConfig(model_id=args.prior, resolution=32, num_inference_steps=args.steps,
                              guidance_scale=args.guidance_scale, torch_dtype="float32", batch_size=32,
                              scheduler=args.scheduler)
    pipe = load_inpainting_pipeline(config, device="cpu")
    measured = {}
    if "A" in args.gates or "C" in args.gates:
        measured["A"] = run_gate(dataset, pipe, config, CLASS_WORDS, ["", ""], oracle)
        save_grid(measured["A"].pop("_edited"), os.path.join(output_dir, "gate_a.png"))
        # Control: a prompt that names no orientation; flips then happen by chance only (~50 %).
        measured["control"] = run_gate(dataset, pipe, config, ["bar", "bar"], ["", ""], oracle)
        measured["control"].pop("_edited")
    if "B" in args.gates:
        started = time.time()
        tokens = learn_gate_tokens(os.path.join(output_dir, "tokens"), args.ti_steps, args.seed)
        ti_seconds = round(time.time() - started, 1)
        load_tokens(pipe, os.path.join(output_dir, "tokens"))
        measured["B"] = run_gate(dataset, pipe, config, ["bar", "bar"], tokens, oracle)
        measured["B"]["textual_inversion_seconds"] = ti_seconds
        save_grid(measured["B"].pop("_edited"), os.path.join(output_dir, "gate_b.png"))
    results["gates"] = measured
    lines = []
    if "A" in args.gates:
        lines.append(("A", "class-flip rate, class word in the prompt", measured["A"]["flip_rate"]))
    if "B" in args.gates:
        lines.append(("B", "class-flip rate, learned token instead of the class word", measured["B"]["flip_rate"]))
    if "C" in args.gates:
        rates = [m["outside_unchanged_rate"] for g, m in measured.items() if g in ("A", "B")]
        lines.append(("C", "edits with every pixel outside the mask unchanged", min(rates)))
    print(f"oracle accuracy on the unedited sources: {results['oracle_accuracy_on_sources']:.3f}")
    if "control" in measured:
        print(f"control: class-flip rate with no orientation in the prompt {measured['control']['prompts']}: "
              f"{measured['control']['flip_rate']:.3f} (chance: about 0.5)")
    for gate, what, value in lines:
        passed = verdict(f"gate {gate}: {what}", value, TARGETS[gate])
        results[f"gate_{gate}"] = {"value": value, "target": TARGETS[gate], "pass": passed}
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    if args.update_card:
        update_card(args.prior, results, lines)
    print(f"details: {os.path.join(output_dir, 'results.json')}")
    return finish([results[f"gate_{g}"]["pass"] for g, _, _ in lines])


if __name__ == "__main__":
    raise SystemExit(main())
