"""Helpers shared by test modules (import with `from helpers import ...`)."""


def train_overrides(model, data, output, **kw):
    """A fast training config for the tiny model (CPU, a few steps)."""
    base = dict(model=str(model), data=str(data), output=str(output), trigger="sks", class_noun="circle",
                resolution=16, steps=4, lr=1e-3, seed=0)
    base.update(kw)
    return base


# A training run in a subprocess that SIGKILLs itself at the N-th forward_backward call (argv: config JSON, N).
KILLER = """
import json, os, signal, sys
from cat_adapter.config import build_config
from cat_adapter.methods.base import Method
from cat_adapter.training.loop import train
calls, original = [0], Method.forward_backward
def forward_backward(self, batch, backward):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a real crash
    return original(self, batch, backward)
Method.forward_backward = forward_backward
train(build_config(overrides=json.loads(sys.argv[1])), progress=False)
"""
