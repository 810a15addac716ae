"""Helpers shared by test modules (import with `from helpers import ...`)."""


def train_overrides(model, data, output, **kw):
    """A fast training config for the tiny model (CPU, a few steps)."""
    base = dict(model=str(model), data=str(data), output=str(output), trigger="sks", class_noun="circle",
                resolution=16, steps=4, lr=1e-3, seed=0)
    base.update(kw)
    return base
