"""--preserve-pool auto: built from the class nouns and caption template; compare holds its control prompts out."""

import pytest
from helpers import train_cli_error

from cat_adapter.config import build_config
from cat_adapter.data.auto_pool import auto_pool, shared_with, subject_template
from cat_adapter.data.concepts import ConceptSpec
from cat_adapter.errors import CatAdapterError
from cat_adapter.methods.cat.loss import load_pool
from cat_adapter.toy.plugin import ShapesWorld
from cat_adapter.toy.world import SHAPES

WORLD = ShapesWorld()


def spec(noun="circle", template="a {trigger} {class_noun}", trigger="sks"):
    return ConceptSpec("x", "d", trigger, noun, template)


def test_every_class_with_one_attribute_and_never_a_bare_class():
    pool = auto_pool([spec()], world=WORLD)
    assert "a red square" in pool and "a dotted star" in pool and "a heart with a blue outline" in pool
    assert "a green circle" in pool and "a striped circle" in pool                # the concept's own class too
    assert not any(p in (f"a {s}" for s in SHAPES) for p in pool)                 # never a bare class
    assert "an orange triangle" in pool                                            # articles follow the attribute
    assert len(pool) == len(SHAPES) * len(WORLD.attributes())
    real = auto_pool([spec("teapot", "a photo of {trigger} {class_noun}")], world=None)
    assert "a photo of red dog" in real and "a photo of wooden chair" in real and "a photo of glass teapot" in real
    two = auto_pool([spec("circle"), spec("square", trigger="zwx")], world=WORLD)
    assert len(two) == len(pool)                                                   # one template: no repeats
    held = auto_pool([spec()], world=WORLD, exclude=["A  Green circle", "a red square"])
    assert "a green circle" not in held and "a red square" not in held and len(held) == len(pool) - 2


@pytest.mark.parametrize("shape", SHAPES)
def test_the_toy_control_prompts_are_held_out_only_when_excluded(shape):
    from cat_adapter.toy.concept import concept_look, control_prompts, validate_spec

    s = validate_spec({"class_noun": shape, "trigger": "sks"})
    controls = control_prompts(s, concept_look(s))
    assert shared_with(auto_pool([spec(shape)], world=WORLD), controls)          # own class + attribute controls
    assert shared_with(auto_pool([spec(shape)], world=WORLD, exclude=controls), controls) == []
    assert shared_with(["A  Red square"], ["a red square"]) == ["a red square"]   # case and spacing ignored


def test_training_reads_the_auto_pool(tiny_model, concept_dir, tmp_path):
    nouns = tmp_path / "nouns.txt"
    nouns.write_text("dog\nsquare\n")
    held = tmp_path / "held.txt"
    held.write_text("a photo of red circle\n")
    kw = dict(model=str(tiny_model), data=str(concept_dir), output=str(tmp_path / "o"), class_noun="circle",
              method="cat", preserve_pool="auto", preserve_pool_nouns=str(nouns))
    pool = load_pool(build_config(overrides=kw))
    assert len(pool) == 3 * 12 and "a photo of red dog" in pool and "a photo of glass square" in pool
    assert "a photo of red circle" in pool                                         # the own class joins the nouns
    fewer = load_pool(build_config(overrides={**kw, "preserve_pool_exclude": str(held)}))
    assert fewer == [p for p in pool if p != "a photo of red circle"]
    nouns.write_text("dog\nsks\n")
    with pytest.raises(CatAdapterError, match="contains the trigger 'sks'"):
        load_pool(build_config(overrides=kw))


def test_compare_holds_its_control_prompts_out_of_the_auto_pool(tmp_path):
    from cat_adapter.compare.run import hold_out_controls

    controls = tmp_path / "control.txt"
    controls.write_text("a square\na red square\na green circle\n")
    opts = dict(model="toy", data=str(tmp_path), output=str(tmp_path / "o"), trigger="sks", class_noun="circle",
                caption_template="a {trigger} {class_noun}", method="cat", preserve_pool="auto")
    full = load_pool(build_config(overrides=dict(opts)))
    assert {"a red square", "a green circle"} <= set(full)
    hold_out_controls(opts, [controls], tmp_path)
    pool = load_pool(build_config(overrides=dict(opts)))
    assert shared_with(pool, ["a square", "a red square", "a green circle"]) == []
    assert len(pool) == len(full) - 2 and "a blue circle" in pool
    lora = {k: v for k, v in opts.items() if k != "preserve_pool_exclude"} | {"method": "lora", "preserve_pool": None}
    hold_out_controls(lora, [controls], tmp_path / "none")                         # no auto pool: nothing to do
    assert "preserve_pool_exclude" not in lora


def test_nouns_without_auto_is_an_error(tiny_model, concept_dir, tmp_path, capsys):
    line = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", "--resolution", "16",
                           "--preserve-pool-nouns", str(tmp_path / "n.txt"))
    assert "--preserve-pool-nouns" in line


def test_exclude_without_a_pool_is_an_error(tiny_model, concept_dir, tmp_path, capsys):
    line = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", "--resolution", "16", "--method", "cat",
                           "--preserve-pool-exclude", str(tmp_path / "n.txt"))
    assert "--preserve-pool-exclude" in line


def test_the_pool_speaks_like_the_concepts_captions(tmp_path):
    def folder(name, *captions):
        d = tmp_path / name
        d.mkdir()
        for i, c in enumerate(captions):
            (d / f"{i}.txt").write_text(c + "\n")
        return ConceptSpec(name, str(d), "sks", "square", "a photo of {trigger} {class_noun}")

    world = folder("world", "a sks square on a light background", "a SKS Square on a dark background", "sks, a square")
    assert subject_template(world) == "a {trigger} {class_noun}"                    # the most common subject phrase
    pool = auto_pool([ConceptSpec("w", "d", "sks", "square", subject_template(world))], world=WORLD)
    assert "a red star" in pool and "a green square" in pool
    assert subject_template(folder("nameless", "a photo of sks", "sks on a table")) == "a photo of {trigger} {class_noun}"
    assert subject_template(folder("empty")) == "a photo of {trigger} {class_noun}"  # no captions: the template
