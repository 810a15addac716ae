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
from cat_adapter.runners import train
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


def check_sample_evaluate_compare(model, concept_dir, tmp_path, out):
    """``sample`` (with the trained adapter ``out`` and without: other pixels), ``evaluate`` (identity and drift
    scored) and a one-job ``compare`` plan on ``model``, all at 16 px."""
    import json

    import numpy as np
    import yaml
    from PIL import Image

    from cat_adapter.cli.main import main
    from cat_adapter.testing.tiny_clip import build_tiny_clip

    for adapter in (str(out), "none"):
        assert main(["sample", "--model", str(model), "--adapter", adapter, "--prompt", "a sks circle", "--num-images",
                     "1", "--steps", "2", "--resolution", "16",
                     "--output", str(tmp_path / ("s_" + adapter.replace("/", "_")))]) == 0
    a = np.asarray(Image.open(tmp_path / ("s_" + str(out).replace("/", "_")) / "00-seed0.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "s_none" / "00-seed0.png"), dtype=np.int16)
    assert a.shape == (16, 16, 3) and np.abs(a - b).max() > 0
    clip = build_tiny_clip(tmp_path / "clip", image_size=16, patch_size=8)
    assert main(["evaluate", "--model", str(model), "--adapter", str(out), "--data", str(concept_dir), "--clip",
                 str(clip), "--images-per-prompt", "1", "--sample-steps", "2", "--drift-samples", "1", "--resolution",
                 "16", "--output", str(tmp_path / "eval")]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["identity_score"] is not None and m["drift_plain"] > 0
    plan = {"concepts": [{"name": "circle", "data": str(concept_dir), "trigger": "sks", "class_noun": "circle"}],
            "variants": [{"name": "cat", "method": "cat"}], "seeds": [0],
            "shared": {"model": str(model), "steps": 2, "lr": 1e-3, "resolution": 16},
            "evaluation": {"clip": str(clip), "images_per_prompt": 1, "sample_steps": 2, "drift_samples": 1,
                           "resolution": 16}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["compare", "--plan", str(tmp_path / "plan.yaml"), "--output", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "jobs" / "circle__cat__seed0" / "done.json").is_file()


def check_killed_run_resumes_to_the_straight_run(kw: dict, tmp_path, kill_at: int = 4) -> None:
    """SIGKILL the run ``kw`` at its ``kill_at``-th step, ``--resume`` it, and assert its LoRA equals (1e-6) the
    uninterrupted run's."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    from cat_adapter.config import build_config
    from cat_adapter.runners import train

    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), str(kill_at)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    wa = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    wb = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


def randomize_lora(denoiser, scale: float = 0.2, seed: int = 0) -> None:
    """Every LoRA tensor of ``denoiser`` set to seeded N(0, scale^2) values (a 'trained' adapter with B != 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for name, p in denoiser.named_parameters():
        if "lora_" in name:
            p.data = scale * torch.randn(p.shape, generator=g)
