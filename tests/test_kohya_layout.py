"""kohya sd-scripts' dataset layout: ``--data img/`` whose ``<repeats>_<trigger> <class>`` subfolders name each
concept's trigger and class and weight its images by the repeats; several subfolders are several concepts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import train_overrides

from cat_adapter.config import build_config
from cat_adapter.errors import CatAdapterError
from cat_adapter.runners import train


def layout(tmp_path, concept_dir, names: dict[str, int]):
    """``img/`` with one subfolder per name, holding ``n`` of the concept images (without their captions)."""
    img = tmp_path / "img"
    for name, n in names.items():
        (img / name).mkdir(parents=True)
        for p in sorted(concept_dir.glob("*.png"))[:n]:
            shutil.copy(p, img / name / p.name)
    return img


def kw(model, data, out, **extra):
    base = train_overrides(model, data, out, steps=2, cpu=True, **extra)
    base.pop("class_noun")   # the folder names the class
    return base


def test_one_subfolder_gives_the_trigger_and_class(tiny_model, concept_dir, tmp_path):
    img = layout(tmp_path, concept_dir, {"10_zwx circle": 3})
    out = train(build_config(overrides=kw(tiny_model, img, tmp_path / "out")), progress=False)
    concepts = json.loads((out / "adapter.json").read_text())["concepts"]
    assert [(c["trigger"], c["class_noun"]) for c in concepts] == [("zwx", "circle")]
    captions = [p["caption"] for p in json.loads((out / "prompts.json").read_text())]
    assert captions == ["a photo of zwx circle"] * 3   # the caption template, filled from the folder name


def test_several_subfolders_are_several_concepts_weighted_by_repeats(tiny_model, concept_dir, tmp_path):
    img = layout(tmp_path, concept_dir, {"10_zwx circle": 2, "1_qlo disc": 2})
    out = train(build_config(overrides=kw(tiny_model, img, tmp_path / "out", method="cat")), progress=False)
    assert [c["trigger"] for c in json.loads((out / "adapter.json").read_text())["concepts"]] == ["zwx", "qlo"]
    assert (out / "concepts.yaml").is_file()   # evaluate finds each concept's folder there

    from cat_adapter.data.cache import StreamSampler

    class Cache:   # the sampler's view of two concepts of two images each, one bucket
        instance = type("I", (), {"buckets": [(16, 16)], "members": {(16, 16): [0, 1, 2, 3]},
                                  "concept_of": [0, 0, 1, 1], "prompts": [0] * 4, "__len__": lambda self: 4})()
        prior, pool = None, None

    sampler = StreamSampler(Cache(), batch_size=1, objective=None, seed=0, repeats=[10, 1])
    drawn = torch.cat([sampler._take((16, 16), 1) for _ in range(2200)])
    share = (drawn < 2).float().mean().item()
    assert abs(share - 10 / 11) < 0.03   # images x repeats: 20 to 2


@pytest.mark.parametrize("extra, needle", [
    (dict(trigger="abc"), "names the trigger 'zwx', but --trigger is 'abc'"),
    (dict(class_noun="square"), "names the class 'circle', but --class-noun is 'square'"),
])
def test_a_mismatch_with_the_given_trigger_or_class_is_refused(tiny_model, concept_dir, tmp_path, extra, needle):
    img = layout(tmp_path, concept_dir, {"10_zwx circle": 2})
    with pytest.raises(CatAdapterError, match=needle):
        train(build_config(overrides={**kw(tiny_model, img, tmp_path / "out"), **extra}), progress=False)
    assert not (tmp_path / "out").exists()


def test_several_concepts_need_a_method_that_trains_them_together(tiny_model, concept_dir, tmp_path):
    img = layout(tmp_path, concept_dir, {"10_zwx circle": 2, "1_qlo disc": 2})
    with pytest.raises(CatAdapterError, match="several concepts in one adapter train with --method lora and cat"):
        train(build_config(overrides=kw(tiny_model, img, tmp_path / "out", method="ti", initializer_token="circle")),
              progress=False)
