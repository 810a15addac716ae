"""The Flux family: a flow-matching transformer over 2x2-packed latents, CLIP pooled + T5 conditioning.

What differs from SD, as diffusers' ``FluxPipeline`` and its Flux training scripts do it:

- the objective is rectified flow (``diffusion.FlowMatchObjective``): z_t = (1 - sigma) z_0 + sigma eps,
  the transformer predicts the velocity eps - z_0 and sees t / 1000;
- the prompt is the T5 encoder's last hidden state (``--max-sequence-length`` tokens) and the pooled
  embedding is CLIP's pooler output; text ids are zeros, image ids the packed latent's (row, column);
- the trainer keeps latents unpacked, (B, C, h, w), like every family; ``predict`` packs them into
  (B, h/2 * w/2, 4C) tokens for the transformer and unpacks its output. Packing is a permutation, so
  every loss (and CAT's preservation term, the MSE between the frozen and adapted velocity
  predictions on y) is the same in either layout;
- a guidance-distilled (dev-like) transformer takes the guidance value as an input (``--guidance``);
- the LoRA is saved with ``FluxPipeline.save_lora_weights`` (``transformer.`` keys, adapter metadata).
"""

from __future__ import annotations

import torch

from cat_adapter.diffusion import FlowMatchObjective
from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import Cond, Family, ModelSpec, TokenIds, register_family
from cat_adapter.models.pipeline import DiTLayout, PipelineFamily, load_pipeline
from cat_adapter.models.text import TextSide

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
# diffusers' train_dreambooth_lora_flux.py default targets (attention of both streams and both feed-forwards)
LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2")
T5_LIMIT = 512   # FluxPipeline refuses longer prompts


