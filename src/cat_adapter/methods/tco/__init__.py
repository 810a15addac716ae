"""The Chosen One (Avrahami et al. 2023, arXiv 2311.10093): a consistent character from a prompt alone.

An orchestrator around the training loop: generate, embed, cluster, pick the most cohesive cluster, train
LoRA + new trigger tokens on it, repeat from the adapted model until the images converge (``run.py``).
"""

from cat_adapter.methods.registry import MethodSpec, register_method, register_section
from cat_adapter.methods.tco.config import TCOOptions

register_section("tco", TCOOptions)
# Per-iteration training of the only public implementation (ZichengDuan/TheChosenOne, config/theChosenOne.yaml):
# LoRA rank 4 on q/k/v/out plus one trigger token, 500 steps at lr 3e-5, batch 1.
register_method(MethodSpec(
    "tco", parts=("lora", "tokens"), terms=("identity",), sections=("tco", "lora", "tokens"),
    defaults={"lr": 3e-5, "steps": 500}, runner="cat_adapter.runners.tco:train_tco", needs_data=False,
    prompt_option="tco_prompt", identity_reference="cat_adapter.runners.tco:first_cluster",
    description="The Chosen One: LoRA + trigger tokens trained on the most cohesive cluster of the model's own "
                "images for --tco-prompt, iterated until they converge (no --data)."))
