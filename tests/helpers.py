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


def unet_out(unet, seed=0):
    """The tiny U-Net's output on fixed random inputs (two timesteps), without gradients."""
    import torch

    g = torch.Generator().manual_seed(seed)
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([10, 500]), c).sample


def train_cli_error(capsys, model, data, out, *extra, class_noun: str | None = "circle") -> str:
    """Run ``cat-adapter train`` with bad options; assert exit status 2, one error line and no output folder.
    Returns the error line. ``data`` (``class_noun``) None leaves --data (--class-noun) out."""
    from cat_adapter.cli.main import main as cli_main

    argv = ["train", "--model", str(model), *(["--data", str(data)] if data else []),
            *(["--class-noun", class_noun] if class_noun else []), "--output", str(out), *extra]
    try:
        code = cli_main(argv)
    except SystemExit as e:  # argparse's own errors (choices)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and (len(err) == 1 or err[0].startswith("usage:")), err
    assert not out.exists()
    return err[-1]
