"""The Stable Diffusion 1.x / 2.x family: one CLIP text encoder, a U-Net, DDPM epsilon or v objective."""

from __future__ import annotations

from pathlib import Path

import torch

from cat_adapter.diffusion import DDPMObjective
from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import Cond, Family, ModelSpec, TokenIds, first_line, register_family
from cat_adapter.models.pipeline import PipelineFamily, UNetLayout, load_pipeline
from cat_adapter.models.text import TextSide, add_token_rows, new_token_names

PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ClipText(TextSide):
    """One CLIP tokenizer and encoder; prompts -> ``Cond`` (last hidden state, as the pipeline). Trains tokens."""

    @torch.no_grad()
    def encode(self, prompts: list[str], *, device, chunk: int = 16) -> Cond:
        """Cached embeddings: (N, L, D) float32 on the CPU."""
        ids = self.tokenize(prompts)
        out = [self.encoder(ids[i:i + chunk].to(device))[0].float().cpu() for i in range(0, len(prompts), chunk)]
        return Cond(torch.cat(out))

    def encode_ids(self, p: TokenIds, wrapped: dict | None = None) -> Cond:
        """In-step embeddings of token ids, with gradients to trainable tokens (``wrapped``: the text encoder as
        accelerate prepared it, by the name ``token_modules`` gives it)."""
        return Cond((wrapped or {}).get("text_encoder", self.encoder)(p.ids)[0])

    def token_modules(self) -> dict[str, torch.nn.Module]:
        """The modules that hold trainable token rows, by the name accelerate prepares them under."""
        return {"text_encoder": self.encoder}

    # -------------------------------------------------------------------------------- added tokens (TI)
    def add_tokens(self, trigger: str, num_vectors: int, initializer: str, *, option: str = "--initializer-token"
                   ) -> tuple[list[str], list[torch.nn.Parameter]]:
        """Add ``trigger`` (or ``<trigger>`` if the tokenizer has it already) as ``num_vectors`` new tokens,
        initialised from the mean embedding of ``initializer``'s tokens; returns the tokens and their rows (one
        Parameter per text encoder)."""
        token, names = new_token_names(self.tokenizer, trigger, num_vectors)
        self.keep_original_tokenizers()
        rows, ids = add_token_rows(self.tokenizer, self.encoder, names, initializer, option)
        self.trainable_ids |= set(ids)
        self.token_map[trigger] = token
        return names, [rows]

    def save_embeddings(self, path: Path, token: str, rows: list[torch.Tensor]) -> None:
        """diffusers' format, ``{token: tensor[num_vectors, d]}``: ``pipe.load_textual_inversion(folder)``."""
        from safetensors.torch import save_file

        save_file({token: rows[0].contiguous()}, str(path), metadata={"format": "pt"})

    def load_embeddings(self, file: Path, tokens: dict[str, str], *, option: str = "--adapter") -> None:
        """Plain diffusers ``load_textual_inversion``; ``tokens`` maps triggers to the file's tokens."""
        self.keep_original_tokenizers()
        try:
            self.pipe.load_textual_inversion(str(file))
        except Exception as exc:
            raise CatAdapterError(f"{option} {file}: cannot load the embeddings ({first_line(exc)})") from None
        self.token_map.update(tokens)


class SDModel(UNetLayout, PipelineFamily):
    """A loaded SD 1.x/2.x pipeline with the calls the trainer, sampler and evaluation need."""

    family = "sd"
    pipeline_class = "StableDiffusionPipeline"
    denoiser_name = "unet"
    denoiser_class = "UNet2DConditionModel"
    denoiser_label = "U-Net"
    text_encoders = ("text_encoder",)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    target_examples = "to_q, to_out.0, proj_in, conv1"
    features = frozenset({"text_encoder_lora", "kohya_export", "tokens"})
    text_class = ClipText

    @classmethod
    def text_shape(cls, configs: dict[str, dict], max_sequence_length: int | None = None) -> tuple[int, int, None]:
        """(tokens, width, pooled width) of the prompt embedding, from the component configs (``cat-adapter
        memory``): CLIP's last hidden state."""
        te = configs["text_encoder"]
        return int(te.get("max_position_embeddings", 77)), int(te["hidden_size"]), None
    objective_class = DDPMObjective

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond, *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor:
        """The denoiser's output for noisy latents z_t at steps t under ``cond``: (B, C, h, w). ``micro``: each
        row's image sizes and crop (``Noised.micro``; SD ignores them). ``lora_scale`` multiplies loaded LoRA
        layers, as ``--lora-scale`` does in sampling."""
        kwargs = {"cross_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
        return self.net()(z_t, t, encoder_hidden_states=cond.hidden, return_dict=False, **kwargs)[0]

    def save_lora_kohya(self, path: Path, state_dict: dict[str, torch.Tensor], *, alpha: float, rank: int) -> Path:
        """A kohya/A1111/ComfyUI-style file (``lora_unet_*.lora_down/lora_up/alpha``)."""
        from diffusers.utils import convert_state_dict_to_kohya
        from safetensors.torch import save_file

        from cat_adapter.io import atomic_path

        kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state_dict.items()})
        # diffusers writes alpha = rank; the adapter's own lora_alpha is what keeps the scale right.
        dtype = next(iter(state_dict.values())).dtype
        for k in kohya:
            if k.endswith(".alpha"):
                kohya[k] = torch.tensor(alpha, dtype=dtype)  # the --save-dtype of the weights
        with atomic_path(path) as tmp:
            save_file(kohya, str(tmp), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha),
                                                 "ss_network_dim": str(rank)})
        return path


def build(spec: ModelSpec, resolved: str, dtype: torch.dtype) -> SDModel:
    pipe = load_pipeline(resolved, components=PIPELINE_COMPONENTS, **SDModel.load_kwargs(spec, dtype))
    return SDModel(pipe, spec, resolved)


register_family(Family("sd", ("StableDiffusionPipeline",), build, model_class=SDModel))