class ClipT5Text(TextSide):
    """CLIP (pooled) and T5 (sequence) tokenizers and encoders; prompts -> ``Cond(hidden=T5, pooled=CLIP)``.
    No token training: the prompt is T5's, CLIP's is only pooled."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self._max_sequence_length: int | None = None   # --max-sequence-length; None: the tokenizer's limit

    @property
    def max_sequence_length(self) -> int:
        return self._max_sequence_length or self.t5_limit

    @max_sequence_length.setter
    def max_sequence_length(self, n: int) -> None:
        self._max_sequence_length = int(n)

    @property
    def t5_limit(self) -> int:
        return int(min(T5_LIMIT, self.pipe.tokenizer_2.model_max_length))

    def _ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        converted = [self.rewrite(p) for p in prompts]
        clip = self.pipe.tokenizer(converted, padding="max_length", max_length=self.max_length, truncation=True,
                                   return_tensors="pt").input_ids
        t5 = self.pipe.tokenizer_2(converted, padding="max_length", max_length=self.max_sequence_length,
                                   truncation=True, return_tensors="pt").input_ids
        return clip, t5

    def token_ids(self, prompts: list[str]) -> TokenIds:
        clip, t5 = self._ids(prompts)
        return TokenIds(clip, {"ids_2": t5})

    def _encode(self, clip_ids: torch.Tensor, t5_ids: torch.Tensor, clip_enc=None, t5_enc=None) -> Cond:
        pooled = (clip_enc or self.pipe.text_encoder)(clip_ids, output_hidden_states=False).pooler_output
        hidden = (t5_enc or self.pipe.text_encoder_2)(t5_ids, output_hidden_states=False)[0]
        return Cond(hidden, pooled)

    @torch.no_grad()
    def encode(self, prompts: list[str], *, device, chunk: int = 16) -> Cond:
        """Cached embeddings: T5 hidden (N, L, D) and CLIP pooled (N, P), float32 on the CPU."""
        self.tokenize(prompts)  # warns about prompts CLIP truncates
        clip, t5 = self._ids(prompts)
        out = [self._encode(clip[i:i + chunk].to(device), t5[i:i + chunk].to(device)) for i in range(0, len(prompts), chunk)]
        return Cond(torch.cat([c.hidden for c in out]).float().cpu(), torch.cat([c.pooled for c in out]).float().cpu())

    def encode_ids(self, p: TokenIds, wrapped: dict | None = None) -> Cond:
        wrapped = wrapped or {}
        return self._encode(p.ids, p.extra["ids_2"], wrapped.get("text_encoder"), wrapped.get("text_encoder_2"))


class FluxModel(DiTLayout, PipelineFamily):
    """A loaded ``FluxPipeline``."""

    family = "flux"
    pipeline_class = "FluxPipeline"
    denoiser_name = "transformer"
    denoiser_class = "FluxTransformer2DModel"
    denoiser_label = "Flux transformer"
    text_encoders = ("text_encoder", "text_encoder_2")
    large_text_encoders = ("text_encoder_2",)   # T5-XXL, 4.7B parameters
    lora_targets = LORA_TARGETS
    target_examples = "attn.to_q, attn.add_k_proj, ff.net.2, proj_mlp"
    features = frozenset()        # no text-encoder LoRA, kohya file or token training (yet)
    text_class = ClipT5Text

    @classmethod
    def text_shape(cls, configs: dict[str, dict], max_sequence_length: int | None = None) -> tuple[int, int, int]:
        """(tokens, width, pooled width) from the component configs: T5's sequence, CLIP's pooled output."""
        return (int(max_sequence_length or T5_LIMIT), int(configs["text_encoder_2"]["d_model"]),
                int(configs["text_encoder"]["hidden_size"]))
    objective_class = FlowMatchObjective

    def __init__(self, pipe, spec: ModelSpec, resolved: str):
        super().__init__(pipe, spec, resolved)
        self.guidance = 3.5 if self.has_guidance else None   # diffusers' Flux scripts' default

    @property
    def has_guidance(self) -> bool:
        return bool(self.pipe.transformer.config.guidance_embeds)

    def conditioning(self) -> dict:
        return {"max_sequence_length": self.text.max_sequence_length}

    def configure(self, *, guidance: float | None = None, max_sequence_length: int | None = None) -> None:
        """The run's --guidance and --max-sequence-length, checked against this model."""
        if guidance is not None:
            if not self.has_guidance:
                raise CatAdapterError(f"--guidance {guidance}: this Flux transformer has no guidance embedding "
                                      "(guidance_embeds is false, as in schnell-like models); leave --guidance out")
            self.guidance = float(guidance)
        if max_sequence_length is not None:
            limit = self.text.t5_limit
            if not 1 <= max_sequence_length <= limit:
                raise CatAdapterError(f"--max-sequence-length {max_sequence_length}: must be in [1, {limit}] (the T5 "
                                      f"tokenizer's model_max_length, at most {T5_LIMIT})")
            self.text.max_sequence_length = int(max_sequence_length)

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond, *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor:
        """The velocity for unpacked latents z_t (B, C, h, w) at timesteps t in [0, 1000]: (B, C, h, w)."""
        net = self.net()
        from diffusers import FluxPipeline as pipe   # its static packing helpers

        b, c, h, w = z_t.shape
        packed = pipe._pack_latents(z_t, b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, z_t.device, cond.hidden.dtype)
        txt_ids = torch.zeros(cond.hidden.shape[1], 3, device=z_t.device, dtype=cond.hidden.dtype)
        guidance = None
        if self.has_guidance:
            guidance = torch.full((b,), float(self.guidance), device=z_t.device, dtype=torch.float32)
        kwargs = {"joint_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
        out = net(hidden_states=packed, timestep=t.to(torch.float32) / 1000, guidance=guidance,
                  pooled_projections=cond.pooled, encoder_hidden_states=cond.hidden, txt_ids=txt_ids, img_ids=img_ids,
                  return_dict=False, **kwargs)[0]
        f = self.pipe.vae_scale_factor
        return pipe._unpack_latents(out, h * f, w * f, f)

    # ------------------------------------------------------------------------------------ latents
    @property
    def size_multiple(self) -> int:
        """The VAE factor times the 2x2 packing."""
        return int(self.pipe.vae_scale_factor * 2)

    @property
    def default_resolution(self) -> int:
        return int(self.pipe.default_sample_size * self.pipe.vae_scale_factor)

    # ------------------------------------------------------------------------------------ sampling
    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """FluxPipeline takes packed latents."""
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        return FluxPipeline._pack_latents(latents, b, c, h, w)


def build(spec: ModelSpec, resolved: str, dtype: torch.dtype) -> FluxModel:
    pipe = load_pipeline(resolved, components=COMPONENTS, pipeline_kwargs={}, **FluxModel.load_kwargs(spec, dtype))
    return FluxModel(pipe, spec, resolved)


register_family(Family("flux", ("FluxPipeline",), build, denoiser_folder="transformer", model_class=FluxModel))
