"""The Z-Image family (Z-Image, Z-Image-Turbo): a single-stream DiT over 2x2-patchified latents, flow matching, a
Qwen3 language model as its text encoder.

What differs from Flux and SD3, as diffusers' ``ZImagePipeline`` does it:

- the prompt goes through the tokenizer's chat template as a user message (``apply_chat_template`` with
  ``add_generation_prompt=True``, ``enable_thinking=True``), is padded to ``--max-sequence-length`` tokens (512 by
  default, as the pipeline) and encoded with the attention mask; the embedding is the second-to-last hidden state,
  and only the unpadded tokens reach the transformer (each prompt its own length). The text side caches the padded
  states with the mask (``Cond.extra["mask"]``) and ``predict`` hands the transformer each row's unpadded tokens, so
  it sees what the pipeline gives it. The trigger stays a word of the prompt: the byte-level BPE splits ``sks`` into
  bytes inside the template, and y (trigger removed, or the class, or empty) is built on the prompt string before
  the template is applied, so y's embedding is the pipeline's embedding of y;
- the transformer takes lists (one latent of shape (C, 1, h, w) and one caption per row), the time 1 - sigma, and
  predicts the negative velocity (the pipeline negates its output before the Euler step); ``predict`` returns the
  velocity eps - z_0 like every flow family;
- no pooled embedding and no guidance input; the VAE is an ``AutoencoderKL`` with shift and scale (Flux's);
- the LoRA is saved with ``ZImagePipeline.save_lora_weights`` (``transformer.`` keys). No kohya export: the
  community's Z-Image LoRAs (ai-toolkit, ComfyUI) use diffusers' module names under other prefixes; diffusers'
  loader reads this file and ComfyUI reads diffusers-named Z-Image LoRAs.
"""

from __future__ import annotations

import torch

from cat_adapter.diffusion import FlowMatchObjective
from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import Cond, Family, ModelSpec, TokenIds, register_family
from cat_adapter.models.pipeline import DiTLayout, PipelineFamily, load_pipeline
from cat_adapter.models.text import TextSide

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
# the attention and feed-forward of every block (main, noise and context refiners), as the Z-Image LoRA trainers
LORA_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1",
                "feed_forward.w2", "feed_forward.w3")
LLM_DEFAULT = 512   # ZImagePipeline's max_sequence_length default


