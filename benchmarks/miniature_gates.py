"""Quality gates of a miniature diffusion prior, measured with dbb_hf's own stage code.

``--world toy`` (issue 8, the shipped ``dbb_hf/miniature/prior``): balanced toy test
images whose object (its square box, :func:`dbb_hf.masking.region_mask`) is repainted
into the other class; the judge is an oracle trained on balanced toy data.

``--world face`` (issue 14, ``dbb_hf/miniature/face_prior``): real CelebA faces of the
experiment half of the identity partition (:func:`dbb_hf.miniature.faces.load_partition`;
neither the prior nor the oracle ever saw them), balanced over the four (hair, sex)
groups, whose hair (the ``template`` masking backend) is repainted into the other class:
not blond into "blond hair", blond into "dark hair". The judge is a timm classifier
trained on group-balanced real faces of the prior half (blond vs not blond).

Both worlds, edits by :func:`dbb_hf.inpainting.run_inpainting`:

- gate A: prompt with the class words (``"A photo of a  vertical bar"``, ``"A photo of a
  blond hair"``): the oracle assigns the target class (toy: at least 80 % of the edits;
  face: at least 70 % in each direction);
- gate B: the textual-inversion token learned on the prior by
  :func:`dbb_hf.textual_inversion.learn_tokens` instead of the class words
  (``"A photo of a <dbb-blond> hair"``): toy at least 70 %, face at least 60 % in each
  direction;
- gate C: every pixel outside the mask is the source pixel (exact), 100 %;
- control: a prompt naming no class (``"A photo of a  bar"``, ``"A photo of a  hair"``):
  flips by chance only (toy: about 50 %; face: near the oracle's base rate, the share of
  real faces it calls blond / not blond).

    python benchmarks/miniature_gates.py                                  # toy, the shipped oracle
    python benchmarks/miniature_gates.py --world face                     # the face prior
    python benchmarks/miniature_gates.py --world face --train_oracle      # (re)train the face oracle first
    python benchmarks/miniature_gates.py --world face --prior runs/face_prior/checkpoint-2000   # a checkpoint
    python benchmarks/miniature_gates.py --num_images 200 --gates A C
    python benchmarks/miniature_gates.py --world face --update_card       # figures into the prior's card
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
import torch

from _common import finish, print_machine, verdict
from dbb_hf.miniature import FACE_ORACLE_PATH, FACE_PRIOR_PATH, ORACLE_PATH, PRIOR_PATH
from dbb_hf.modeling import image_probabilities
from dbb_hf.presets import load_preset


def oracle_predictions(oracle, images) -> np.ndarray:
    return image_probabilities(oracle, images).argmax(axis=1)


class ToyGates:
    """The toy world: bars on land or water."""

    name = "toy"
    prior, oracle = PRIOR_PATH, ORACLE_PATH
    resolution = 32
    targets = {"A": 0.80, "B": 0.70, "C": 1.0}
    class_words = ["horizontal bar", "vertical bar"]
    object_word = "bar"  # the control prompt's and the tokens' object word, naming no class
    token_mask_region = "box"
    group_names = ["horizontal_bar/land", "horizontal_bar/water", "vertical_bar/land", "vertical_bar/water"]
    defaults = {"num_images": 400, "seed": 1, "steps": 25, "guidance_scale": 7.5, "mask_dilation": 1, "ti_steps": 300}
    per_direction = False  # gate on the overall flip rate

    def __init__(self, args):
        self.args = args

    def train_oracle(self, output_dir: str, seed: int = 7) -> dict:
        """A small timm classifier (``test_resnet``, 0.37 M parameters) on balanced toy data, with dbb_hf's trainer."""
        from dbb_hf.data.toy import LABEL_NAMES, ToyConfig, load_toy
        from dbb_hf.modeling import ClassifierConfig, load_classifier, save_classifier
        from dbb_hf.training import TrainingConfig, evaluate_split, train_classifier

        data = load_toy(ToyConfig(num_train=4000, num_validation=400, num_test=1200, correlation=0.5, seed=seed))
        with tempfile.TemporaryDirectory() as tmp:
            result = train_classifier(
                data["train"],
                data["validation"],
                ClassifierConfig(model_name="test_resnet", pretrained=False, image_size=32, crop_pct=1.0),
                TrainingConfig(output_dir=tmp, num_epochs=10, optimizer="adam", learning_rate=1e-3,
                               lr_scheduler="constant", augmentation="none", num_workers=0, seed=seed),
            )
            model = load_classifier(result.model_dir)
        test = evaluate_split(model, data["test"])
        figures = {"test_accuracy": test["average_accuracy"], "test_worst_group_accuracy": test["worst_group_accuracy"],
                   "data": f"toy seed={seed}, 4000 balanced training images (correlation 0.5), 10 epochs"}
        save_classifier(model, output_dir, LABEL_NAMES, metadata={"oracle": figures})
        return figures

    def edit_inputs(self):
        """Balanced toy test images, their square-box masks and the other class as target."""
        from PIL import Image

        from dbb_hf.data.toy import ToyConfig, load_toy
        from dbb_hf.mask_arithmetic import dilate, region_mask

        args = self.args
        test = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=args.num_images, seed=args.seed))["test"]

        def prepare(row):
            box = dilate(region_mask(np.asarray(row["mask"]) > 127, "square_box"), args.mask_dilation)
            return {"mask": Image.fromarray(box.astype(np.uint8) * 255, mode="L"), "target_label": 1 - row["label"]}

        return test.map(prepare)

    def token_images(self) -> dict:
        """Balanced toy images of each class for textual inversion (another seed than the edits)."""
        from dbb_hf.data.toy import ToyConfig, load_toy

        images = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=128, seed=self.args.seed + 1000))["test"]
        return {c: images.filter(lambda r: r["label"] == c)["image"] for c in (0, 1)}

    def base_rates(self, oracle) -> dict:
        return {"chance": 0.5}

    def details(self, results: dict) -> list[str]:
        gates, first = results["gates"], results["gates"].get("A") or results["gates"].get("B")
        lines = [
            f"Measured by `{results['command']}` on {first['edits']} balanced toy test images (seed "
            f"{results['seed']}, each object's square box grown by {results['mask_dilation']} px, repainted into the "
            f"other class with `dbb_hf.inpainting.run_inpainting`, {results['steps']} DPM-Solver++ steps, guidance "
            f"{results['guidance_scale']}). Judge: the oracle shipped in `dbb_hf/miniature/oracle` (timm `test_resnet`, "
            f"trained on balanced toy data; {results['oracle_accuracy_on_sources']:.1%} on these unedited sources).",
        ]
        if "control" in gates:
            lines.append(f"Control, a prompt naming no orientation ({gates['control']['prompts'][0]!r}): "
                         f"{gates['control']['flip_rate']:.1%} of the edits land in the other class (chance: about 50 %).")
        return lines + gate_details(self, results, "")


