"""The SDXL family: two CLIP text encoders, a U-Net with added (pooled text, time ids) conditioning.

What differs from SD 1.x/2.x, as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` and its SDXL
training scripts do it:

- the prompt embedding is the penultimate hidden state of each encoder, concatenated on the feature
  axis; the pooled embedding is the second encoder's projected output;
- ``time_ids`` = (original height, width, crop top, left, target height, width) of each training
  image (``Noised.micro``, kept by the data loader); prompts without an image (drift, sampling) use
  the latent's own size and no crop, as the pipeline does by default;
- the VAE encodes in float32 when its config says ``force_upcast`` and the weights are float16;
- Textual Inversion trains one row set per encoder and saves both in one file under ``clip_l`` /
  ``clip_g`` (the layout A1111, ComfyUI and civitai embeddings use), loaded with two
  ``load_textual_inversion`` calls;
- the kohya export uses sd-scripts' SDXL key names (``lora_unet_input_blocks_4_1_...``), which
  ComfyUI, A1111 and diffusers' ``load_lora_weights`` read.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cat_adapter.diffusion import DDPMObjective
from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import Cond, Family, ModelSpec, TokenIds, first_line, register_family
from cat_adapter.models.pipeline import PipelineFamily, UNetLayout, load_pipeline
from cat_adapter.models.text import TextSide, add_token_rows, new_token_names

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
EMBED_KEYS = ("clip_l", "clip_g")   # the two encoders' rows in an SDXL embedding file


class DualClipText(TextSide):
    """Two tokenizers and encoders; prompts -> ``Cond(hidden = [h_1; h_2] penultimate, pooled = the 2nd's)``.
    Trains tokens (one row set per encoder)."""

    tokenizer_names = ("tokenizer", "tokenizer_2")

    @property
    def tokenizers(self) -> list:
        return [self.pipe.tokenizer, self.pipe.tokenizer_2]

    @property
    def encoders(self) -> list[torch.nn.Module]:
        return [self.pipe.text_encoder, self.pipe.text_encoder_2]

    def _ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        converted = [self.convert(p, tokenizer) for p in prompts]
        return tokenizer(converted, padding="max_length", max_length=int(tokenizer.model_max_length),
                         truncation=True, return_tensors="pt").input_ids

    def token_ids(self, prompts: list[str]) -> TokenIds:
        self.tokenize(prompts)  # warns about truncated prompts
        return TokenIds(self._ids(self.pipe.tokenizer, prompts), {"ids_2": self._ids(self.pipe.tokenizer_2, prompts)})

    @staticmethod
    def _encode(ids: list[torch.Tensor], encoders: list) -> Cond:
        hidden, pooled = [], None
        for i, enc in zip(ids, encoders):
            out = enc(i, output_hidden_states=True)
            if out[0].dim() == 2:   # CLIPTextModelWithProjection: text_embeds (diffusers keeps the last one's)
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return Cond(torch.cat(hidden, dim=-1), pooled)

    @torch.no_grad()
    def encode(self, prompts: list[str], *, device, chunk: int = 16) -> Cond:
        """Cached embeddings: hidden (N, L, D1 + D2) and pooled (N, P), float32 on the CPU."""
        p = self.token_ids(prompts)
        out = [self._encode([p.ids[i:i + chunk].to(device), p.extra["ids_2"][i:i + chunk].to(device)], self.encoders)
               for i in range(0, len(prompts), chunk)]
        return Cond(torch.cat([c.hidden for c in out]).float().cpu(), torch.cat([c.pooled for c in out]).float().cpu())

    def encode_ids(self, p: TokenIds, wrapped: dict | None = None) -> Cond:
        wrapped = wrapped or {}
        encoders = [wrapped.get("text_encoder", self.encoders[0]), wrapped.get("text_encoder_2", self.encoders[1])]
        return self._encode([p.ids, p.extra["ids_2"]], encoders)

    def token_modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder": self.encoders[0], "text_encoder_2": self.encoders[1]}

    # -------------------------------------------------------------------------------- added tokens (TI)
    def add_tokens(self, trigger: str, num_vectors: int, initializer: str, *, option: str = "--initializer-token"
                   ) -> tuple[list[str], list[torch.nn.Parameter]]:
        """The same new tokens in both tokenizers, with rows in both encoders (each initialised from its own
        embedding of ``initializer``)."""
        token, names = new_token_names(self.pipe.tokenizer, trigger, num_vectors)
        if any(n in self.pipe.tokenizer_2.get_vocab() for n in names):
            raise CatAdapterError(f"--trigger {trigger}: the second tokenizer already has {token!r}; choose another "
                                  "trigger for --method ti")
        self.keep_original_tokenizers()
        rows = []
        for tok, enc in zip(self.tokenizers, self.encoders):
            row, ids = add_token_rows(tok, enc, names, initializer, option)
            rows.append(row)
            if tok is self.tokenizer:
                self.trainable_ids |= set(ids)
        self.token_map[trigger] = token
        return names, rows

    def save_embeddings(self, path: Path, token: str, rows: list[torch.Tensor]) -> None:
        from safetensors.torch import save_file

        save_file({k: r.contiguous() for k, r in zip(EMBED_KEYS, rows)}, str(path),
                  metadata={"format": "pt", "token": token})

    def load_embeddings(self, file: Path, tokens: dict[str, str], *, option: str = "--adapter") -> None:
        """Plain diffusers: ``load_textual_inversion(state["clip_l"], token, text_encoder, tokenizer)``, then the
        same with ``clip_g`` into the second pair. The token is the one ``tokens`` names (adapter.json), else the
        file's stem (A1111's convention)."""
        from safetensors.torch import load_file

        self.keep_original_tokenizers()
        state = load_file(str(file))
        if set(state) != set(EMBED_KEYS):
            raise CatAdapterError(f"{option} {file}: SDXL embeddings hold clip_l and clip_g, this file "
                                  f"{sorted(state)[:3]}")
        token = next(iter(tokens.values()), None) or Path(file).stem
        try:
            for key, tok, enc in zip(EMBED_KEYS, self.tokenizers, self.encoders):
                self.pipe.load_textual_inversion(state[key], token=token, text_encoder=enc, tokenizer=tok)
        except Exception as exc:
            raise CatAdapterError(f"{option} {file}: cannot load the embeddings ({first_line(exc)})") from None
        self.token_map.update(tokens or {token: token})


class SDXLModel(UNetLayout, PipelineFamily):
    """A loaded ``StableDiffusionXLPipeline``."""

    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    denoiser_name = "unet"
    denoiser_class = "UNet2DConditionModel"
    denoiser_label = "U-Net"
    text_encoders = ("text_encoder", "text_encoder_2")
    large_text_encoders = ("text_encoder_2",)   # OpenCLIP bigG, 695M parameters
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    target_examples = "to_q, to_out.0, proj_in, conv1"
    features = frozenset({"kohya_export", "tokens"})
    text_class = DualClipText

    @classmethod
    def text_shape(cls, configs: dict[str, dict], max_sequence_length: int | None = None) -> tuple[int, int, int]:
        """(tokens, width, pooled width) from the component configs: both encoders' hidden states side by side, the
        second's projection pooled."""
        te, te2 = configs["text_encoder"], configs["text_encoder_2"]
        return (int(te.get("max_position_embeddings", 77)), int(te["hidden_size"]) + int(te2["hidden_size"]),
                int(te2.get("projection_dim", te2["hidden_size"])))
    objective_class = DDPMObjective

    def time_ids(self, z_t: torch.Tensor, micro: torch.Tensor | None) -> torch.Tensor:
        """(B, 6): ``micro`` as given, else the latent's own size in pixels, no crop (the pipeline's default)."""
        if micro is None:
            f = self.pipe.vae_scale_factor
            h, w = z_t.shape[-2] * f, z_t.shape[-1] * f
            micro = torch.tensor([[h, w, 0, 0, h, w]], device=z_t.device).expand(z_t.shape[0], 6)
        return micro

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond, *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor:
        kwargs = {"cross_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
        added = {"text_embeds": cond.pooled, "time_ids": self.time_ids(z_t, micro).to(cond.hidden.dtype)}
        return self.net()(z_t, t, encoder_hidden_states=cond.hidden, added_cond_kwargs=added, return_dict=False, **kwargs)[0]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, *, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """As SD's, with the VAE in float32 while it encodes when its config says ``force_upcast`` (the SDXL VAE
        overflows in float16)."""
        vae = self.pipe.vae
        dtype = next(vae.parameters()).dtype
        if not (getattr(vae.config, "force_upcast", False) and dtype == torch.float16):
            return super().encode_images(pixels, chunk=chunk)
        vae.to(torch.float32)
        try:
            return super().encode_images(pixels, chunk=chunk)
        finally:
            vae.to(dtype)


    # ------------------------------------------------------------------------------------ LoRA files
    def save_lora_kohya(self, path: Path, state_dict: dict[str, torch.Tensor], *, alpha: float, rank: int) -> Path:
        """sd-scripts' SDXL file: ``lora_unet_<SGM module path>.lora_down/lora_up/alpha``."""
        from safetensors.torch import save_file

        from cat_adapter.io import atomic_path

        names = sgm_names(self.pipe.unet)
        out: dict[str, torch.Tensor] = {}
        dtype = next(iter(state_dict.values())).dtype
        for key, value in state_dict.items():
            m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
            if not m or m.group(1) not in names:
                raise CatAdapterError(f"--export-format kohya: no sd-scripts name for the SDXL U-Net module "
                                      f"{key.rsplit('.lora_', 1)[0]}; export in the diffusers format")
            name = "lora_unet_" + names[m.group(1)].replace(".", "_")
            out[f"{name}.{'lora_down' if m.group(2) == 'A' else 'lora_up'}.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
        with atomic_path(path) as tmp:
            save_file(out, str(tmp), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha),
                                               "ss_network_dim": str(rank), "ss_base_model_version": "sdxl_base_v1-0"})
        return path


