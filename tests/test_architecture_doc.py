"""docs/architecture.md lists the package's modules: the listing and the tree agree."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def listed_paths() -> list[str]:
    """The paths of the layout block (the fenced block that starts with ``dbb_hf/``)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"```\n\s*dbb_hf/\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no layout block starting with dbb_hf/"
    base_indent, stack, paths = None, [], []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        base_indent = indent if base_indent is None else base_indent
        level = (indent - base_indent) // 2
        name = line.split()[0]
        del stack[level:]
        paths.append("/".join(["dbb_hf", *stack, name]).rstrip("/"))
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths


def test_every_module_is_listed_and_every_listed_path_exists():
    listed = listed_paths()
    missing = [p for p in listed if not any(REPO.glob(p))]
    assert missing == [], f"listed in docs/architecture.md but not in the tree: {missing}"
    modules = sorted(
        p.relative_to(REPO).as_posix() for p in (REPO / "dbb_hf").rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    )
    unlisted = [m for m in modules if m not in listed]
    assert unlisted == [], f"modules missing from docs/architecture.md's layout: {unlisted}"
