import pytest

from cat_adapter.data.prompts import has_trigger, plain_prompt, remove_trigger, replace_trigger


@pytest.mark.parametrize("caption, removed, replaced", [
    ("a photo of sks teapot", "a photo of teapot", "a photo of teapot"),
    ("a sks teapot on a table", "a teapot on a table", "a teapot on a table"),
    ("a sks-teapot on a table", "a teapot on a table", "a teapot on a table"),
    ("a sks on a table", "a on a table", "a teapot on a table"),
    ("sks's lid is red", "lid is red", "teapot's lid is red"),
    ("sks and sks, together", "and, together", "teapot and teapot, together"),
    ("Sks teapot.", "teapot.", "teapot."),
    ("a photo of sks, on a table", "a photo of, on a table", "a photo of teapot, on a table"),
    ("sks, a photo of a teapot", "a photo of a teapot", "teapot, a photo of a teapot"),
    ("a sks sks teapot", "a teapot", "a teapot"),
    ("a sks-sks teapot", "a teapot", "a teapot"),
    ("a sks-sks on a table", "a on a table", "a teapot on a table"),
])
def test_trigger_removal_and_replacement(caption, removed, replaced):
    assert remove_trigger(caption, "sks") == removed
    assert replace_trigger(caption, "sks", "teapot") == replaced


def test_trigger_that_is_a_substring_of_another_word_is_left_alone():
    assert not has_trigger("he asks for sksx and tasks", "sks")
    assert remove_trigger("he asks sks about tasks", "sks") == "he asks about tasks"
    assert has_trigger("a photo of <sks> teapot", "<sks>")
    assert remove_trigger("a photo of <sks> teapot", "<sks>") == "a photo of teapot"


def test_bracketed_trigger_touching_a_word():
    # The brackets are the boundary: "<sks>teapot" holds the trigger, "a<sks" does too.
    assert remove_trigger("a <sks>teapot", "<sks>") == "a teapot"
    assert replace_trigger("a <sks>teapot", "<sks>", "teapot") == "a teapot"
    assert replace_trigger("a <sks> on a table", "<sks>", "teapot") == "a teapot on a table"
    assert not has_trigger("a <sk> teapot", "<sks>")


def test_plain_prompt_modes():
    assert plain_prompt("a sks teapot", "sks", "remove") == "a teapot"
    assert plain_prompt("a sks teapot", "sks", "empty") == ""
    assert plain_prompt("a sks teapot", "sks", "class", "teapot") == "a teapot"
    assert plain_prompt("a photo of sks", "sks", "class", "teapot") == "a photo of teapot"
    with pytest.raises(ValueError):
        plain_prompt("a sks teapot", "sks", "class", None)


def test_replace_word_maps_the_trigger_but_not_the_token_itself():
    from cat_adapter.data.prompts import replace_word

    assert replace_word("a photo of sks teapot, sks's lid", "sks", "<sks>") == "a photo of <sks> teapot, <sks>'s lid"
    assert replace_word("a photo of <sks> teapot", "sks", "<sks>") == "a photo of <sks> teapot"
    assert replace_word("he asks sksx", "sks", "<sks>") == "he asks sksx"


@pytest.mark.parametrize("trigger, noun, clash", [
    ("circle", "circle", True), ("Circle", "circle", True), ("sks", "sks teapot", True), ("sks", "teapot", False),
    ("asks", "sks", False), ("sks", "asks", False), ("teapot", "red teapot", True), ("sks", None, False),
])
def test_a_trigger_that_is_or_holds_the_class_is_a_clash(trigger, noun, clash):
    from cat_adapter.data.prompts import trigger_class_clash

    assert (trigger_class_clash(trigger, noun) is not None) == clash


def test_trigger_and_class_must_differ_in_one_line_per_option_and_per_concept(tiny_model, concept_dir, tmp_path,
                                                                               capsys):
    from helpers import train_cli_error

    err = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "a", "--trigger", "circle")
    assert "--trigger 'circle' and --class-noun 'circle' must differ" in err and not (tmp_path / "a").exists()
    concepts = tmp_path / "concepts.yaml"
    concepts.write_text(f"concepts:\n  - {{name: c, data: {concept_dir}, trigger: teapot, class_noun: red teapot}}\n")
    from cat_adapter.cli.main import main

    code = main(["train", "--model", str(tiny_model), "--concepts", str(concepts), "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "concept 1 (c): trigger and class_noun must differ" in err[0]
    assert not (tmp_path / "b").exists()
