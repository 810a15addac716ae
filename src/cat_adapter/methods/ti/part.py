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

    @classmethod
    def check_model(cls, cfg, model) -> None:
        if not model.supports("tokens"):
            from cat_adapter.errors import CatAdapterError

            raise CatAdapterError(f"--method {cfg.method.method} is not built for the {model.family} family (Textual "
                                  "Inversion needs a CLIP prompt encoder); use lora or cat")

    def __init__(self, model, cfg, **_):
        o, d = cfg.tokens, cfg.data
        self.model = model
        self.trigger = d.trigger
        # one Parameter per text encoder (SDXL has two), each (num_vectors, its width)
        self.names, self.rows = model.text.add_tokens(d.trigger, o.num_vectors, o.initializer_token or d.class_noun)
        self.token = self.names[0]
        self.initial = [r.detach().clone() for r in self.rows]

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.rows)

    def param_groups(self, optim) -> list[dict]:
        return [{"params": list(self.rows)}]

    def modules(self) -> dict[str, torch.nn.Module]:
        return self.model.text.token_modules()

    def base(self):
        return self.model.text.original_tokens()

    @property
    def _keys(self) -> list[str]:
        return ["rows"] + [f"rows_{i + 1}" for i in range(1, len(self.rows))]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: r.detach() for k, r in zip(self._keys, self.rows)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_keys(set(self._keys), set(state), "token")
        with torch.no_grad():
            for k, r in zip(self._keys, self.rows):
                r.copy_(state[k])

    def after_step(self) -> None:
        pass

    def log_values(self) -> dict[str, float]:
        return {"tokens_drift": self.drift()}

    def drift(self) -> float:
        """How far the rows moved from their initializer (L2 norm per vector, mean): logged for TI."""
        return float(torch.cat([(r.detach().float() - r0).norm(dim=-1) for r, r0 in zip(self.rows, self.initial)]).mean())

    def export(self, out_dir: Path, *, dtype: torch.dtype, export_format: str) -> Exported:
        """The family's format (SD: diffusers' ``{token: tensor[num_vectors, d]}`` that
        ``pipe.load_textual_inversion(out_dir)`` reads; SDXL: ``clip_l`` / ``clip_g``)."""
        from cat_adapter.io import atomic_path

        path = out_dir / EMBEDS_NAME
        with atomic_path(path) as tmp:
            self.model.text.save_embeddings(tmp, self.token, [r.detach().to("cpu", dtype) for r in self.rows])
        return Exported("tokens", {"embeddings": EMBEDS_NAME},
                        {"tokens": {self.trigger: self.token}, "num_vectors": len(self.names)})