class FaceGates:
    """Real CelebA faces: blond vs not blond hair."""

    name = "face"
    prior, oracle = FACE_PRIOR_PATH, FACE_ORACLE_PATH
    resolution = 64
    targets = {"A": 0.70, "B": 0.60, "C": 1.0}
    class_words = ["dark hair", "blond hair"]  # label 0 not_blond, 1 blond
    object_word = "hair"
    token_mask_region = "template"  # the miniature preset's: the token learns on the hair region
    group_names = ["not_blond/female", "not_blond/male", "blond/female", "blond/male"]
    # The miniature preset's own sampling, mask and token settings (dbb_hf/presets/miniature.yaml), so
    # that the gates judge the edits the preset makes; its guidance 20 was chosen on these gates.
    _preset = load_preset("miniature")
    defaults = {"num_images": 200, "seed": 1, "steps": _preset["inpainting"]["num_inference_steps"],
                "guidance_scale": _preset["inpainting"]["guidance_scale"], "mask_dilation": _preset["masking"]["dilation"],
                "ti_steps": _preset["textual_inversion"]["max_train_steps"]}
    per_direction = True  # each direction must reach the target
    token_images_per_group = 15

    def __init__(self, args):
        self.args = args
        if not args.data_dir:
            raise SystemExit("--world face needs --data_dir (a CelebA folder, e.g. ../shared/data/celeba-mini)")

    def partition(self):
        from dbb_hf.miniature.faces import load_partition

        return load_partition(self.args.data_dir, self.args.partition_seed)

    def _experiment_rows(self):
        """Per group, a seeded order of the experiment half's rows: the first ones learn the
        tokens, the next ``num_images / 4`` are edited (disjoint)."""
        experiment = self.partition()["experiment"]
        groups = np.asarray(experiment["group"])
        rng = np.random.default_rng(self.args.seed)
        tokens, edits = [], []
        for group in range(4):
            members = np.flatnonzero(groups == group)[rng.permutation(int((groups == group).sum()))]
            reserve = min(self.token_images_per_group, len(members) // 3)
            tokens += members[:reserve].tolist()
            edits += members[reserve : reserve + self.args.num_images // 4].tolist()
        return experiment, sorted(tokens), sorted(edits)

    def train_oracle(self, output_dir: str, seed: int = 7) -> dict:
        """timm ``test_resnet`` at 64x64 (the prior's side, squeezed as the prior sees faces), trained with
        dbb_hf's trainer on the prior half: identity-disjoint 80/20 train/validation, every group resampled
        to the size of the largest and mirrored."""
        from dbb_hf.data.celeba import identity_split
        from dbb_hf.miniature.faces import identity_numbers
        from dbb_hf.modeling import ClassifierConfig, load_classifier, save_classifier
        from dbb_hf.training import TrainingConfig, evaluate_split, train_classifier

        prior, experiment = self.partition()["prior"], self.partition()["experiment"]
        split = identity_split(identity_numbers(self.args.data_dir, prior), np.asarray(prior["group"]), (0.8, 0.2), seed)
        train, validation = prior.select(np.flatnonzero(split == 0)), prior.select(np.flatnonzero(split == 1))
        balanced = balance_groups(mirrored(train), seed)
        with tempfile.TemporaryDirectory() as tmp:
            result = train_classifier(
                balanced,
                validation,
                ClassifierConfig(model_name="test_resnet", pretrained=False, image_size=64, crop_pct=1.0,
                                 crop_mode="squash"),
                TrainingConfig(output_dir=tmp, num_epochs=12, optimizer="adam", learning_rate=1e-3,
                               lr_scheduler="cosine", augmentation="none", num_workers=0, seed=seed,
                               selection_metric="worst_group_accuracy"),
            )
            model = load_classifier(result.model_dir)
        held_out = evaluate_split(model, experiment)
        figures = {
            "held_out": "every face of the experiment half (identities the prior and the oracle never saw)",
            "held_out_accuracy": held_out["average_accuracy"],
            "held_out_worst_group_accuracy": held_out["worst_group_accuracy"],
            "held_out_accuracy_per_group": held_out["per_group_accuracy"],
            "held_out_count_per_group": held_out["group_counts"],
            "validation_worst_group_accuracy": result.best_validation["worst_group_accuracy"],
            "data": f"prior half of {self.args.data_dir} (partition seed {self.args.partition_seed}): "
                    f"{len(train)} training faces of {len(set(identity_numbers(self.args.data_dir, train)))} "
                    f"identities, mirrored and resampled to {len(balanced)} ({len(balanced) // 4} per group); "
                    f"{len(validation)} validation faces of other identities; 12 epochs, Adam 1e-3, seed {seed}",
        }
        save_classifier(model, output_dir, ["not_blond", "blond"], metadata={"oracle": figures})
        return figures

    def edit_inputs(self):
        from dbb_hf.masking import MaskingConfig, run_masking

        experiment, _, edits = self._experiment_rows()
        masked = run_masking(experiment.select(edits), MaskingConfig(backend="template", dilation=self.args.mask_dilation))
        return masked.map(lambda row: {"target_label": 1 - row["label"]})

    def token_images(self) -> dict:
        experiment, tokens, _ = self._experiment_rows()
        rows = experiment.select(tokens)
        return {c: rows.filter(lambda r: r["label"] == c)["image"] for c in (0, 1)}

    def base_rates(self, oracle) -> dict:
        """How often the oracle calls a real face of the prior half blond (the control's reference)."""
        prior = self.partition()["prior"]
        blond = float(oracle_predictions(oracle, prior["image"]).mean())
        return {"oracle_blond_rate_on_prior_faces": blond, "true_blond_share_of_prior_faces": float(np.mean(prior["label"]))}

    def details(self, results: dict) -> list[str]:
        gates, first = results["gates"], results["gates"].get("A") or results["gates"].get("B")
        oracle = results.get("oracle_metadata", {})
        counts = first["edits_per_source_group"]
        lines = [
            f"Measured by `{results['command']}` on {first['edits']} real faces of the experiment half of the identity "
            f"partition (identities neither the prior nor the oracle saw; per source group: "
            + ", ".join(f"{self.group_names[int(g)]} {n}" for g, n in counts.items())
            + f"), hair masked by the `template` backend (dilated {results['mask_dilation']} px), repainted into the "
            f"other class with `dbb_hf.inpainting.run_inpainting` at {self.resolution} px, {results['steps']} "
            f"DPM-Solver++ steps, guidance {results['guidance_scale']}, composited at the source's 178x218.",
            f"Judge: the oracle shipped in `dbb_hf/miniature/face_oracle` (timm `test_resnet` at 64x64, trained on "
            f"group-balanced faces of the prior half; {results['oracle_accuracy_on_sources']:.1%} on these unedited "
            f"sources" + (", held-out accuracy per group on the whole experiment half: "
                          + ", ".join(f"{k} {v:.1%} (n={oracle['held_out_count_per_group'][k]})"
                                      for k, v in oracle["held_out_accuracy_per_group"].items())
                          if "held_out_accuracy_per_group" in oracle else "") + ").",
        ]
        if "control" in gates:
            control, base = gates["control"], results["base_rates"]
            lines.append(
                f"Control, a prompt naming no hair colour ({control['prompts'][0]!r}): edits of non-blond faces judged "
                f"blond {control['flip_rate_per_target'].get(1, float('nan')):.1%}, of blond faces judged not blond "
                f"{control['flip_rate_per_target'].get(0, float('nan')):.1%}; the oracle's base rate on real faces of "
                f"the prior half: blond {base['oracle_blond_rate_on_prior_faces']:.1%}, not blond "
                f"{1 - base['oracle_blond_rate_on_prior_faces']:.1%}.")
        source = (f" from {results.get('token_images')} other experiment-half faces (up to "
                  f"{self.token_images_per_group} per group)")
        return lines + gate_details(self, results, source)


WORLDS = {"toy": ToyGates, "face": FaceGates}


def gate_details(world, results: dict, token_source: str) -> list[str]:
    """The card's lines on gates A and B: flips per source group, prompts, how the tokens were learned."""
    gates, lines = results["gates"], []
    for gate in ("A", "B"):
        if gate in gates:
            per_group = ", ".join(f"{world.group_names[g]} {v:.0%}"
                                  for g, v in gates[gate]["flip_rate_per_source_group"].items())
            lines.append(f"Gate {gate} per source group: {per_group}; prompts {gates[gate]['prompts']}.")
    if "B" in gates:
        lines.append(f"Gate B tokens: `learn_tokens` on this prior, {results['ti_steps']} steps per class"
                     f"{token_source}, initialisers {results['token_initializers']}, masks: {world.token_mask_region}, "
                     f"{gates['B']['textual_inversion_seconds']:.0f} s on the CPU.")
    return lines


def mirrored(dataset):
    """``dataset`` and its mirror images (same labels and groups)."""
    from datasets import concatenate_datasets
    from PIL import Image

    from dbb_hf.images import to_rgb

    flipped = dataset.map(lambda row: {"image": to_rgb(row["image"]).transpose(Image.FLIP_LEFT_RIGHT),
                                       "example_id": row["example_id"] + "#mirror"})
    return concatenate_datasets([dataset, flipped.cast(dataset.features)])


def balance_groups(dataset, seed: int):
    """Every group resampled (seeded, with replacement beyond its own size) to the largest group's size."""
    groups = np.asarray(dataset["group"])
    present = [g for g in np.unique(groups)]
    size = max(int((groups == g).sum()) for g in present)
    rng = np.random.default_rng(seed)
    index = []
    for g in present:
        members = np.flatnonzero(groups == g)
        index += np.concatenate([members] * (size // len(members)) + [rng.choice(members, size % len(members),
                                                                                 replace=False)]).tolist()
    return dataset.select(rng.permutation(index))


def run_gate(dataset, pipe, config, class_names, tokens, oracle) -> dict:
    from dbb_hf.inpainting import run_inpainting
    from dbb_hf.mask_arithmetic import binary_mask

    started = time.time()
    edited = run_inpainting(dataset, config, pipe=pipe, class_names=class_names, tokens=tokens)
    seconds = time.time() - started
    ok = np.asarray([s == "ok" for s in edited["generation_status"]])
    edited = edited.select(np.flatnonzero(ok))
    probabilities = image_probabilities(oracle, edited["generated"])
    targets = np.asarray(edited["target_label"])
    flipped = probabilities.argmax(axis=1) == targets
    unchanged = []
    for row in edited:
        outside = ~binary_mask(row["generated_mask"])
        unchanged.append(np.array_equal(np.asarray(row["generated"])[outside], np.asarray(row["image"].convert("RGB"))[outside]))
    groups = np.asarray(edited["group"])
    return {
        "flip_rate": float(flipped.mean()),
        "flip_rate_per_target": {int(t): float(flipped[targets == t].mean()) for t in np.unique(targets)},
        "flip_rate_per_source_group": {int(g): float(flipped[groups == g].mean()) for g in np.unique(groups)},
        "edits_per_source_group": {int(g): int((groups == g).sum()) for g in np.unique(groups)},
        "outside_unchanged_rate": float(np.mean(unchanged)),
        "prompts": sorted(set(edited["prompt"])),
        "seconds": round(seconds, 1),
        "edits": len(edited),
        "skipped": int((~ok).sum()),
        "_edited": edited,
        "_probabilities": probabilities,
    }


def gate_value(world, measured: dict) -> float:
    """The figure a gate is judged on: the overall flip rate, or the worse of the two directions."""
    if world.per_direction:
        return min(measured["flip_rate_per_target"].values())
    return measured["flip_rate"]


def save_grid(edited, path: str, count: int = 16) -> None:
    """Toy: sources over their edits."""
    from PIL import Image

    rows = edited.select(range(min(count, len(edited))))
    top = np.concatenate([np.asarray(r["image"].convert("RGB")) for r in rows], axis=1)
    bottom = np.concatenate([np.asarray(r["generated"].convert("RGB")) for r in rows], axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)


def save_verdict_grid(world, gates: dict, path: str, per_group: int = 2) -> None:
    """Faces: per column a source, its mask, and each gate's edit with the oracle's verdict under it
    (green: the target class, red: not; the oracle's probability of blond)."""
    from PIL import Image, ImageDraw

    from dbb_hf.miniature.faces import masked_view

    measured = {name: gates[name] for name in ("A", "B", "control") if name in gates}
    first = next(iter(measured.values()))["_edited"]
    groups = np.asarray(first["group"])
    columns = [i for g in range(4) for i in np.flatnonzero(groups == g)[:per_group]]
    height, width = np.asarray(first[0]["image"]).shape[:2]
    strip = 22

    def verdict_strip(probability_blond, target):
        hit = (probability_blond >= 0.5) == bool(target)
        image = Image.new("RGB", (width, strip), (40, 150, 60) if hit else (190, 50, 50))
        label = f"{'blond' if probability_blond >= 0.5 else 'not blond'} {probability_blond:.2f}"
        ImageDraw.Draw(image).text((4, 5), label, fill=(255, 255, 255))
        return np.asarray(image)

    def label_strip(text):
        image = Image.new("RGB", (width, strip), (30, 30, 30))
        ImageDraw.Draw(image).text((4, 5), text, fill=(255, 255, 255))
        return np.asarray(image)

    cells = []
    for i in columns:
        source = first[int(i)]
        column = [label_strip(world.group_names[int(source["group"])]), np.asarray(source["image"].convert("RGB")),
                  masked_view(source["image"], source["generated_mask"])]
        for name, gate in measured.items():
            row = gate["_edited"][int(i)]
            column += [label_strip(f"{name}: {row['prompt'][len('A photo of a '):]}"), np.asarray(row["generated"]),
                       verdict_strip(float(gate["_probabilities"][int(i)][1]), int(row["target_label"]))]
        cells.append(np.concatenate(column, axis=0))
    # A .jpg path keeps the grid small enough for the docs (quality 85, about 0.3 MB).
    Image.fromarray(np.concatenate(cells, axis=1)).save(path, quality=85)


def update_card(world, prior: str, results: dict, lines) -> None:
    """Replace the card's text between ``<!-- gates -->`` and ``<!-- /gates -->`` with these figures."""
    path = os.path.join(prior, "README.md")
    card = open(path).read()
    table = ["| gate | what | measured | target |", "|---|---|---:|---:|"]
    for gate, what, value in lines:
        worse = " (the worse of the two directions)" if world.per_direction and gate != "C" else ""
        table.append(f"| {gate} | {what}{worse} | {value:.1%} | >= {world.targets[gate]:.0%} |")
    block = "\n".join(table) + "\n\n" + "\n".join(world.details(results))
    card = re.sub(r"<!-- gates -->.*<!-- /gates -->", lambda _: f"<!-- gates -->\n{block}\n<!-- /gates -->", card, flags=re.S)
    with open(path, "w") as f:
        f.write(card)


def resolve_prior(prior: str, output_dir: str) -> str:
    """A pipeline folder; a training checkpoint (``<run>/checkpoint-N``) is exported first."""
    match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(prior)))
    if match is None:
        return prior
    from dbb_hf.miniature.training import export_checkpoint

    return export_checkpoint(os.path.dirname(os.path.normpath(prior)), int(match.group(1)),
                             os.path.join(output_dir, f"prior-{match.group(0)}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="toy", choices=sorted(WORLDS), help="toy (bars) or face (CelebA hair).")
    parser.add_argument("--prior", default=None,
                        help="Inpainting pipeline folder or a training checkpoint folder (default: the world's shipped prior).")
    parser.add_argument("--oracle", default=None, help="Oracle classifier folder (default: the world's shipped one).")
    parser.add_argument("--train_oracle", action="store_true", help="Train the oracle into --oracle first.")
    parser.add_argument("--data_dir", default=None, help="face: the CelebA folder (e.g. ../shared/data/celeba-mini).")
    parser.add_argument("--partition_seed", type=int, default=0, help="face: seed of the identity partition.")
    parser.add_argument("--gates", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"])
    parser.add_argument("--num_images", type=int, default=None, help="Images edited per gate (toy 400, face 200).")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the test images (not the prior's training seeds).")
    parser.add_argument("--steps", type=int, default=None, help="Denoising steps (default: toy 25; face the miniature preset's, 20).")
    parser.add_argument("--scheduler", default=None,
                        help="A diffusers scheduler class (default: the prior's own, DPM-Solver++).")
    parser.add_argument("--guidance_scale", type=float, default=None,
                        help="Default: the world's (toy 7.5, InpaintingConfig's; face 20, the miniature preset's).")
    parser.add_argument("--mask_dilation", type=int, default=None, help="Pixels the mask is grown by (default 1; face: the preset's).")
    parser.add_argument("--ti_steps", type=int, default=None,
                        help="Textual-inversion steps per token, gate B (default 300; face: the preset's).")
    parser.add_argument("--class_initializer_tokens", nargs="*", default=[],
                        help="Gate B: class=word initialisers of the tokens (default: the object word for every class).")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--update_card", action="store_true",
                        help="Write the measured figures into the prior's README.md card (between its gates markers).")
    parser.add_argument("--grid", default=None, help="face: where the source/mask/edit/verdict grid goes, 2 faces "
                        "per group (default: <output_dir>/edits.png; a .jpg path for a small file).")
    parser.add_argument("--output_dir", default=None, help="Where tokens, grids and results.json go (default: a temp dir).")
    args = parser.parse_args(argv)
    world_class = WORLDS[args.world]
    for key, value in world_class.defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    world = world_class(args)
    args.prior, args.oracle = args.prior or world.prior, args.oracle or world.oracle
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine(f"miniature prior ({args.world}): quality gates", vars(args))

    from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline
    from dbb_hf.modeling import load_classifier
    from dbb_hf.textual_inversion import TextualInversionConfig, learn_tokens, load_tokens

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="miniature_gates_")
    os.makedirs(output_dir, exist_ok=True)
    prior = resolve_prior(args.prior, output_dir)
    results = {"prior": prior, "world": args.world,
               "command": "python benchmarks/miniature_gates.py " + " ".join(sys.argv[1:] if argv is None else argv),
               **{k: getattr(args, k) for k in ("seed", "steps", "scheduler", "guidance_scale", "mask_dilation", "ti_steps", "num_images",
                                                "class_initializer_tokens")}}
    if args.train_oracle:
        results["oracle_training"] = world.train_oracle(args.oracle)
        print("oracle:", json.dumps(results["oracle_training"], indent=1))
    oracle = load_classifier(args.oracle)
    metadata_path = os.path.join(args.oracle, "dbb_hf.json")
    if os.path.exists(metadata_path):
        results["oracle_metadata"] = json.load(open(metadata_path)).get("oracle", {})
    dataset = world.edit_inputs()
    results["oracle_accuracy_on_sources"] = float(
        (oracle_predictions(oracle, dataset["image"]) == np.asarray(dataset["label"])).mean()
    )
    results["base_rates"] = world.base_rates(oracle)
    config = InpaintingConfig(model_id=prior, resolution=world.resolution, num_inference_steps=args.steps,
                              guidance_scale=args.guidance_scale, torch_dtype="float32", batch_size=32,
                              scheduler=args.scheduler)
    pipe = load_inpainting_pipeline(config, device="cpu")
    no_class = [world.object_word] * 2
    measured = {}
    if "A" in args.gates or "C" in args.gates:
        measured["A"] = run_gate(dataset, pipe, config, world.class_words, ["", ""], oracle)
        # Control: a prompt that names no class; flips then happen by chance only.
        measured["control"] = run_gate(dataset, pipe, config, no_class, ["", ""], oracle)
    if "B" in args.gates:
        started = time.time()
        images = world.token_images()
        results["token_images"] = sum(len(v) for v in images.values())
        token_config = TextualInversionConfig(
            model_id=prior, initializer_token=world.object_word, class_initializer_tokens=args.class_initializer_tokens,
            mask_region=world.token_mask_region,
            prompt_templates=["a photo of a {token} {class_name}", "a {token} {class_name}", "{token} {class_name}"],
            max_train_steps=args.ti_steps, train_batch_size=16, gradient_accumulation_steps=1, learning_rate=5e-4,
            resolution=world.resolution, checkpointing_steps=args.ti_steps, seed=args.seed,
        )
        names = ["not_blond", "blond"] if args.world == "face" else None
        if names is None:
            from dbb_hf.data.toy import LABEL_NAMES as names
        learned = learn_tokens(images, names, token_config, os.path.join(output_dir, "tokens"),
                               prompt_name=world.object_word)
        ti_seconds = round(time.time() - started, 1)
        load_tokens(pipe, os.path.join(output_dir, "tokens"))
        measured["B"] = run_gate(dataset, pipe, config, no_class, [learned[c] for c in (0, 1)], oracle)
        measured["B"]["textual_inversion_seconds"] = ti_seconds
        results["token_initializers"] = {name: token_config.initializer_for(name) for name in names}
    if args.world == "face":
        save_verdict_grid(world, measured, args.grid or os.path.join(output_dir, "edits.png"))
    else:
        for name in ("A", "B"):
            if name in measured:
                save_grid(measured[name]["_edited"], os.path.join(output_dir, f"gate_{name.lower()}.png"))
    for gate in measured.values():
        gate.pop("_edited")
        gate.pop("_probabilities")
    results["gates"] = measured
    lines = []
    if "A" in args.gates:
        lines.append(("A", "target class reached, class words in the prompt", gate_value(world, measured["A"])))
    if "B" in args.gates:
        lines.append(("B", "target class reached, learned token instead of the class words", gate_value(world, measured["B"])))
    if "C" in args.gates:
        rates = [m["outside_unchanged_rate"] for g, m in measured.items() if g in ("A", "B")]
        lines.append(("C", "edits with every pixel outside the mask unchanged", min(rates)))
    print(f"oracle accuracy on the unedited sources: {results['oracle_accuracy_on_sources']:.3f}")
    print(f"base rates: {results['base_rates']}")
    for name, gate in measured.items():
        print(f"{name}: flip rate {gate['flip_rate']:.3f}, per target {gate['flip_rate_per_target']}, "
              f"per source group {gate['flip_rate_per_source_group']}, prompts {gate['prompts']}")
    for gate, what, value in lines:
        passed = verdict(f"gate {gate}: {what}" + (" (worse direction)" if world.per_direction and gate != "C" else ""),
                         value, world.targets[gate])
        results[f"gate_{gate}"] = {"value": value, "target": world.targets[gate], "pass": passed}
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    if args.update_card:
        update_card(world, prior, results, lines)
    print(f"details: {os.path.join(output_dir, 'results.json')}")
    return finish([results[f"gate_{g}"]["pass"] for g, _, _ in lines])


if __name__ == "__main__":
    raise SystemExit(main())
