"""CAT's loss and gradients: fast == lean == a reference with a separate frozen copy; alpha 0 == LoRA; with a pool,
the caption's y term at full alpha plus the pool's mean term times --preserve-pool-weight."""

import copy

import pytest
import torch

from cat_adapter.config import build_config
from cat_adapter.data.batch import Batch, Noised
from cat_adapter.methods.base import build_method
from cat_adapter.models import Cond, ModelSpec, freeze, load_model


def make(tiny_model, method="cat", **kw):
    model = load_model(ModelSpec(str(tiny_model)))
    freeze(*model.frozen_components())
    base = copy.deepcopy(model.denoiser)  # the reference's frozen model: a separate copy, no adapter toggling
    torch.manual_seed(0)
    cfg = build_config(overrides=dict(model=str(tiny_model), data="unused", output="unused", class_noun="circle",
                                      method=method, **kw))
    m = build_method(cfg, model)
    # Move B away from its zero init: at B = 0 the preservation gradient is exactly 0 and proves nothing.
    g = torch.Generator().manual_seed(1)
    for name, p in model.denoiser.named_parameters():
        if "lora_B" in name:
            p.data = 0.1 * torch.randn(p.shape, generator=g)
    return m, base


def make_batch(b=2, pool=2, dim=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inst = Noised(r(b, 4, 8, 8), r(b, 4, 8, 8), torch.randint(0, 1000, (b,), generator=g))
    prompts = {"trigger": Cond(r(b, 77, dim)), "plain": Cond(r(b, 77, dim))}
    if pool:
        prompts["pool"] = Cond(r(pool, 77, dim))
    return Batch(inst, prompts)


def grads(m, batch):
    for p in m.parameters():
        p.grad = None
    out = m.forward_backward(batch, lambda loss: loss.backward())
    return out, [p.grad.clone() if p.grad is not None else None for p in m.parameters()]


def reference_grads(m, base, batch, alpha, pool_weight=1.0):
    """Eq. 3 written out with a deep copy of the base U-Net as the frozen model; pool prompts add their mean term
    times ``pool_weight`` to y's."""
    for p in m.parameters():
        p.grad = None
    inst, obj = batch.instance, m.model.objective
    z_t = obj.noisy(inst.latents, inst.noise, inst.timesteps)
    target = obj.target(inst.latents, inst.noise, inst.timesteps)
    unet = m.model.denoiser
    b = inst.latents.shape[0]
    conds = [batch.prompts["plain"].hidden] + ([c.expand(b, -1, -1) for c in batch.prompts["pool"].hidden[:, None]]
                                               if "pool" in batch.prompts else [])
    ident = torch.nn.functional.mse_loss(unet(z_t, inst.timesteps, batch.prompts["trigger"].hidden).sample, target)
    pres = []
    for c in conds:
        with torch.no_grad():
            frozen = base(z_t, inst.timesteps, c).sample
        pres.append(torch.nn.functional.mse_loss(unet(z_t, inst.timesteps, c).sample, frozen))
    loss = ident + alpha * (pres[0] + (pool_weight * torch.stack(pres[1:]).mean() if len(pres) > 1 else 0.0))
    loss.backward()
    return loss, [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("pool,weight", [(0, 1.0), (2, 1.0), (3, 0.25)])
def test_fast_lean_and_reference_give_the_same_gradients(tiny_model, pool, weight):
    batch = make_batch(pool=pool)
    lean, base = make(tiny_model, cat_mode="lean", cat_alpha=0.7, preserve_pool_weight=weight)
    out_lean, g_lean = grads(lean, batch)
    ref_loss, g_ref = reference_grads(lean, base, batch, 0.7, weight)
    fast, _ = make(tiny_model, cat_mode="fast", cat_alpha=0.7, preserve_pool_weight=weight)
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
    assert all(p.requires_grad for p in cat.parameters())


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
    obj = m.model.objective
    assert obj.prediction_type == "v_prediction"
    inst = make_batch(pool=0).instance
    target = obj.target(inst.latents, inst.noise, inst.timesteps)
    assert not torch.allclose(target, inst.noise)
    torch.testing.assert_close(target, obj.scheduler.get_velocity(inst.latents, inst.noise, inst.timesteps))


def test_frozen_prediction_equals_base_and_adapter_is_back_on(tiny_model):
    m, base = make(tiny_model)
    b = make_batch(pool=0)
    inst, obj = b.instance, m.model.objective
    z = obj.noisy(inst.latents, inst.noise, inst.timesteps)
    with m.frozen():
        frozen = m.model.predict(z, inst.timesteps, b.prompts["plain"])
    torch.testing.assert_close(frozen, base(z, inst.timesteps, b.prompts["plain"].hidden).sample, rtol=0, atol=1e-6)
    adapted = m.model.predict(z, inst.timesteps, b.prompts["plain"])
    assert not torch.allclose(adapted, frozen)
    assert all(p.requires_grad for p in m.parameters())  # the toggle left the trainable set as it was


def test_toggling_the_adapter_never_unfreezes_frozen_lora_weights(tiny_model):
    """A LoRA weight frozen on purpose (a composite tuner's frozen half) stays frozen through base() and validation."""
    m, _ = make(tiny_model)
    frozen = m.parameters()[0]
    frozen.requires_grad_(False)
    with m.frozen():
        pass
    with m.base():
        pass
    assert not frozen.requires_grad and all(p.requires_grad for p in m.parameters()[1:])


def test_frozen_pass_runs_without_dropout(tiny_model):
    """The base model's own dropout layers are off in the frozen pass, and back in train mode after it."""
    m, _ = make(tiny_model)
    drop = torch.nn.Dropout(0.5)
    m._dropouts.append(drop)
    drop.train()
    seen = []
    with m.frozen():
        seen.append(drop.training)
    assert seen == [False] and drop.training
