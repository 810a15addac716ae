"""Direct Consistency Optimization (Lee et al., NeurIPS 2024, arXiv 2402.12004): LoRA trained with a DPO-style loss
that rewards fitting the concept only as far as the fit improves on the frozen model's (a soft pull towards the
base, where CAT adds an explicit term on the trigger-free prompt).

It fits the parts x terms design as one data term: the LoRA part, and a ``dco`` term that replaces the identity term;
its rows are the identity rows plus the frozen model's prediction on them (the same frozen pass CAT uses, here on the
trigger captions).
"""

from cat_adapter.methods.dco.config import DcoOptions
from cat_adapter.methods.registry import MethodSpec, register_method, register_section, register_term

register_section("dco", DcoOptions)
register_term("dco", "cat_adapter.methods.dco.loss:DcoTerm", order=0)
register_method(MethodSpec(
    "dco", parts=("lora",), terms=("dco",), sections=("lora", "dco"),
    description="LoRA with Direct Consistency Optimization's loss (Lee et al. 2024): the fit on the trigger captions "
                "measured against the frozen model's, through -log sigmoid(-beta x the difference)."))
