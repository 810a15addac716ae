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
