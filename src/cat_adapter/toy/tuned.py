"""Option values tuned for the shapes world, per method: the world's answer to ``plugins.World.defaults``; the
demo and the benchmarks use them too."""

# The Chosen One: 128 images and clusters of 20 would cost more than the rest of a toy run.
TCO = {"tco_images": 32, "tco_cluster_size": 8, "tco_min_cluster": 3, "tco_max_iterations": 3,
       "tco_embedder": "toy", "tco_sample_steps": 20, "tco_guidance_scale": 4.0}
# DreamBooth's reference lr (5e-6) and TI's (2e-3, 1 vector) learn nothing measurable on the 2.2M-parameter toy
# U-Net in a demo's budget; these won a short sweep on the default concept (benchmarks/toy_baselines.py,
# docs/methods.md). TI's steps are its own: a TI step costs a fifth of a DreamBooth step here.
BASELINES = {"dreambooth": dict(lr=5e-4, num_class_images=16, class_sample_steps=20, class_guidance_scale=4.0),
             "ti": dict(lr=2e-2, num_vectors=4, steps=1000)}
