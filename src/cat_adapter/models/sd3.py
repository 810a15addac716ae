"""The SD3 / SD3.5 family: an MMDiT over patchified latents, flow matching, two CLIP encoders with projection and T5.

What differs from Flux, as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` and ``train_dreambooth_lora_sd3.py``
do it:

- the prompt embedding is the two CLIP encoders' penultimate hidden states side by side, zero-padded on the feature
  axis to T5's width, followed on the sequence axis by T5's last hidden state (``--max-sequence-length`` tokens,
  256 by default as the pipeline); the pooled embedding is both CLIP projections side by side. A pipeline saved
  without T5 (``text_encoder_3`` None) gets zeros in its place, as the pipeline does;
- the transformer patchifies the latents itself (no packing) and sees the raw timestep t in [0, 1000]; no guidance
  input. The objective is the same rectified flow as Flux (``diffusion.FlowMatchObjective``), with the timesteps
  of the model's scheduler, which applies SD3's static shift (3.0) to its training sigmas;
- the script's ``--precondition_outputs`` (x0-space loss) is not used: CAT compares velocity predictions, and a
  difference of x0 predictions is sigma^2 times that of velocities, which would make alpha's effect depend on t;
- the LoRA is saved with ``StableDiffusion3Pipeline.save_lora_weights`` (``transformer.`` keys, adapter metadata).
  No kohya export: sd-scripts' SD3 LoRA names (``lora_unet_joint_blocks_*``) are read by ComfyUI and by diffusers'
  loader, but writing them needs the MMDiT -> SGM key map, not built yet.
"""

from __future__ import annotations

import torch

from cat_adapter.diffusion import FlowMatchObjective
from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import Cond, Family, ModelSpec, TokenIds, register_family
from cat_adapter.models.pipeline import DiTLayout, PipelineFamily, load_pipeline
from cat_adapter.models.text import TextSide

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
# diffusers' train_dreambooth_lora_sd3.py default targets (both streams' attention)
LORA_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k", "attn.to_q",
                "attn.to_v", "attn.to_out.0")
T5_DEFAULT = 256   # StableDiffusion3Pipeline's max_sequence_length default
T5_LIMIT = 512


