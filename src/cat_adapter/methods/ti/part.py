"""The ``tokens`` part: new token embeddings (Textual Inversion); its base model reads prompts without them."""

from __future__ import annotations

from pathlib import Path

import torch

from cat_adapter.methods.base import Exported, check_state_keys

EMBEDS_NAME = "learned_embeds.safetensors"


class TokensPart:
    """The trigger becomes ``--num-vectors`` new tokens initialised from ``--initializer-token``.

    Only the new rows are parameters (``ExtendedEmbedding``), so every other row and weight stays bit for bit
    the base model's, and weight decay reaches only the new rows.
    """

    kind = "tokens"

    def __init__(self, model, cfg, **_):
        o, d = cfg.tokens, cfg.data
        self.model = model
        self.trigger = d.trigger
        self.names, self.rows = model.text.add_tokens(d.trigger, o.num_vectors, o.initializer_token or d.class_noun)
        self.token = self.names[0]
        self.initial = self.rows.detach().clone()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.rows]

    def param_groups(self, optim) -> list[dict]:
        return [{"params": [self.rows]}]

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder": self.model.text.encoder}

    def base(self):
        return self.model.text.original_tokens()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rows": self.rows.detach()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_keys({"rows"}, set(state), "token")
        with torch.no_grad():
            self.rows.copy_(state["rows"])

    def after_step(self) -> None:
        pass

    def drift(self) -> float:
        """How far the rows moved from their initializer (L2 norm per vector, mean): logged for TI."""
        return float((self.rows.detach().float() - self.initial).norm(dim=-1).mean())

    def export(self, out_dir: Path, *, dtype: torch.dtype, export_format: str) -> Exported:
        """diffusers' format, ``{token: tensor[num_vectors, d]}``: ``pipe.load_textual_inversion(out_dir)``."""
        from safetensors.torch import save_file

        from cat_adapter.io import atomic_path

        path = out_dir / EMBEDS_NAME
        with atomic_path(path) as tmp:
            save_file({self.token: self.rows.detach().to("cpu", dtype).contiguous()}, str(tmp),
                      metadata={"format": "pt"})
        return Exported("tokens", {"embeddings": EMBEDS_NAME},
                        {"tokens": {self.trigger: self.token}, "num_vectors": len(self.names)})
