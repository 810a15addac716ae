"""Training methods: one folder each (config, parts, pure loss terms), registered in its __init__.

Adding a method means a folder here, one import line below and one row in the tests' method table.
"""

from cat_adapter.methods import lora, cat, dreambooth, ti, tco, lora_ti  # noqa: F401,I001  (registration, in --method order)
from cat_adapter.methods.registry import MethodSpec, get_spec, method_names, register_term

register_term("identity", "cat_adapter.methods.terms:IdentityTerm")

__all__ = ["MethodSpec", "get_spec", "method_names"]
