"""--preserve-pool auto: built from the class and caption template, held apart from the control prompts."""

import pytest
from helpers import train_cli_error

from cat_adapter.config import build_config
from cat_adapter.data.auto_pool import auto_pool, shared_with
from cat_adapter.data.concepts import ConceptSpec
from cat_adapter.errors import CatAdapterError
from cat_adapter.methods.cat.loss import load_pool
from cat_adapter.toy.plugin import ShapesWorld
from cat_adapter.toy.world import SHAPES

WORLD = ShapesWorld()


def spec(noun="circle", template="a {trigger} {class_noun}", trigger="sks"):
    return ConceptSpec("x", "d", trigger, noun, template)


def test_other_classes_with_one_attribute_and_nothing_else():
    pool = auto_pool([spec()], world=WORLD)
    assert "a red square" in pool and "a dotted star" in pool and "a heart with a blue outline" in pool
    assert not any("circle" in p for p in pool)                    # never the concept's own class
    assert not any(p in (f"a {s}" for s in SHAPES) for p in pool)   # never a bare class
    assert "an orange triangle" in pool                            # articles follow the attribute
    real = auto_pool([spec("teapot", "a photo of {trigger} {class_noun}")], world=None)
    assert "a photo of red dog" in real and "a photo of wooden chair" in real and not any("teapot" in p for p in real)
    two = auto_pool([spec("circle"), spec("square", trigger="zwx")], world=WORLD)
    assert not any("circle" in p or "square" in p for p in two)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_toy_control_prompts_are_held_out_from_the_auto_pool(shape):
    from cat_adapter.toy.concept import concept_look, validate_spec
    from cat_adapter.toy.concept import control_prompts

    s = validate_spec({"class_noun": shape, "trigger": "sks"})
    controls = control_prompts(s, concept_look(s))
    assert shared_with(auto_pool([spec(shape)], world=WORLD), controls) == []
    assert shared_with(["A  Red square"], ["a red square"]) == ["a red square"]   # case and spacing ignored


def test_training_reads_the_auto_pool(tiny_model, concept_dir, tmp_path):
    nouns = tmp_path / "nouns.txt"
    nouns.write_text("dog\nsquare\n")
    cfg = build_config(overrides=dict(model=str(tiny_model), data=str(concept_dir), output=str(tmp_path / "o"),
                                      class_noun="circle", method="cat", preserve_pool="auto",
                                      preserve_pool_nouns=str(nouns)))
    pool = load_pool(cfg)
    assert len(pool) == 2 * 12 and "a photo of red dog" in pool and "a photo of glass square" in pool
    nouns.write_text("dog\nsks\n")
    with pytest.raises(CatAdapterError, match="contains the trigger 'sks'"):
        load_pool(cfg)


def test_compare_refuses_an_auto_pool_that_meets_the_control_prompts(tmp_path):
    from cat_adapter.compare.run import check_pool_controls

    controls = tmp_path / "control.txt"
    controls.write_text("a square\na red square\n")
    opts = dict(model="toy", data=str(tmp_path), output=str(tmp_path / "o"), trigger="sks", class_noun="circle",
                caption_template="a {trigger} {class_noun}", method="cat", preserve_pool="auto")
    with pytest.raises(CatAdapterError, match="shares 1 prompt"):
        check_pool_controls(opts, [controls], "--plan p.yaml")
    controls.write_text("a square\na green circle\n")
    check_pool_controls(opts, [controls], "--plan p.yaml")


def test_nouns_without_auto_is_an_error(tiny_model, concept_dir, tmp_path, capsys):
    line = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", "--resolution", "16",
                           "--preserve-pool-nouns", str(tmp_path / "n.txt"))
    assert "--preserve-pool-nouns" in line
