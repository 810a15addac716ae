"""CAT's loss and gradients: fast == lean == a reference with a separate frozen copy; alpha 0 == LoRA."""

import copy

import pytest
import torch
from diffusers import DDPMScheduler

from cat_adapter.config import MethodConfig
from cat_adapter.diffusion import noisy_latents, training_target
from cat_adapter.methods import Batch, get_method
from cat_adapter.models import freeze, load_pipeline


def make(tiny_model, method="cat", **kw):
    pipe = load_pipeline(str(tiny_model))
    freeze(pipe.unet, pipe.vae, pipe.text_encoder)
    base = copy.deepcopy(pipe.unet)  # the reference's frozen model: a separate copy, no adapter toggling
    torch.manual_seed(0)
    m = get_method(method)(pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config), MethodConfig(method=method, **kw))
    # Move B away from its zero init: at B = 0 the preservation gradient is exactly 0 and proves nothing.
    g = torch.Generator().manual_seed(1)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            p.data = 0.1 * torch.randn(p.shape, generator=g)
    return m, base


def make_batch(b=2, pool=2, dim=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return Batch(latents=r(b, 4, 8, 8), noise=r(b, 4, 8, 8), timesteps=torch.randint(0, 1000, (b,), generator=g),
                 cond_trigger=r(b, 77, dim), cond_plain=r(b, 77, dim), cond_pool=r(pool, 77, dim) if pool else None)


def grads(m, batch):
    for p in m.trainable_parameters():
        p.grad = None
    out = m.forward_backward(batch, lambda loss: loss.backward())
    return out, [p.grad.clone() if p.grad is not None else None for p in m.trainable_parameters()]


def reference_grads(m, base, batch, alpha):
    """Eq. 3 written out with a deep copy of the base U-Net as the frozen model."""
    for p in m.trainable_parameters():
        p.grad = None
    z_t = noisy_latents(m.scheduler, batch.latents, batch.noise, batch.timesteps)
    target = training_target(m.scheduler, batch.latents, batch.noise, batch.timesteps)
    unet = m.unet
    conds = [batch.cond_plain] + ([c.expand(batch.latents.shape[0], -1, -1) for c in batch.cond_pool[:, None]]
                                  if batch.cond_pool is not None else [])
    ident = torch.nn.functional.mse_loss(unet(z_t, batch.timesteps, batch.cond_trigger).sample, target)
    pres = []
    for c in conds:
        with torch.no_grad():
            frozen = base(z_t, batch.timesteps, c).sample
        pres.append(torch.nn.functional.mse_loss(unet(z_t, batch.timesteps, c).sample, frozen))
    loss = ident + alpha * torch.stack(pres).mean()
    loss.backward()
    return loss, [p.grad.clone() for p in m.trainable_parameters()]


@pytest.mark.parametrize("pool", [0, 2])
def test_fast_lean_and_reference_give_the_same_gradients(tiny_model, pool):
    batch = make_batch(pool=pool)
    lean, base = make(tiny_model, cat_mode="lean", cat_alpha=0.7)
    out_lean, g_lean = grads(lean, batch)
    ref_loss, g_ref = reference_grads(lean, base, batch, 0.7)
    fast, _ = make(tiny_model, cat_mode="fast", cat_alpha=0.7)
    out_fast, g_fast = grads(fast, batch)
    assert abs(out_lean.total.item() - ref_loss.item()) < 1e-5
    assert abs(out_fast.total.item() - ref_loss.item()) < 1e-5
    for a, b, c in zip(g_lean, g_ref, g_fast):
        assert a is not None and c is not None
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["lean", "fast"])
def test_preservation_term_reaches_every_lora_weight(tiny_model, mode):
    batch = make_batch(pool=0)
    cat, _ = make(tiny_model, cat_mode=mode, cat_alpha=1.0)
    out, g_cat = grads(cat, batch)
    lora, _ = make(tiny_model, method="lora")
    _, g_lora = grads(lora, batch)
    assert out.terms["loss_preservation"] > 0
    for a, b in zip(g_cat, g_lora):
        assert b.abs().sum() > 0             # the identity term reaches it
        assert (a - b).abs().sum() > 0       # and so does the preservation term (requires_grad restored)
    assert all(p.requires_grad for p in cat.trainable_parameters())


def test_alpha_zero_lean_equals_lora_bitwise(tiny_model):
    batch = make_batch(pool=2)
    cat, _ = make(tiny_model, cat_mode="lean", cat_alpha=0.0)
    out, g_cat = grads(cat, batch)
    assert out.terms["loss_preservation"] > 0  # the preservation pass really ran
    lora, _ = make(tiny_model, method="lora")
    _, g_lora = grads(lora, batch)
    for a, b in zip(g_cat, g_lora):
        assert torch.equal(a, b)


def test_target_follows_prediction_type(tiny_model_v):
    m, _ = make(tiny_model_v, cat_mode="lean")
    assert m.scheduler.config.prediction_type == "v_prediction"
    batch = make_batch(pool=0)
    target = training_target(m.scheduler, batch.latents, batch.noise, batch.timesteps)
    assert not torch.allclose(target, batch.noise)
    torch.testing.assert_close(target, m.scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps))


def test_frozen_prediction_equals_base_and_adapter_is_back_on(tiny_model):
    m, base = make(tiny_model)
    b = make_batch(pool=0)
    z = noisy_latents(m.scheduler, b.latents, b.noise, b.timesteps)
    frozen = m.frozen_predict(z, b.timesteps, b.cond_plain)
    torch.testing.assert_close(frozen, base(z, b.timesteps, b.cond_plain).sample, rtol=0, atol=1e-6)
    adapted = m.predict(z, b.timesteps, b.cond_plain)
    assert not torch.allclose(adapted, frozen)
