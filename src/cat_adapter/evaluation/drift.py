"""``drift_plain``: how far an adapter moved the noise prediction on trigger-free prompts (no sampling, no CLIP).

The mean squared difference between the adapted and the base model's predictions, over fixed z_t ~
N(0, I) and t ~ U{0..T-1} drawn from ``seed``: the quantity CAT's preservation term (Eq. 3) minimises,
measured on the evaluation's prompts rather than the training captions.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def prediction_drift(model, adapter, prompts: list[str], *, samples: int = 8, seed: int = 0,
                     resolution: int | None = None, lora_scale: float | None = None) -> dict[str, float]:
    """Per prompt: mean over ``samples`` of ||eps_adapted(z_t, t, y) - eps_base(z_t, t, y)||^2 / numel.

    Each side encodes the prompt itself, so a text-encoder LoRA counts; ``lora_scale`` is the images'."""
    g = torch.Generator().manual_seed(seed)
    res = resolution or model.default_resolution
    z = torch.randn(samples, *model.latent_shape(res, res), generator=g)
    t = torch.randint(0, model.objective.num_train_timesteps, (samples,), generator=g)
    device, dtype = model.device, model.denoiser.dtype
    z, t = z.to(device, dtype), t.to(device)
    out = {}
    for prompt in dict.fromkeys(prompts):
        cond = model.text.encode([prompt], device=device).to(device, dtype).repeat(samples)
        adapted = model.predict(z, t, cond, lora_scale=lora_scale).float()
        with adapter.base(model):
            cond = model.text.encode([prompt], device=device).to(device, dtype).repeat(samples)
            base = model.predict(z, t, cond).float()
        out[prompt] = torch.mean((adapted - base) ** 2).item()
    return out
