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
    rows = []
    for identity in range(num_identities):
        blond, male = (identity % 4) // 2, identity % 2
        for k in range(per_identity):
            index = identity * per_identity + k + 1
            rows.append((f"{index:06d}.jpg", blond, male, [0, 0, 1, 2][index % 4], identity))
    (root / "img_align_celeba").mkdir(parents=True)
    for name, blond, male, _, _ in rows:
        pixels = rng.integers(0, 255, (44, 36, 3), dtype=np.uint8)
        pixels[:12] = (230, 200, 80) if blond else (60, 40, 20)  # "hair"
        Image.fromarray(pixels).save(root / "img_align_celeba" / name)
    sign = lambda v: 1 if v else -1  # noqa: E731
    lines = [f"{len(rows)}", " ".join(NOISE_ATTRIBUTES)]
    lines += [f"{n} {sign(b):2d} {sign(False):2d} {sign(m):2d}" for n, b, m, _, _ in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, _, _, p, _ in rows))
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, _, _, _, i in rows))
    return root


def write_cartoon_celeba(root: Path, num_identities: int = 16, per_identity: int = 3) -> Path:
    """A CelebA folder in the official layout: 178x218 cartoon faces whose hair colour is the label."""
    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    lines, partition, identity = [], [], []
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
            lines.append(name + " " + " ".join("1" if values[a] else "-1" for a in CARTOON_ATTRIBUTES))
            partition.append(f"{name} {k % 3}")
            identity.append(f"{name} {100 + person}")
    (root / "list_attr_celeba.txt").write_text("\n".join([str(len(lines)), " ".join(CARTOON_ATTRIBUTES), *lines]) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(identity) + "\n")
    return root
