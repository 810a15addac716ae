from cat_adapter.methods.cat.method import CATMethod

__all__ = ["CATMethod"]
