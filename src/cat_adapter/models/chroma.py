"""The Chroma family (Chroma1-HD, Chroma1-Base): FLUX.1-schnell's architecture with its modulation replaced by a
small approximator, T5 alone as text encoder, no guidance or pooled input.

What differs from Flux, as diffusers' ``ChromaPipeline`` does it:

- the prompt is T5's last hidden state computed *with* the tokenizer's attention mask (Flux's T5 sees every pad), and
  the transformer gets a mask over the text tokens that keeps the prompt and its first pad token and drops the rest,
  extended by ones over the image tokens; the text side caches the mask beside the states (``Cond.extra["mask"]``)
  and ``predict`` builds the transformer's mask from it exactly as the pipeline does;
- no CLIP, no pooled embedding, no guidance input (``--guidance`` is refused); latents are packed 2x2 as Flux's and
  the transformer sees t / 1000;
- the LoRA is saved with ``ChromaPipeline.save_lora_weights`` (Flux's loader and ``transformer.`` keys). No kohya
  export yet: kohya's Chroma LoRAs use sd-scripts' Flux names (``lora_unet_double_blocks_*``), which diffusers' Flux
  loader reads, but writing them needs the diffusers -> BFL key map, not built.
"""

from __future__ import annotations

import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import Cond, Family, ModelSpec, TokenIds, register_family
from cat_adapter.models.flux import LORA_TARGETS, T5_LIMIT, FluxModel
from cat_adapter.models.pipeline import load_pipeline
from cat_adapter.models.text import TextSide

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


class MaskedT5Text(TextSide):
    """T5 alone, encoded with its attention mask; ``Cond(hidden=T5, extra={"mask": the transformer's text mask})``.
    No token training."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self._max_sequence_length: int | None = None

    @property
    def max_sequence_length(self) -> int:
        return self._max_sequence_length or self.t5_limit

    @max_sequence_length.setter
    def max_sequence_length(self, n: int) -> None:
        self._max_sequence_length = int(n)

    @property
    def t5_limit(self) -> int:
        return int(min(T5_LIMIT, self.tokenizer.model_max_length))

    @property
    def max_length(self) -> int:
        return self.max_sequence_length

    def _ids(self, prompts: list[str]):
        return self.tokenizer([self.rewrite(p) for p in prompts], padding="max_length",
                              max_length=self.max_sequence_length, truncation=True, return_tensors="pt")

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return super().tokenize(prompts)

    def token_ids(self, prompts: list[str]) -> TokenIds:
        t = self._ids(prompts)
        return TokenIds(t.input_ids, {"tokenizer_mask": t.attention_mask})

    def _encode(self, ids: torch.Tensor, tokenizer_mask: torch.Tensor, encoder=None) -> Cond:
        hidden = (encoder or self.encoder)(ids, output_hidden_states=False, attention_mask=tokenizer_mask)[0]
        # the prompt's tokens and the first pad token stay visible to the transformer, as ChromaPipeline's mask
        lengths = tokenizer_mask.sum(dim=1)
        positions = torch.arange(tokenizer_mask.shape[1], device=ids.device).unsqueeze(0)
        mask = (positions <= lengths.unsqueeze(1)).to(hidden.dtype)
        return Cond(hidden, None, {"mask": mask})

    @torch.no_grad()
    def encode(self, prompts: list[str], *, device, chunk: int = 16) -> Cond:
        """Cached embeddings: T5 hidden (N, L, D) and the text mask (N, L), float32 on the CPU."""
        self.tokenize(prompts)
        t = self._ids(prompts)
        out = [self._encode(t.input_ids[i:i + chunk].to(device), t.attention_mask[i:i + chunk].to(device))
               for i in range(0, len(prompts), chunk)]
        return Cond(torch.cat([c.hidden for c in out]).float().cpu(), None,
                    {"mask": torch.cat([c.extra["mask"] for c in out]).float().cpu()})

    def encode_ids(self, p: TokenIds, wrapped: dict | None = None) -> Cond:
        return self._encode(p.ids, p.extra["tokenizer_mask"], (wrapped or {}).get("text_encoder"))


class ChromaModel(FluxModel):
    """A loaded ``ChromaPipeline``."""

    family = "chroma"
    pipeline_class = "ChromaPipeline"
    denoiser_class = "ChromaTransformer2DModel"
    denoiser_label = "Chroma transformer"
    text_encoders = ("text_encoder",)
    large_text_encoders = ("text_encoder",)   # T5-XXL
    lora_targets = LORA_TARGETS
    text_class = MaskedT5Text

    @classmethod
    def text_shape(cls, configs: dict[str, dict], max_sequence_length: int | None = None) -> tuple[int, int, None]:
        return int(max_sequence_length or T5_LIMIT), int(configs["text_encoder"]["d_model"]), None

    @property
    def has_guidance(self) -> bool:
        return False

    def configure(self, *, guidance: float | None = None, max_sequence_length: int | None = None) -> None:
        if guidance is not None:
            raise CatAdapterError(f"--guidance {guidance}: Chroma transformers take no guidance value (classifier-free "
                                  "guidance is a sampling setting: --guidance-scale); leave --guidance out")
        super().configure(max_sequence_length=max_sequence_length)

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond, *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor:
        """The velocity for unpacked latents z_t (B, C, h, w) at timesteps t in [0, 1000]: (B, C, h, w)."""
        from diffusers import FluxPipeline as pipe   # its static packing helpers

        b, c, h, w = z_t.shape
        packed = pipe._pack_latents(z_t, b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, z_t.device, cond.hidden.dtype)
        txt_ids = torch.zeros(cond.hidden.shape[1], 3, device=z_t.device, dtype=cond.hidden.dtype)
        mask = None
        if "mask" in cond.extra:   # the text mask, then every image token (ChromaPipeline._prepare_attention_mask)
            mask = torch.cat([cond.extra["mask"].to(cond.hidden.dtype),
                              torch.ones(b, packed.shape[1], device=z_t.device, dtype=torch.bool)], dim=1)
        kwargs = {"joint_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
        out = self.net()(hidden_states=packed, timestep=t.to(torch.float32) / 1000, encoder_hidden_states=cond.hidden,
                         txt_ids=txt_ids, img_ids=img_ids, attention_mask=mask, return_dict=False, **kwargs)[0]
        f = self.pipe.vae_scale_factor
        return pipe._unpack_latents(out, h * f, w * f, f)


def build(spec: ModelSpec, resolved: str, dtype: torch.dtype) -> ChromaModel:
    pipe = load_pipeline(resolved, components=COMPONENTS, pipeline_kwargs={}, **ChromaModel.load_kwargs(spec, dtype))
    return ChromaModel(pipe, spec, resolved)


register_family(Family("chroma", ("ChromaPipeline",), build, denoiser_folder="transformer", model_class=ChromaModel))
