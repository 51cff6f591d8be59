"""Tiny, seeded models built from configs, for offline tests and demos.

Import the submodule you need, e.g. ``from dbb_hf.tiny.diffusion import
save_tiny_inpaint_pipeline``; importing this package loads no heavy library.
"""
