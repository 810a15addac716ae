"""docs/cli.md is generated from the option fields (scripts/gen_cli_docs.py) and must not go stale; every
command's options come from typed fields with a help text."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_up_to_date():
    gen = generator()
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == gen.render(), \
        "docs/cli.md is stale: run python scripts/gen_cli_docs.py"


def test_the_generator_fails_on_a_stale_page(tmp_path, monkeypatch):
    gen = generator()
    stale = tmp_path / "cli.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen, "DOC", stale)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0 and "cat-adapter evaluate" in stale.read_text()


@pytest.mark.parametrize("cls", ["cat_adapter.sampling:SampleOptions", "cat_adapter.evaluation.evaluate:EvalOptions",
                                 "cat_adapter.evaluation.score:ScoreOptions", "cat_adapter.evaluation.report:ReportOptions",
                                 "cat_adapter.compare.run:CompareOptions"])
def test_every_command_option_is_a_typed_field_with_help(cls):
    module, name = cls.split(":")
    options = getattr(importlib.import_module(module), name)
    for f in dataclasses.fields(options):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"


def test_path_marks_drive_portability_and_plan_rebasing(tmp_path):
    """preserve_pool_nouns is a path: a relative path in a compare plan is re-based to the plan's folder, and the
    saved config holds it absolute (the review found it in neither list)."""
    from cat_adapter.compare.plan import _resolve_option_path, _train_paths
    from cat_adapter.config import TrainConfig, portable
    from cat_adapter.options import path_fields

    kinds = path_fields(TrainConfig)
    assert kinds["preserve_pool_nouns"] == "in" and kinds["cache_dir"] == "out" and kinds["model"] == "in"
    (tmp_path / "nouns.txt").write_text("dog\n")
    assert _resolve_option_path(tmp_path, "preserve_pool_nouns", "nouns.txt", _train_paths()) == \
        str(tmp_path / "nouns.txt")
    assert _resolve_option_path(tmp_path, "preserve_pool", "auto", _train_paths()) == "auto"   # a word stays
    assert _resolve_option_path(tmp_path, "model", "toy", _train_paths()) == "toy"             # an alias stays
    assert _resolve_option_path(tmp_path, "cache_dir", "cache", _train_paths()) == str(tmp_path / "cache")
    cfg = TrainConfig()
    cfg.preservation.preserve_pool_nouns = "nouns.txt"
    cfg.model.model = "toy"
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        p = portable(cfg)
    finally:
        os.chdir(here)
    assert p.preservation.preserve_pool_nouns == str(tmp_path / "nouns.txt") and p.model.model == "toy"

