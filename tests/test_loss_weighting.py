"""--snr-gamma (min-SNR-gamma on the identity and prior terms, not on CAT's preservation term) and --noise-offset."""

import json

import pytest
import torch
from helpers import train_cli_error, train_overrides

from cat_adapter.config import build_config
from cat_adapter.diffusion import DDPMObjective, mse
from cat_adapter.models import ModelSpec, load_model
from cat_adapter.runners import train


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_formula(tiny_model, prediction):
    config = dict(load_model(ModelSpec(str(tiny_model))).objective.scheduler.config, prediction_type=prediction)
    obj = DDPMObjective(config)
    t = torch.tensor([0, 10, 250, 500, 999])
    abar = obj.scheduler.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    gamma = 5.0
    want = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr if prediction == "epsilon" else snr + 1)
    assert torch.allclose(obj.min_snr_weights(t, gamma).double(), want, rtol=1e-5)
    # low-noise rows (SNR above gamma) are down-weighted, high-noise rows keep weight 1 (epsilon)
    w = obj.min_snr_weights(t, gamma)
    assert w[0] < 0.01 and (prediction != "epsilon" or w[-1] == 1.0)


def test_weighted_mse_is_the_row_weighted_mean():
    a, b = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    w = torch.tensor([0.5, 1.0, 2.0])
    per_row = ((a - b) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(mse(a, b, w), (per_row * w).mean())
    assert torch.allclose(mse(a, b, torch.ones(3)), mse(a, b))


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_snr_gamma_weights_identity_but_not_preservation(tiny_model, concept_dir, tmp_path):
    common = train_overrides(tiny_model, concept_dir, None, steps=1, preserve_pool=None, cpu=True, method="cat",
                             batch_size=2)
    plain = _log(train(build_config(overrides={**common, "output": str(tmp_path / "a")}), progress=False))[0]
    weighted = _log(train(build_config(overrides={**common, "output": str(tmp_path / "b"), "snr_gamma": 1.0}),
                          progress=False))[0]
    # the first step sees the same batch and the same initial LoRA (B = 0): only the weighting differs
    assert abs(weighted["loss_identity"] - plain["loss_identity"]) > 1e-6
    assert weighted["loss_preservation"] == plain["loss_preservation"]


def test_noise_offset_shifts_noise_per_image_and_channel(tiny_model, concept_dir, tmp_path):
    from cat_adapter.data.cache import StreamSampler, build_cache
    from cat_adapter.data.concept import load_concept

    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(concept_dir, trigger="sks", class_noun="circle")
    cache = build_cache(model, items, resolution=16, random_flip=False, device=torch.device("cpu"))
    draws = []
    for offset in (0.0, 0.1):
        obj = DDPMObjective(model.objective.scheduler.config, noise_offset=offset)
        draws.append(StreamSampler(cache, batch_size=2, pool_size=0, objective=obj, seed=3).next().instance.noise)
    diff = draws[1] - draws[0]
    assert diff.abs().max() > 1e-3                                  # the offset was added ...
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)  # ... one constant per image and channel


@pytest.mark.parametrize("flag, value", [("--snr-gamma", "0"), ("--snr-gamma", "-5"), ("--noise-offset", "-0.1")])
def test_bad_loss_weighting_values(tiny_model, concept_dir, tmp_path, capsys, flag, value):
    assert flag in train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", flag, value)
