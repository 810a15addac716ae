"""Constrained CAT (--cat-alpha auto), --cat-every and --cat-fraction: the dual update, the weights each step
runs with, resume equality, and bad options."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import KILLER, train_cli_error, train_overrides
from safetensors.torch import load_file
from test_methods import grads, make, make_batch

from cat_adapter.config import build_config
from cat_adapter.data.cache import StreamSampler, build_cache
from cat_adapter.data.concept import load_concept
from cat_adapter.methods.cat.constrained import DualAlpha
from cat_adapter.models import ModelSpec, load_model
from cat_adapter.runners import train

LORA = "pytorch_lora_weights.safetensors"


def _log(out):
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]


def _weights(out):
    return load_file(str(out / LORA))


def test_dual_update_follows_the_violation():
    d = DualAlpha(target=1e-3, init=1.0, lr=0.1)
    d.update(3e-3)                       # twice the target above it: + lr * 2
    assert d.alpha == pytest.approx(1.2)
    d.update(5e-4)                       # half the target: - lr * 0.5
    assert d.alpha == pytest.approx(1.15)
    for _ in range(50):
        d.update(0.0)
    assert d.alpha == 0.0                # projected: never below 0


@pytest.mark.parametrize("target, direction", [(1e-9, "up"), (10.0, "down")])
def test_alpha_moves_up_above_the_target_and_down_below_it(tiny_model, concept_dir, tmp_path, target, direction):
    out = train(build_config(overrides=train_overrides(
        tiny_model, concept_dir, tmp_path / "r", method="cat", cat_alpha="auto", preservation_target=target,
        cat_alpha_lr=0.01, steps=6, cpu=True)), progress=False)
    log = _log(out)
    alphas = [r["cat_alpha"] for r in log]
    assert alphas[0] == 1.0                             # --cat-alpha-init
    for r, nxt in zip(log, log[1:]):                    # each step's alpha follows the previous step's term
        expected = max(0.0, r["cat_alpha"] + 0.01 * (r["loss_preservation"] - target) / target)
        assert nxt["cat_alpha"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if direction == "up":
        assert alphas[-1] > alphas[2]
    else:
        assert alphas[-1] < alphas[0] and all(b <= a for a, b in zip(alphas, alphas[1:]))
    assert (out / "alpha.png").stat().st_size > 5000
    assert yaml_alpha(out) == "auto"


def yaml_alpha(out):
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())["preservation"]["cat_alpha"]


@pytest.mark.slow
def test_constrained_resume_after_sigkill_equals_the_straight_run(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", method="cat", cat_alpha="auto",
                         preservation_target=1e-6, cat_alpha_lr=0.02, steps=6, checkpoint_every=2, cpu=True)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "5"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = json.loads((tmp_path / "killed" / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["terms"]["preservation"]["alpha"] != 1.0          # the dual variable is in the checkpoint
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    wa, wb = _weights(resumed), _weights(straight)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    assert [r["cat_alpha"] for r in _log(resumed)] == pytest.approx([r["cat_alpha"] for r in _log(straight)], rel=1e-6)


@pytest.mark.slow
def test_every_1_and_fraction_1_are_full_cat_bit_for_bit(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "full", method="cat", steps=3, cpu=True, batch_size=2)
    full = train(build_config(overrides=kw), progress=False)
    same = train(build_config(overrides={**kw, "output": str(tmp_path / "same"), "cat_every": 1, "cat_fraction": 1.0}),
                 progress=False)
    half = train(build_config(overrides={**kw, "output": str(tmp_path / "half"), "cat_fraction": 0.5}), progress=False)
    every = train(build_config(overrides={**kw, "output": str(tmp_path / "every"), "cat_every": 2}), progress=False)
    wf, ws, wh, we = (_weights(p) for p in (full, same, half, every))
    assert all(torch.equal(wf[k], ws[k]) for k in wf)
    assert any(not torch.equal(wf[k], wh[k]) for k in wf) and any(not torch.equal(wf[k], we[k]) for k in wf)
    assert [r["loss_preservation"] is None for r in _log(every)] == [False, True, False]   # steps 1 and 3 run it


def test_cat_every_weights_the_running_steps_by_k(tiny_model):
    """At a running step the preservation term weighs K x alpha; at a skipped step it is not computed."""
    batch = make_batch(pool=0)
    m2, _ = make(tiny_model, cat_alpha=0.5, cat_every=2, cat_mode="fast")
    m1, _ = make(tiny_model, cat_alpha=1.0, cat_mode="fast")
    m2.step = 0
    out2, g2 = grads(m2, batch)
    out1, g1 = grads(m1, batch)           # weight 2 x 0.5 = 1 x 1.0: the same gradients
    assert out2.total.item() == pytest.approx(out1.total.item(), rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(g1, g2))
    m2.step = 1
    out, _ = grads(m2, batch)
    assert out.terms["loss_preservation"] is None and out.total.item() == pytest.approx(out.terms["loss_identity"])


def test_cat_fraction_rows_come_from_the_stream_and_match_across_ranks(tiny_model, concept_dir):
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(concept_dir, trigger="sks", class_noun="circle")
    cache = build_cache(model, items, resolution=16, random_flip=False, device="cpu")

    def sampler(seed, **kw):
        return StreamSampler(cache, batch_size=4, pool_size=0, objective=model.objective, seed=seed, **kw)

    rows = [sampler(0, preserve_fraction=0.3).next().preserve_rows for _ in range(2)]
    assert rows[0].tolist() == rows[1].tolist() and len(rows[0]) == 2            # ceil(0.3 x 4), seeded
    assert sampler(0).next().preserve_rows is None                              # F = 1: nothing drawn
    ranks = [StreamSampler(cache, batch_size=3, pool_size=0, objective=model.objective, seed=0, num_processes=2,
                           process_index=r, preserve_fraction=0.1) for r in range(2)]
    assert [len(r.next().preserve_rows) for r in ranks] == [1, 1]                # at least one row, equal on every rank
    # the term runs on exactly those rows
    m, _ = make(tiny_model)
    from cat_adapter.methods.terms import StepInputs

    b = make_batch(b=4, pool=2)
    b.preserve_rows = torch.tensor([1, 3])
    term = next(t for t in m.terms if t.name == "preservation")
    r = term.rows(StepInputs(m, b))
    assert len(r) == 2 * 3                                                       # 2 rows x (y + 2 pool prompts)
    s = StepInputs(m, b)
    assert torch.equal(r.z_t[:2], s.z_t[[1, 3]]) and torch.equal(r.cond.hidden[:2], b.prompts["plain"].hidden[[1, 3]])


@pytest.mark.parametrize("extra, needle", [
    (["--cat-alpha", "auto"], "--preservation-target"),
    (["--cat-alpha", "auto", "--preservation-target", "0"], "--preservation-target"),
    (["--cat-alpha", "auto", "--preservation-target", "-1e-3"], "--preservation-target"),
    (["--preservation-target", "1e-3"], "auto only"),
    (["--cat-alpha", "often"], "--cat-alpha"),
    (["--cat-every", "0"], "--cat-every"),
    (["--cat-fraction", "0"], "--cat-fraction"),
    (["--cat-fraction", "1.5"], "--cat-fraction"),
    (["--method", "lora", "--cat-every", "2"], "preservation term only"),
    (["--cat-alpha-lr", "0.1"], "auto only"),
])
def test_bad_constrained_options(tiny_model, concept_dir, tmp_path, capsys, extra, needle):
    line = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", "--resolution", "16", *extra)
    assert needle in line
