"""Training methods: one folder each (config, parts, pure loss terms), registered in its __init__.

Adding a method means a folder here, one import line below and one row in the tests' method table
(docs/architecture.md, "How to add a method").
"""

from cat_adapter.methods.registry import MethodSpec, get_spec, method_names, register_term

# Eq. 1: every method's loss on the trigger captions; the terms other folders add run after it (their order).
register_term("identity", "cat_adapter.methods.terms:IdentityTerm", order=0)

from cat_adapter.methods import lora, cat, dreambooth, ti, tco, lora_ti, dco  # noqa: F401,I001,E402  (registration, in --method order)

__all__ = ["MethodSpec", "get_spec", "method_names"]
