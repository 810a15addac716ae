"""--offload-frozen: once latents and prompt embeddings are cached, the components a step does not read leave the
accelerator, and validation brings them back. On a CPU run it is a no-op; the moves are checked here on stand-in
modules that report a CUDA home (the GPU run itself is a pending device check)."""

from __future__ import annotations

import types

import torch

from cat_adapter.config import build_config
from cat_adapter.methods.base import build_method
from cat_adapter.models import ModelSpec, SDModel, load_model


class StandIn(torch.nn.Module):
    """A module that says it lives on ``where`` and records every move."""

    def __init__(self, where: str):
        super().__init__()
        self.where, self.moves = where, []

    def parameters(self, recurse: bool = True):
        yield types.SimpleNamespace(device=torch.device(self.where))

    def to(self, device):
        self.where = str(device)
        self.moves.append(self.where)
        return self


def stand_in_model(**components):
    model = SDModel.__new__(SDModel)
    model.pipe = types.SimpleNamespace(**components)
    model._offloaded = {}
    return model


def test_offload_moves_to_the_cpu_and_validation_brings_them_back():
    vae, text, unet = StandIn("cuda:0"), StandIn("cuda:0"), StandIn("cuda:0")
    model = stand_in_model(vae=vae, text_encoder=text, unet=unet)
    assert model.offload(["vae", "text_encoder"]) == ["vae", "text_encoder"]
    assert vae.where == text.where == "cpu" and unet.where == "cuda:0" and model.device == torch.device("cuda:0")
    with model.onloaded():
        assert vae.where == text.where == "cuda:0"
    assert vae.where == text.where == "cpu" and vae.moves == ["cpu", "cuda:0", "cpu"]
    assert model.offload(["vae"]) == []        # already on the CPU: nothing moves, nothing is recorded twice


def test_a_cpu_component_is_left_alone():
    vae = StandIn("cpu")
    model = stand_in_model(vae=vae, unet=StandIn("cpu"))
    assert model.offload(["vae"]) == [] and vae.moves == []
    with model.onloaded():
        pass
    assert vae.moves == []


def test_what_is_idle_depends_on_what_the_step_encodes(tiny_model):
    def idle(**kw):
        cfg = build_config(overrides=dict(model=str(tiny_model), data="-", output="-", class_noun="circle", **kw))
        model = load_model(ModelSpec(str(tiny_model)))
        build_method(cfg, model)
        return model.idle_components()

    assert idle(method="cat") == ["vae", "text_encoder"]           # prompts are cached: the encoder is idle
    assert idle(method="ti") == ["vae"]                            # trainable tokens: encoded in the step
    assert idle(method="cat", train_text_encoder=True) == ["vae"]  # a text-encoder LoRA: encoded in the step
