"""DCO's loss (Lee et al. 2024): log 2 and beta / 2 times the squared error's gradient where the adapter is the
identity, lower when the adapted fit beats the frozen one, and the method's frozen pass is the base model."""

from __future__ import annotations

import math

import torch

from cat_adapter.methods.dco.loss import dco_loss, per_row_error


def test_the_loss_at_the_start_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    target, frozen = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    pred = frozen.clone().requires_grad_(True)
    loss = dco_loss(pred, target, frozen, beta=1000.0)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    loss.backward()
    plain = frozen.clone().requires_grad_(True)
    per_row_error(plain, target).mean().backward()
    torch.testing.assert_close(pred.grad, 500.0 * plain.grad)


def test_a_better_fit_than_the_frozen_model_lowers_the_loss_and_saturates():
    target = torch.zeros(2, 1, 2, 2)
    frozen = torch.ones(2, 1, 2, 2)
    closer, farther = 0.5 * frozen, 2 * frozen
    assert dco_loss(closer, target, frozen, beta=1.0) < math.log(2) < dco_loss(farther, target, frozen, beta=1.0)
    assert dco_loss(closer, target, frozen, beta=1000.0) < 1e-6   # saturated: no more pull to fit
