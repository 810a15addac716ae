"""--caption-dropout: dropped captions become the empty prompt, drawn from the seeded stream; resume still exact."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import KILLER, train_cli_error, train_overrides
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.data.cache import StreamSampler, build_cache
from cat_adapter.data.concept import load_concept
from cat_adapter.models import ModelSpec, load_model
from cat_adapter.runners import train


@pytest.fixture
def parts(tiny_model, concept_dir):
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(concept_dir, trigger="sks", class_noun="circle")
    return model, items


def _sampler(model, items, p, seed=0):
    cache = build_cache(model, items, resolution=16, random_flip=False, device=torch.device("cpu"),
                        caption_dropout=p > 0)
    return StreamSampler(cache, batch_size=2, pool_size=0, objective=model.objective, seed=seed, caption_dropout=p)


def test_dropped_rows_get_the_empty_prompt_and_keep_their_y(parts):
    model, items = parts
    empty = model.text.encode([""], device=torch.device("cpu")).hidden[0]
    captions = model.text.encode([it.caption for it in items], device=torch.device("cpu")).hidden
    plains = model.text.encode([it.plain for it in items], device=torch.device("cpu")).hidden
    sampler = _sampler(model, items, 0.5)
    dropped = kept = 0
    for _ in range(40):
        b = sampler.next()
        for row in range(2):
            trig, plain = b.prompts["trigger"].hidden[row], b.prompts["plain"].hidden[row]
            i = next(k for k in range(len(items)) if torch.equal(plain, plains[k]))   # the row's image
            if torch.equal(trig, empty):
                dropped += 1
            else:
                assert torch.equal(trig, captions[i])
                kept += 1
    assert 25 <= dropped <= 55 and dropped + kept == 80   # about half of 80 rows


def test_drop_pattern_comes_from_the_seeded_stream(parts):
    model, items = parts

    def pattern(sampler, n=20):
        return [sampler.next().prompts["trigger"].hidden.sum().item() for _ in range(n)]

    assert pattern(_sampler(model, items, 0.3)) == pattern(_sampler(model, items, 0.3))
    assert pattern(_sampler(model, items, 0.3)) != pattern(_sampler(model, items, 0.3, seed=1))


@pytest.mark.slow
def test_resume_with_caption_dropout_equals_uninterrupted_run(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", steps=6, checkpoint_every=2, cpu=True,
                         caption_dropout=0.5, batch_size=2)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "5"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    nodrop = train(build_config(overrides={**kw, "output": str(tmp_path / "nodrop"), "caption_dropout": 0.0}),
                   progress=False)
    wa, wb = load_file(str(resumed / "pytorch_lora_weights.safetensors")), load_file(str(straight / "pytorch_lora_weights.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    wc = load_file(str(nodrop / "pytorch_lora_weights.safetensors"))
    assert max((wb[k] - wc[k]).abs().max().item() for k in wb) > 1e-6   # the dropout changed training


@pytest.mark.parametrize("extra, needle", [(["--caption-dropout", "1"], "--caption-dropout"),
                                           (["--caption-dropout", "-0.1"], "--caption-dropout"),
                                           (["--caption-dropout", "0.1", "--preserve-prompt", "empty"], "empty")])
def test_bad_caption_dropout(tiny_model, concept_dir, tmp_path, capsys, extra, needle):
    assert needle in train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", *extra)
