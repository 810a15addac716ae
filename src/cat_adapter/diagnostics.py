"""Direct measures of knowledge shift in noise-prediction space (no CLIP, no sampling)."""

from __future__ import annotations

import torch

from cat_adapter.data.cache import encode_prompts


@torch.no_grad()
def prediction_drift(pipe, prompts: list[str], *, samples: int = 16, seed: int = 0) -> dict[str, float]:
    """Mean ||eps_adapted(z_t, t, y) - eps_base(z_t, t, y)||^2 per prompt, over fixed random z_t and t.

    This is the quantity CAT's preservation term (Eq. 3) minimises for the trigger-free prompt; for the
    trigger prompt it measures how much the adapter learned. ``pipe`` must hold a loaded LoRA.
    """
    unet = pipe.unet
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    z = torch.randn(samples, unet.config.in_channels, size, size, generator=g).to(unet.device, unet.dtype)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (samples,), generator=g).to(unet.device)
    emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, device=unet.device).to(unet.device, unet.dtype)
    out = {}
    for prompt, e in zip(prompts, emb):
        cond = e.unsqueeze(0).expand(samples, -1, -1)
        adapted = unet(z, t, cond).sample
        unet.disable_adapters()
        base = unet(z, t, cond).sample
        unet.enable_adapters()
        out[prompt] = torch.mean((adapted.float() - base.float()) ** 2).item()
    return out
