"""Training methods. Each lives in its own folder and registers itself with one decorator."""

from cat_adapter.methods import cat, lora  # noqa: F401  (registration)
from cat_adapter.methods.base import Batch, LossOutput, Method, get_method, method_names

__all__ = ["Batch", "LossOutput", "Method", "get_method", "method_names"]