class ChatLLMText(TextSide):
    """A language model as text encoder: each prompt as a user turn of the chat template, padded to
    ``max_sequence_length`` with its attention mask; ``Cond(hidden=second-to-last states, extra={"mask": ...})``.
    No token training."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self._max_sequence_length: int | None = None

    @property
    def max_length(self) -> int:
        return self.max_sequence_length

    @property
    def max_sequence_length(self) -> int:
        return self._max_sequence_length or min(LLM_DEFAULT, self.limit)

    @property
    def limit(self) -> int:
        """The longest --max-sequence-length: the tokenizer's model_max_length (Qwen3's is far above 512)."""
        return int(min(self.tokenizer.model_max_length, 1 << 16))

    @max_sequence_length.setter
    def max_sequence_length(self, n: int) -> None:
        self._max_sequence_length = int(n)

    def templated(self, prompt: str) -> str:
        """The text the language model reads for ``prompt``: the pipeline's chat template around it."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": self.rewrite(prompt)}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=True)

    def _ids(self, prompts: list[str]):
        return self.tokenizer([self.templated(p) for p in prompts], padding="max_length",
                              max_length=self.max_sequence_length, truncation=True, return_tensors="pt")

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids of the templated prompts; a warning names each prompt the length cuts."""
        import logging

        for p in prompts:
            n = len(self.tokenizer(self.templated(p), truncation=False).input_ids)
            if n > self.max_sequence_length:
                logging.getLogger(__name__).warning("prompt is %d tokens with its chat template, truncated to %d "
                                                    "(--max-sequence-length): %r", n, self.max_sequence_length, p[:80])
        return self._ids(prompts).input_ids

    def token_ids(self, prompts: list[str]) -> TokenIds:
        t = self._ids(prompts)
        return TokenIds(t.input_ids, {"mask": t.attention_mask})

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor, encoder=None) -> Cond:
        out = (encoder or self.encoder)(input_ids=ids, attention_mask=mask.bool(), output_hidden_states=True)
        hidden = out.hidden_states[-2] * mask.unsqueeze(-1).to(out.hidden_states[-2].dtype)   # padding zeroed
        return Cond(hidden, None, {"mask": mask.bool()})

    @torch.no_grad()
    def encode(self, prompts: list[str], *, device, chunk: int = 16) -> Cond:
        """Cached embeddings: hidden (N, L, D) float32 on the CPU, padding zeroed, and the mask (N, L)."""
        self.tokenize(prompts)
        t = self._ids(prompts)
        out = [self._encode(t.input_ids[i:i + chunk].to(device), t.attention_mask[i:i + chunk].to(device))
               for i in range(0, len(prompts), chunk)]
        return Cond(torch.cat([c.hidden for c in out]).float().cpu(), None,
                    {"mask": torch.cat([c.extra["mask"] for c in out]).cpu()})

    def encode_ids(self, p: TokenIds, wrapped: dict | None = None) -> Cond:
        return self._encode(p.ids, p.extra["mask"], (wrapped or {}).get("text_encoder"))

    def rows(self, cond: Cond) -> list[torch.Tensor]:
        """Each row's unpadded token states, as the pipeline hands them to the transformer (every token where there
        is no mask: ``cat-adapter memory`` counts the longest prompt the length allows)."""
        if "mask" not in cond.extra:
            return list(cond.hidden.unbind(0))
        return [h[m] for h, m in zip(cond.hidden, cond.extra["mask"].bool())]


class ZImageModel(DiTLayout, PipelineFamily):
    """A loaded ``ZImagePipeline``."""

    family = "zimage"
    pipeline_class = "ZImagePipeline"
    denoiser_name = "transformer"
    denoiser_class = "ZImageTransformer2DModel"
    denoiser_label = "Z-Image transformer"
    text_encoders = ("text_encoder",)
    large_text_encoders = ("text_encoder",)   # Qwen3-4B
    lora_targets = LORA_TARGETS
    target_examples = "attention.to_q, attention.to_out.0, feed_forward.w2"
    features = frozenset()        # no text-encoder LoRA, kohya file or token training (yet)
    text_class = ChatLLMText
    objective_class = FlowMatchObjective

    @classmethod
    def text_shape(cls, configs: dict[str, dict], max_sequence_length: int | None = None) -> tuple[int, int, None]:
        """(tokens, width, pooled width) from the component configs: the language model's states, no pooled."""
        return int(max_sequence_length or LLM_DEFAULT), int(configs["text_encoder"]["hidden_size"]), None

    def conditioning(self) -> dict:
        return {"max_sequence_length": self.text.max_sequence_length}

    def configure(self, *, guidance: float | None = None, max_sequence_length: int | None = None) -> None:
        if guidance is not None:
            raise CatAdapterError(f"--guidance {guidance}: Z-Image transformers take no guidance value (classifier-free "
                                  "guidance is a sampling setting: --guidance-scale); leave --guidance out")
        if max_sequence_length is not None:
            limit = self.text.limit
            if not 1 <= max_sequence_length <= limit:
                raise CatAdapterError(f"--max-sequence-length {max_sequence_length}: must be in [1, {limit}]")
            self.text.max_sequence_length = int(max_sequence_length)

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond, *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor:
        """The velocity eps - z_0 for latents z_t (B, C, h, w) at timesteps t in [0, 1000]: the transformer sees one
        (C, 1, h, w) latent and one unpadded caption per row and the time 1 - t / 1000, and predicts z_0 - eps."""
        kwargs = {"joint_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
        x = list(z_t.unsqueeze(2).unbind(0))
        time = (1000.0 - t.to(torch.float32)) / 1000.0
        out = self.net()(x, time.to(z_t.dtype), self.text.rows(cond), return_dict=False, **kwargs)[0]
        return -torch.stack(out, dim=0).squeeze(2)

    # ------------------------------------------------------------------------------------ latents
    @property
    def size_multiple(self) -> int:
        """The VAE factor times the 2x2 patches."""
        return int(self.pipe.vae_scale_factor * 2)

    @property
    def default_resolution(self) -> int:
        return 1024   # ZImagePipeline's default height and width


def build(spec: ModelSpec, resolved: str, dtype: torch.dtype) -> ZImageModel:
    pipe = load_pipeline(resolved, components=COMPONENTS, pipeline_kwargs={}, **ZImageModel.load_kwargs(spec, dtype))
    return ZImageModel(pipe, spec, resolved)


register_family(Family("zimage", ("ZImagePipeline",), build, denoiser_folder="transformer", model_class=ZImageModel))
