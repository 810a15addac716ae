"""Runners: what runs a training run, above ``training/``.

``train(cfg)`` is the entry point of every method: one pass of the training loop (``training.loop.train_loop``),
or the method's own runner where its registry entry names one (The Chosen One, ``runners/tco.py``, which
generates its own images and trains several times). ``compare`` runs many of them.
"""

from __future__ import annotations

from pathlib import Path


def train(cfg, *, progress: bool = True, accelerator=None) -> Path:
    """Train as ``cfg`` says; returns the output folder. Raises CatAdapterError on bad input.

    ``accelerator``: one the caller made and keeps (a harness that trains many times in one process, with one
    precision setting); see ``training.loop.train_loop``.
    """
    from cat_adapter.methods.registry import get_spec, runner
    from cat_adapter.training.loop import train_loop

    run = runner(get_spec(cfg.method.method))
    if run is not None:
        return run(cfg, progress=progress, accelerator=accelerator)
    return train_loop(cfg, progress=progress, accelerator=accelerator)
