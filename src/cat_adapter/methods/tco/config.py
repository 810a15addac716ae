"""Options of The Chosen One's outer loop (generation, embedding, clustering, stopping).

Defaults: the paper's and its public implementation's values on real models (N 128, cluster size 20, more than
10 members, 5 iterations, convergence 0.8 as in the paper; the implementation uses 0.6); a model's world may tune
them (``plugins.World.defaults``: smaller values on the shapes world, ``--model toy``, where 128 images and clusters
of 20 would cost more than the rest of a run).
"""

from __future__ import annotations

from dataclasses import dataclass

from cat_adapter.options import check, opt

REAL = {"tco_images": 128, "tco_cluster_size": 20, "tco_min_cluster": 10, "tco_max_iterations": 5,
        "tco_embedder": "facebook/dinov2-large", "tco_sample_steps": 35, "tco_guidance_scale": 7.5}


@dataclass
class TCOOptions:
    tco_prompt: str | None = opt(None, "The prompt that describes the character, e.g. 'a watercolor fox character'. "
                                 "It must name --class-noun (the trigger goes before it: 'a watercolor sks fox "
                                 "character') or hold {trigger}; default 'a {class_noun}'.")
    tco_images: int | None = opt(None, "Images N generated per iteration, one seed each (default 128; toy 32).")
    tco_cluster_size: int | None = opt(None, "k-means++ makes N // this many clusters (default 20; toy 8).")
    tco_min_cluster: int | None = opt(None, "Clusters with this many members or fewer are dropped (default 10; toy 3).")
    tco_max_iterations: int | None = opt(None, "Most iterations (default 5; toy 3).")
    tco_convergence: float = opt(0.8, "Stop when the mean pairwise embedding distance of an iteration's images falls "
                                 "to this fraction of the first iteration's (paper 0.8; public implementation 0.6).")
    tco_steps: int | None = opt(None, "Training steps per iteration (default: --steps).")
    tco_embedder: str | None = opt(None, path="in", help="Image embedder: a transformers vision model (hub id or folder): DINOv2, as "
                                   "the paper (default facebook/dinov2-large), or a CLIP; toy: the shipped toy CLIP.")
    tco_sample_steps: int | None = opt(None, "Sampling steps of the generated images (default 35; toy 20).")
    tco_guidance_scale: float | None = opt(None, "Guidance scale of the generated images (default 7.5; toy 4).")

    def validate(self, cfg) -> None:
        from cat_adapter.plugins import world_for

        world = world_for(cfg.model.model)
        defaults = {**REAL, **({k: v for k, v in world.defaults("tco").items() if k in REAL} if world else {})}
        for name, value in defaults.items():  # resolved here, so the saved config holds the values used
            if getattr(self, name) is None:
                setattr(self, name, value)
        d = cfg.data
        if self.tco_prompt is None:
            check(bool(d.class_noun), "--tco-prompt", "is required (or --class-noun, for the default 'a {class_noun}')")
            self.tco_prompt = "a {class_noun}"
        check(bool(self.tco_prompt.strip()), "--tco-prompt", "must not be empty")
        for name in ("tco_images", "tco_cluster_size", "tco_max_iterations", "tco_sample_steps"):
            check(getattr(self, name) >= 1, "--" + name.replace("_", "-"), f"must be >= 1 (got {getattr(self, name)})")
        check(self.tco_min_cluster >= 0, "--tco-min-cluster", f"must be >= 0 (got {self.tco_min_cluster})")
        check(self.tco_steps is None or self.tco_steps >= 1, "--tco-steps", f"must be >= 1 (got {self.tco_steps})")
        check(self.tco_images >= self.tco_cluster_size, "--tco-images",
              f"{self.tco_images} is below --tco-cluster-size {self.tco_cluster_size}: k-means++ makes "
              f"N // cluster size clusters, so give at least {self.tco_cluster_size} images")
        check(0 < self.tco_convergence <= 1, "--tco-convergence", f"must be in (0, 1] (got {self.tco_convergence})")
        from cat_adapter.methods.tco.prompts import tco_prompts

        tco_prompts(self.tco_prompt, d.trigger, d.class_noun)  # raises when the trigger has no place in the prompt
