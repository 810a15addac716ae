"""cat-adapter: Contrastive Adapter Training (Park et al. 2024) for text-to-image diffusion models."""

__version__ = "0.1.0"

from cat_adapter.errors import CatAdapterError  # noqa: E402

__all__ = ["CatAdapterError", "__version__"]