class ClipClipT5Text(TextSide):
    """Two CLIP encoders with projection and T5; prompts -> ``Cond(hidden=[CLIP-L; CLIP-G | pad] + T5, pooled=[L; G])``.
    No token training."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self._max_sequence_length: int | None = None

    @property
    def max_sequence_length(self) -> int:
        return self._max_sequence_length or min(T5_DEFAULT, self.t5_limit)

    @max_sequence_length.setter
    def max_sequence_length(self, n: int) -> None:
        self._max_sequence_length = int(n)

    @property
    def t5_limit(self) -> int:
        tok = getattr(self.pipe, "tokenizer_3", None)
        return int(min(T5_LIMIT, tok.model_max_length)) if tok is not None else T5_LIMIT

    def _ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        converted = [self.rewrite(p) for p in prompts]

        def clip(tok):
            return tok(converted, padding="max_length", max_length=self.max_length, truncation=True,
                       return_tensors="pt").input_ids

        t5 = None
        if getattr(self.pipe, "tokenizer_3", None) is not None:
            t5 = self.pipe.tokenizer_3(converted, padding="max_length", max_length=self.max_sequence_length,
                                       truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
        return clip(self.pipe.tokenizer), clip(self.pipe.tokenizer_2), t5

    def token_ids(self, prompts: list[str]) -> TokenIds:
        a, b, t5 = self._ids(prompts)
        return TokenIds(a, {"ids_2": b, **({"ids_3": t5} if t5 is not None else {})})

    def _encode(self, ids_1, ids_2, ids_3, encoders: dict | None = None) -> Cond:
        enc = {"text_encoder": self.pipe.text_encoder, "text_encoder_2": self.pipe.text_encoder_2,
               "text_encoder_3": getattr(self.pipe, "text_encoder_3", None), **(encoders or {})}
        hidden, pooled = [], []
        for name, ids in (("text_encoder", ids_1), ("text_encoder_2", ids_2)):
            out = enc[name](ids, output_hidden_states=True)
            pooled.append(out[0])             # text_embeds (the projection)
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        if enc["text_encoder_3"] is not None and ids_3 is not None:
            t5 = enc["text_encoder_3"](ids_3)[0]
        else:   # the pipeline's zeros for a missing T5, of the transformer's joint width
            width = self.pipe.transformer.config.joint_attention_dim
            t5 = torch.zeros(clip.shape[0], self.max_sequence_length, width, device=clip.device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Cond(torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1))

    @torch.no_grad()
    def encode(self, prompts: list[str], *, device, chunk: int = 16) -> Cond:
        """Cached embeddings: hidden (N, 77 + L, D) and pooled (N, P), float32 on the CPU."""
        self.tokenize(prompts)  # warns about prompts CLIP truncates
        a, b, t5 = self._ids(prompts)
        out = [self._encode(a[i:i + chunk].to(device), b[i:i + chunk].to(device),
                            None if t5 is None else t5[i:i + chunk].to(device)) for i in range(0, len(prompts), chunk)]
        return Cond(torch.cat([c.hidden for c in out]).float().cpu(), torch.cat([c.pooled for c in out]).float().cpu())

    def encode_ids(self, p: TokenIds, wrapped: dict | None = None) -> Cond:
        return self._encode(p.ids, p.extra["ids_2"], p.extra.get("ids_3"), wrapped)


class SD3Model(DiTLayout, PipelineFamily):
    """A loaded ``StableDiffusion3Pipeline`` (SD3 medium, SD3.5 medium / large / large turbo)."""

    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    denoiser_class = "SD3Transformer2DModel"
    denoiser_label = "SD3 transformer"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    large_text_encoders = ("text_encoder_3",)   # T5-XXL, 4.7B parameters
    lora_targets = LORA_TARGETS
    target_examples = "attn.to_q, attn.add_k_proj, attn.to_add_out, ff.net.2"
    features = frozenset()        # no text-encoder LoRA, kohya file or token training (yet)
    text_class = ClipClipT5Text
    objective_class = FlowMatchObjective

    @classmethod
    def text_shape(cls, configs: dict[str, dict], max_sequence_length: int | None = None) -> tuple[int, int, int]:
        """(tokens, width, pooled width) from the component configs: 77 CLIP tokens + T5's, at T5's width."""
        te, te2 = configs["text_encoder"], configs["text_encoder_2"]
        width = int(configs["text_encoder_3"]["d_model"]) if "text_encoder_3" in configs else \
            int(configs["transformer"]["joint_attention_dim"])
        return (int(te.get("max_position_embeddings", 77)) + int(max_sequence_length or T5_DEFAULT), width,
                int(te.get("projection_dim", te["hidden_size"])) + int(te2.get("projection_dim", te2["hidden_size"])))

    def conditioning(self) -> dict:
        return {"max_sequence_length": self.text.max_sequence_length}

    def configure(self, *, guidance: float | None = None, max_sequence_length: int | None = None) -> None:
        """The run's --max-sequence-length, checked against this model (SD3 has no guidance input)."""
        if guidance is not None:
            raise CatAdapterError(f"--guidance {guidance}: SD3 transformers take no guidance value (classifier-free "
                                  "guidance is a sampling setting: --guidance-scale); leave --guidance out")
        if max_sequence_length is not None:
            limit = self.text.t5_limit
            if not 1 <= max_sequence_length <= limit:
                raise CatAdapterError(f"--max-sequence-length {max_sequence_length}: must be in [1, {limit}] (the "
                                      f"T5 tokenizer's model_max_length, at most {T5_LIMIT})")
            self.text.max_sequence_length = int(max_sequence_length)

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond, *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor:
        """The velocity for latents z_t (B, C, h, w) at timesteps t in [0, 1000] (passed as they are)."""
        kwargs = {"joint_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
        return self.net()(hidden_states=z_t, timestep=t.to(torch.float32), encoder_hidden_states=cond.hidden,
                          pooled_projections=cond.pooled, return_dict=False, **kwargs)[0]

    # ------------------------------------------------------------------------------------ latents
    @property
    def size_multiple(self) -> int:
        """The VAE factor times the transformer's patch size."""
        return int(self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size)

    @property
    def default_resolution(self) -> int:
        return int(self.pipe.transformer.config.sample_size * self.pipe.vae_scale_factor)


def _without_t5(resolved: str) -> bool:
    """A local pipeline folder saved without T5 (``text_encoder_3`` absent or null in model_index.json)."""
    import json
    from pathlib import Path

    index = Path(resolved).expanduser() / "model_index.json"
    if not index.is_file():
        return False
    entry = json.loads(index.read_text(encoding="utf-8")).get("text_encoder_3")
    return not entry or entry[0] is None


def build(spec: ModelSpec, resolved: str, dtype: torch.dtype) -> SD3Model:
    # diffusers loads an SD3 folder without T5 only when told so (its documented text_encoder_3=None)
    kwargs = {"text_encoder_3": None, "tokenizer_3": None} if _without_t5(resolved) else {}
    pipe = load_pipeline(resolved, components=COMPONENTS, pipeline_kwargs=kwargs, **SD3Model.load_kwargs(spec, dtype))
    return SD3Model(pipe, spec, resolved)


register_family(Family("sd3", ("StableDiffusion3Pipeline",), build, denoiser_folder="transformer",
                       model_class=SD3Model))
