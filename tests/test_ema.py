"""--ema-decay: the averaged weights as OUT/ema/ (a complete adapter), kept in checkpoints."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import KILLER, train_cli_error, train_overrides
from safetensors.torch import load_file

from cat_adapter.adapters import load_adapter
from cat_adapter.config import build_config
from cat_adapter.runners import train

LORA = "pytorch_lora_weights.safetensors"


def test_ema_follows_the_formula_and_is_a_complete_adapter(tiny_model, concept_dir, tmp_path):
    decay = 0.2
    out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "run", steps=3, save_every=1,
                                                       ema_decay=decay, cpu=True)), progress=False)
    raw = [load_file(str(out / f"step-{k}" / LORA)) for k in (1, 2)] + [load_file(str(out / LORA))]
    ema = load_file(str(out / "ema" / LORA))
    assert ema.keys() == raw[-1].keys()
    for key in ema:
        # diffusers' EMAModel: the first update copies, the n-th uses min(decay, n / (9 + n))
        want = raw[0][key].clone()
        for n, weights in ((2, raw[1]), (3, raw[2])):
            d = min(decay, n / (9 + n))
            want = d * want + (1 - d) * weights[key]
        assert torch.allclose(ema[key], want, atol=1e-6), key
    assert any(not torch.equal(ema[k], raw[-1][k]) for k in ema)
    found = load_adapter(out / "ema")                       # a complete adapter a user can pick
    assert found.kinds == load_adapter(out).kinds
    assert json.loads((out / "done.json").read_text())["ema_adapter"] == "ema/adapter.json"


@pytest.mark.slow
def test_resume_with_ema_equals_uninterrupted_run(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", steps=6, checkpoint_every=2, cpu=True,
                         ema_decay=0.5)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "5"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    for name in (LORA, f"ema/{LORA}"):
        wa, wb = load_file(str(resumed / name)), load_file(str(straight / name))
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6, name


@pytest.mark.parametrize("extra, needle", [(["--ema-decay", "1"], "--ema-decay"), (["--ema-decay", "0"], "--ema-decay"),
                                           (["--method", "tco", "--ema-decay", "0.9"], "--ema-decay")])
def test_bad_ema_values(tiny_model, concept_dir, tmp_path, capsys, extra, needle):
    data = None if "tco" in extra else concept_dir
    assert needle in train_cli_error(capsys, tiny_model, data, tmp_path / "out", *extra)
