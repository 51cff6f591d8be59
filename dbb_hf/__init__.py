"""dbb_hf: Diffusion-Based Balancing on the Hugging Face stack."""

__version__ = "0.1.0"

from .augmented import load_augmented  # noqa: E402

__all__ = ["load_augmented", "__version__"]
