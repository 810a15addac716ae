"""Shared fixtures: tiny models built from config, saved to a temporary folder and loaded back."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing in the tests may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)


def pytest_configure(config):
    """Library progress bars off for every test, as the CLI turns them off: a test that trains through the library
    and then checks the CLI's one-line error on stderr must not see loading bars, whatever ran before it."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight SD pipeline folder: U-Net (32, 64), latents 4x8x8, images 16x16."""
    from cat_adapter.testing.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_model_v(tmp_path_factory):
    """The same architecture with a v-prediction scheduler (SD 2.x 768 style)."""
    from cat_adapter.testing.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_v") / "model", seed=1, prediction_type="v_prediction")


@pytest.fixture
def concept_dir(tmp_path):
    """Four 16x16 images of an orange circle, captions 'a photo of sks circle on a ... background'."""
    from cat_adapter.testing.tiny import write_shape_concept

    return write_shape_concept(tmp_path / "concept", n=4, size=16)


@pytest.fixture(scope="session")
def tiny_model_ddpm(tiny_model, tmp_path_factory):
    """The tiny pipeline with an ancestral sampler (DDPMScheduler draws fresh noise at every step)."""
    import json
    import shutil

    from diffusers import DDPMScheduler

    folder = tmp_path_factory.mktemp("tiny_ddpm") / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    shutil.rmtree(folder / "scheduler")
    DDPMScheduler.from_config(config).save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDPMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
