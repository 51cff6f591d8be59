"""CelebA folders in the official layout for the tests (no real faces are needed): one
owner for the fixture folders that several test modules write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dbb_hf.masking_template import FACE_ELLIPSE, hair_template

NOISE_ATTRIBUTES = ["Blond_Hair", "Eyeglasses", "Male"]
CARTOON_ATTRIBUTES = ["Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Wavy_Hair"]


def write_noise_celeba(root: Path, num_identities: int = 16, per_identity: int = 3) -> Path:
    """A CelebA folder in the official layout: 44x36 noise images whose top band ("hair") is the
    label's colour; every official split and identity file, for the recipes' loaders."""
    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    for identity in range(num_identities):
        blond, male = (identity % 4) // 2, identity % 2
        for k in range(per_identity):
            index = identity * per_identity + k + 1
            name = f"{index:06d}.jpg"
            pixels = rng.integers(0, 255, (44, 36, 3), dtype=np.uint8)
            pixels[:12] = (230, 200, 80) if blond else (60, 40, 20)  # "hair"
            Image.fromarray(pixels).save(root / "img_align_celeba" / name)
            values = {"Blond_Hair": blond, "Eyeglasses": False, "Male": male}
            rows.append((name, values, [0, 0, 1, 2][index % 4], identity))
    _write_lists(root, NOISE_ATTRIBUTES, rows)
    return root


def write_cartoon_celeba(root: Path, num_identities: int = 16, per_identity: int = 3) -> Path:
    """A CelebA folder in the official layout: 178x218 cartoon faces whose hair colour is the label."""
    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    for person in range(num_identities):
        blond, male = (person % 4) // 2, person % 2
        for k in range(per_identity):
            name = f"{person * per_identity + k + 1:06d}.jpg"
            pixels = np.full((218, 178, 3), rng.integers(60, 200, 3), np.uint8)
            pixels[hair_template(218, 178)] = (230, 200, 90) if blond else (50, 35, 20)
            pixels[hair_template(218, 178, head=FACE_ELLIPSE, face=(0.5, 0.5, 1e-6, 1e-6), neck_width=0)] = (
                (200, 160, 140) if male else (230, 190, 170))
            Image.fromarray(pixels).save(root / "img_align_celeba" / name)
            values = {"Bangs": k == 0, "Black_Hair": not blond and person % 3 == 0, "Blond_Hair": blond,
                      "Brown_Hair": not blond and person % 3 != 0, "Male": male, "Wavy_Hair": k == 1}
            rows.append((name, values, k % 3, 100 + person))
    _write_lists(root, CARTOON_ATTRIBUTES, rows)
    return root


def _write_lists(root: Path, attributes: list[str], rows: list[tuple[str, dict, int, int]]) -> None:
    """The three official list files, from (file name, {attribute: bool}, partition, identity) rows;
    attribute values as CelebA writes them (1 / -1, right-aligned in two columns)."""
    lines = [str(len(rows)), " ".join(attributes)]
    lines += [name + " " + " ".join(f"{1 if values[a] else -1:2d}" for a in attributes) for name, values, _, _ in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, _, p, _ in rows))
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, _, _, i in rows))
