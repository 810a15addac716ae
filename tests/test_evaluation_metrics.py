"""Pure parts of the evaluation: metrics over cosines, which pairs a manifest gives, manifest parsing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cat_adapter.errors import CatAdapterError
from cat_adapter.evaluation.manifest import ManifestRow, read_manifest, write_manifest
from cat_adapter.evaluation.metrics import (PairValue, aggregate, cosine, harmonic_mean, mean_ci95,
                                            pairwise_diversity, summarize, t_quantile_975)
from cat_adapter.evaluation.score import pair_specs


def test_cosine_is_eq10():
    assert cosine([1, 0], [0, 2]) == 0.0
    assert cosine([3, 4], [6, 8]) == pytest.approx(1.0)
    assert cosine([1, 0], [-1, 0]) == pytest.approx(-1.0)


def test_harmonic_mean_eq11_and_clamping():
    h = harmonic_mean([1.0, 2.0, 4.0])
    assert h.value == pytest.approx(3 / (1 + 0.5 + 0.25)) and h.clamped == 0 and h.n == 3
    h = harmonic_mean([0.5, -0.2, 0.0], epsilon=0.01)
    assert h.clamped == 2 and h.value == pytest.approx(3 / (2 + 100 + 100))
    assert harmonic_mean([]).value is None
    with pytest.raises(ValueError):
        harmonic_mean([1.0], epsilon=0)


def test_summarize_reports_mean_and_median_beside_h_and_flips_for_kps():
    s = summarize([0.2, 0.4, 0.9], epsilon=1e-3)
    assert s["score"] == pytest.approx(3 / (5 + 2.5 + 1 / 0.9))
    assert s["mean"] == pytest.approx(0.5) and s["median"] == pytest.approx(0.4)
    k = summarize([0.2, 0.4, 0.9], epsilon=1e-3, one_minus=True)  # Eq. 9: KPS = 1 - H
    assert k["score"] == pytest.approx(1 - s["score"]) and k["mean"] == pytest.approx(0.5)
    assert k["median"] == pytest.approx(0.6)


def test_pairwise_diversity():
    e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d, pairs = pairwise_diversity(e)
    assert len(pairs) == 3
    assert d == pytest.approx(np.mean([1 - 0.0, 1 - 1 / math.sqrt(2), 1 - 1 / math.sqrt(2)]))
    assert pairwise_diversity(e[:1])[0] is None


def test_t_quantiles_and_interval():
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(10) == pytest.approx(2.2281, abs=1e-4)
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=1e-4)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=1e-4)
    assert t_quantile_975(10 ** 6) == pytest.approx(1.95997, abs=1e-4)
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3))
    assert mean_ci95([0.5]) == (0.5, None) and mean_ci95([None, None]) == (None, None)


def _pv(metric, cos, group="train", prompt="p", seed=0):
    return PairValue(metric, group, prompt, seed, "i.png", "r.png", cos)


def test_aggregate_pools_trigger_groups_and_splits_them():
    pairs = [_pv("kps", 0.5), _pv("kps", 1.0, "heldout"), _pv("prompt_score", -0.1), _pv("leakage", 0.8, "control"),
             _pv("class_diversity", 0.6, prompt="a"), _pv("class_diversity", 0.8, prompt="a"),
             _pv("class_diversity", 0.0, prompt="b")]
    m = aggregate(pairs, epsilon=1e-3)
    assert m["kps"] == pytest.approx(1 - 2 / (2 + 1)) and m["groups"]["heldout"]["kps"] == pytest.approx(0.0)
    assert m["groups"]["train"]["kps"] == pytest.approx(0.5)
    assert m["prompt_score"] == pytest.approx(1e-3) and m["clamped"]["prompt_score"] == 1
    assert m["prompt_score_mean"] == pytest.approx(-0.1)
    assert m["leakage"] == pytest.approx(0.2) and m["groups"]["train"]["leakage"] is None
    assert m["class_diversity"] == pytest.approx(((0.4 + 0.2) / 2 + 1.0) / 2)  # mean over prompts
    assert m["identity_score"] is None and m["base_fidelity"] is None
    assert any("clamped" in n for n in m["notes"]) and any(n.startswith("identity_score: null") for n in m["notes"])


def _row(tmp: Path, **kw) -> ManifestRow:
    base = dict(group="train", prompt_trigger="a sks dog", prompt_plain="a dog", seed=0,
                image_trigger=tmp / "t.png", image_plain=tmp / "p.png", base_image=tmp / "b.png")
    base.update(kw)
    return ManifestRow(**base)


def test_pair_specs_count_each_pair_once_and_identity_per_reference(tmp_path):
    rows = [_row(tmp_path, reference=tmp_path / "r1.png"), _row(tmp_path, reference=tmp_path / "r2.png"),
            _row(tmp_path, seed=1, image_trigger=tmp_path / "t1.png", image_plain=tmp_path / "p1.png",
                 base_image=tmp_path / "b1.png"),
            ManifestRow("control", None, "a cat", 0, None, tmp_path / "c.png", tmp_path / "bc.png")]
    specs = pair_specs(rows)
    count = {m: sum(1 for s in specs if s.metric == m) for m in {s.metric for s in specs}}
    assert count == {"prompt_score": 2, "prompt_score_plain": 2, "kps": 2, "base_fidelity": 2, "identity_score": 2,
                     "class_diversity": 1, "base_class_diversity": 1, "leakage": 1, "clip_i": 2, "clip_t": 2}
    dino = pair_specs(rows, dino=True)   # DreamBench's DINO pairs: the identity pairs again, for the DINO embedder
    assert [(s.image, s.reference) for s in dino if s.metric == "dino_identity"] == \
        [(s.image, s.reference) for s in specs if s.metric == "identity_score"]
    assert all(s.embedder == "dino" for s in dino if s.metric == "dino_identity")
    prompt = next(s for s in specs if s.metric == "prompt_score")
    assert prompt.text and prompt.reference == "a dog" and prompt.image == tmp_path / "t.png"
    leak = next(s for s in specs if s.metric == "leakage")
    assert (leak.image, leak.reference) == (tmp_path / "c.png", tmp_path / "bc.png")


def test_manifest_roundtrip_and_errors(tmp_path):
    for n in ("t.png", "p.png", "b.png", "r.png"):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        (tmp_path / "imgs" / n).write_bytes(b"x")
    rows = [_row(tmp_path / "imgs", reference=tmp_path / "imgs" / "r.png", prompt_text="a dog"),
            ManifestRow("control", None, "a cat", 3, None, tmp_path / "imgs" / "p.png", tmp_path / "imgs" / "b.png")]
    back = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert back == rows
    assert "imgs/t.png" in (tmp_path / "m.csv").read_text()  # relative to the manifest's folder

    def bad(lines: list[dict], needle: str) -> None:
        f = tmp_path / "bad.jsonl"
        f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        with pytest.raises(CatAdapterError, match=needle):
            read_manifest(f)

    ok = {"prompt_trigger": "a sks dog", "prompt_plain": "a dog", "seed": 0, "image_trigger": "imgs/t.png",
          "image_plain": "imgs/p.png"}
    bad([{**ok, "colour": 1}], "unknown column")
    bad([{**ok, "group": "test"}], "group 'test'")
    bad([{**ok, "image_trigger": None}], "lacks image_trigger")
    bad([{**ok, "group": "control", "base_image": "imgs/b.png"}], "control row has no prompt_trigger")
    bad([{**ok, "seed": "one"}], "not an integer")
    bad([{**ok, "reference": "imgs/nope.png"}], "reference imgs/nope.png not found")
    bad([], "no rows")
    f = tmp_path / "ok.jsonl"
    f.write_text(json.dumps({**ok, "base_image": "", "reference": None}) + "\n")
    (r,) = read_manifest(f)
    assert r.base_image is None and r.reference is None and r.group == "train" and r.text == "a dog"