def sgm_names(unet) -> dict[str, str]:
    """diffusers U-Net module path -> the same module's path in SGM's (the original SDXL code's) U-Net.

    SGM numbers ``input_blocks`` 0 (conv_in), then per down block ``layers_per_block`` slots of
    [resnet, attention] and one [downsampler] slot; ``middle_block`` [resnet, attention, resnet];
    ``output_blocks`` per up block ``layers_per_block + 1`` slots of [resnet, attention, upsampler].
    Inside a resnet: conv1 -> in_layers.2, time_emb_proj -> emb_layers.1, conv2 -> out_layers.3,
    conv_shortcut -> skip_connection. Attention (Transformer2DModel) internals keep their names.
    """
    lpb = int(unet.config.layers_per_block)
    resnet_map = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
                  "conv_shortcut": "skip_connection"}
    top = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2"}

    def inner(kind: str, rest: str) -> str:
        if kind == "resnets":
            head, _, tail = rest.partition(".")
            return resnet_map.get(head, head) + ("." + tail if tail else "")
        return rest

    out: dict[str, str] = {}
    for name, _ in unet.named_modules():
        if name in top:
            out[name] = top[name]
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            b, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            out[name] = f"input_blocks.{1 + b * (lpb + 1) + j}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", name)
        if m:
            out[name] = f"input_blocks.{1 + int(m.group(1)) * (lpb + 1) + lpb}.0.op"
            continue
        m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
            out[name] = f"middle_block.{2 * j if kind == 'resnets' else 1}.{inner(kind, rest)}"
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            b, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            out[name] = f"output_blocks.{b * (lpb + 1) + j}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", name)
        if m:   # diffusers' reader maps slot 2 to upsamplers (SDXL's upsampling blocks all have attention)
            b = int(m.group(1))
            out[name] = f"output_blocks.{b * (lpb + 1) + lpb}.2.conv"
    return out


def build(spec: ModelSpec, resolved: str, dtype: torch.dtype) -> SDXLModel:
    pipe = load_pipeline(resolved, components=COMPONENTS, pipeline_kwargs={"add_watermarker": False},
                         **SDXLModel.load_kwargs(spec, dtype))
    return SDXLModel(pipe, spec, resolved)


register_family(Family("sdxl", ("StableDiffusionXLPipeline",), build, model_class=SDXLModel))
