"""The Stable Diffusion 1.x / 2.x family: one CLIP text encoder, a U-Net, DDPM epsilon or v objective.

``load_pipeline`` reads a hub id, a local diffusers folder or a single-file checkpoint (the user's
real models and the tiny models the tests build from config take the same path). Weights are read
with safetensors unless ``allow_pickle`` is set (then diffusers reads ``.bin`` / ``.ckpt`` files with
``torch.load(weights_only=True)``); no remote code is ever trusted.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from cat_adapter.diffusion import DDPMObjective
from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import (SINGLE_FILE_SUFFIXES, Cond, Family, ModelSpec, TokenIds, first_line, is_hub_id,
                                     model_identity, register_family)

log = logging.getLogger(__name__)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def dtype_kwarg(dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` where diffusers has it (it deprecates
    ``torch_dtype`` with a FutureWarning), ``torch_dtype`` on older releases."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (diffusers with ``dtype``)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_pipeline(model: str, *, dtype: torch.dtype = torch.float32, revision: str | None = None,
                  variant: str | None = None, single_file_config: str | None = None, allow_pickle: bool = False,
                  option: str = "--model", pipeline_class: str = "StableDiffusionPipeline",
                  components: tuple[str, ...] = PIPELINE_COMPONENTS, pipeline_kwargs: dict | None = None):
    """Load a ``pipeline_class`` (``StableDiffusionPipeline``: SD 1.x / 2.x, without safety checker) in ``dtype``.

    ``model`` is a local diffusers folder (``model_index.json`` inside), a single-file checkpoint
    (``.safetensors``; ``.ckpt`` only with ``allow_pickle``), a hub id, or an alias such as ``toy``.
    ``components``: the sub-folders a local pipeline folder must hold.
    """
    import diffusers

    from cat_adapter.plugins import resolve_alias

    pipeline_cls = getattr(diffusers, pipeline_class)
    model = resolve_alias(model, "pipeline", option)
    if pipeline_kwargs is None:
        pipeline_kwargs = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    common = dict(**dtype_kwarg(dtype), **pipeline_kwargs)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CatAdapterError(f"{option} {model}: not a diffusers pipeline folder (no model_index.json); "
                                  f"give a {pipeline_class} folder, a .safetensors file or a hub id")
        missing = [c for c in components if not (path / c).is_dir()]
        if missing:
            raise CatAdapterError(f"{option} {model}: pipeline folder lacks {', '.join(missing)}/")
        try:
            pipe = pipeline_cls.from_pretrained(
                str(path), variant=variant, use_safetensors=None if allow_pickle else True, **common)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise CatAdapterError(f"{option} {model}: cannot load pipeline ({first_line(exc)})"
                                  + ("" if allow_pickle else "; if its weights are .bin files, add --allow-pickle")) from None
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise CatAdapterError(f"{option} {model}: file not found")
        if path.suffix.lower() != ".safetensors" and not allow_pickle:
            raise CatAdapterError(f"{option} {model}: not a .safetensors file; pickled checkpoints can run code, "
                                  "pass --allow-pickle to load it with weights_only=True")
        kwargs = dict(common)
        if single_file_config:
            kwargs["config"] = single_file_config
        try:
            pipe = pipeline_cls.from_single_file(str(path), **kwargs)
        except Exception as exc:  # diffusers raises many types here; all mean "cannot convert this file"
            raise CatAdapterError(
                f"{option} {model}: cannot load single-file checkpoint ({first_line(exc)}); offline, pass "
                "--single-file-config with a diffusers folder of the same architecture") from None
    elif is_hub_id(model):
        try:
            pipe = pipeline_cls.from_pretrained(
                model, revision=revision, variant=variant, use_safetensors=None if allow_pickle else True, **common)
        except Exception as exc:  # network errors, missing repos, gated repos
            raise CatAdapterError(f"{option} {model}: cannot load from the hub ({first_line(exc, 160)}); check the "
                                  "id, the network and HF_TOKEN, or pass a local diffusers folder") from None
    else:
        raise CatAdapterError(f"{option} {model}: no such folder or file (and not a hub id of the form org/name)")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def freeze(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.requires_grad_(False)
        m.eval()



def is_lokr_file(file: Path) -> bool:
    """A safetensors LoRA file holding LyCORIS LoKr factors (``*.lokr_w1``) rather than LoRA matrices."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return any(".lokr_" in k for k in f.keys())
    except Exception:
        return False

class ExtendedEmbedding(torch.nn.Module):
    """A token embedding with ``n`` new rows after the frozen ones; only the new rows are a Parameter.

    ids >= the base vocabulary size read the new rows. Every other row is the base embedding's own,
    untouched: no optimizer or weight decay can reach it (the failure mode diffusers' TI script
    repairs by copying rows back after each step).
    """

    def __init__(self, base: torch.nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.new_rows = torch.nn.Parameter(new_rows.detach().float().clone())
        self.num_base = base.num_embeddings
        self.num_embeddings = self.num_base + new_rows.shape[0]
        self.embedding_dim = base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.new_rows.to(self.base.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.num_base - 1))
        new = ids >= self.num_base
        if not bool(new.any()):
            return out
        extra = self.new_rows.to(out.dtype)[(ids - self.num_base).clamp(min=0)]
        return torch.where(new.unsqueeze(-1), extra, out)


class SDText:
    """The text side: one CLIP tokenizer and encoder; prompts -> ``Cond`` (last hidden state, as the pipeline)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.token_map: dict[str, str] = {}        # trigger -> the token that stands for it (TI)
        self.trainable_ids: set[int] = set()
        self.encoder_trained = False   # text-encoder LoRA: no prompt's embedding is fixed
        self._original_tokenizer = None

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def encoder(self):
        return self.pipe.text_encoder

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def rewrite(self, prompt: str) -> str:
        """Triggers -> the tokens that stand for them (``sks`` -> ``<sks>`` where the tokenizer knew ``sks``):
        what a prompt given to the pipeline needs (the pipeline expands multi-vector tokens itself)."""
        from cat_adapter.data.prompts import replace_word

        for trigger, token in self.token_map.items():
            if token != trigger:
                prompt = replace_word(prompt, trigger, token)
        return prompt

    def convert(self, prompt: str) -> str:
        """``rewrite``, then diffusers' multi-vector expansion (``<sks>`` -> ``<sks> <sks>_1 ...``) exactly as the
        pipeline's ``encode_prompt`` does it: the training encodes prompts as sampling will."""
        prompt = self.rewrite(prompt)
        return self.pipe.maybe_convert_prompt(prompt, self.tokenizer) if self.token_map else prompt

    def load_embeddings(self, file: Path, tokens: dict[str, str], *, option: str = "--adapter") -> None:
        """Plain diffusers ``load_textual_inversion``; ``tokens`` maps triggers to the file's tokens."""
        import copy

        self._original_tokenizer = self._original_tokenizer or copy.deepcopy(self.tokenizer)
        try:
            self.pipe.load_textual_inversion(str(file))
        except Exception as exc:
            raise CatAdapterError(f"{option} {file}: cannot load the embeddings ({first_line(exc)})") from None
        self.token_map.update(tokens)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        converted = [self.convert(p) for p in prompts]
        for p in converted:
            n = len(self.tokenizer(p, truncation=False).input_ids)
            if n > self.max_length:
                log.warning("prompt is %d tokens, truncated to %d: %r", n, self.max_length, p[:80])
        return self.tokenizer(converted, padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt").input_ids

    def token_ids(self, prompts: list[str]) -> TokenIds:
        """Prompts as token ids, to encode in the step (they hold a trainable token)."""
        return TokenIds(self.tokenize(prompts))

    def cacheable(self, prompt: str) -> bool:
        """A prompt without a trainable token: its embedding is fixed, so it is encoded once."""
        if self.encoder_trained:
            return False
        if not self.trainable_ids:
            return True
        return not (set(self.tokenize([prompt])[0].tolist()) & self.trainable_ids)

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

    def save_embeddings(self, path: Path, token: str, rows: list[torch.Tensor]) -> None:
        """diffusers' format, ``{token: tensor[num_vectors, d]}``: ``pipe.load_textual_inversion(folder)``."""
        from safetensors.torch import save_file

        save_file({token: rows[0].contiguous()}, str(path), metadata={"format": "pt"})

    # -------------------------------------------------------------------------------- added tokens (TI)
    def add_tokens(self, trigger: str, num_vectors: int, initializer: str, *, option: str = "--initializer-token"
                   ) -> tuple[list[str], list[torch.nn.Parameter]]:
        """Add ``trigger`` (or ``<trigger>`` if the tokenizer has it already) as ``num_vectors`` new tokens,
        initialised from the mean embedding of ``initializer``'s tokens; returns the tokens and their rows (one
        Parameter per text encoder)."""
        import copy

        token, names = self._new_token_names(self.tokenizer, trigger, num_vectors)
        self._original_tokenizer = self._original_tokenizer or copy.deepcopy(self.tokenizer)
        rows = self._add_rows(self.tokenizer, self.encoder, names, initializer, option)
        self.token_map[trigger] = token
        return names, [rows]

    @staticmethod
    def _new_token_names(tok, trigger: str, num_vectors: int) -> tuple[str, list[str]]:
        """``trigger`` and its multi-vector names, or ``<trigger>``'s where the tokenizer has ``trigger``."""
        vocab = tok.get_vocab()
        for token in (trigger, f"<{trigger}>"):
            names = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
            if not any(n in vocab for n in names):
                return token, names  # add_tokens would return 0 for a token the tokenizer has
        raise CatAdapterError(f"--trigger {trigger}: the tokenizer already has '{trigger}' and '<{trigger}>'; "
                              "choose another trigger for --method ti")

    def _add_rows(self, tok, encoder, names: list[str], initializer: str, option: str) -> torch.nn.Parameter:
        """``names`` added to ``tok`` and as new rows of ``encoder``'s embedding, each the mean embedding of
        ``initializer``'s tokens."""
        num_vectors = len(names)
        base_tokens = tok(initializer, add_special_tokens=False).input_ids
        if not base_tokens:
            raise CatAdapterError(f"{option} {initializer!r}: encodes to no token; give a word such as the class noun")
        if tok.add_tokens(names) != num_vectors:
            raise CatAdapterError(f"--trigger {names[0]}: the tokenizer did not add {names} as new tokens")
        ids = tok.convert_tokens_to_ids(names)
        emb = encoder.get_input_embeddings()
        if isinstance(emb, ExtendedEmbedding):
            raise CatAdapterError("tokens were already added to this text encoder")
        if ids != list(range(emb.num_embeddings, emb.num_embeddings + num_vectors)):
            raise CatAdapterError(f"--trigger {names[0]}: the tokenizer's new ids {ids} do not follow the text "
                                  f"encoder's {emb.num_embeddings} rows; its vocabulary and embedding sizes differ")
        init = emb.weight.detach()[base_tokens].float().mean(0)
        ext = ExtendedEmbedding(emb, init.unsqueeze(0).repeat(num_vectors, 1))
        encoder.set_input_embeddings(ext)
        if tok is self.tokenizer:
            self.trainable_ids |= set(ids)
        return ext.new_rows

    @contextmanager
    def original_tokens(self) -> Iterator[None]:
        """Within the block prompts are read by the tokenizer as it was before tokens were added."""
        if self._original_tokenizer is None:
            yield
            return
        trained, saved_map = self.pipe.tokenizer, self.token_map
        self.pipe.tokenizer, self.token_map = self._original_tokenizer, {}
        try:
            yield
        finally:
            self.pipe.tokenizer, self.token_map = trained, saved_map


class SDModel:
    """A loaded SD 1.x/2.x pipeline with the calls the trainer, sampler and evaluation need."""

    family = "sd"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    target_examples = "to_q, to_out.0, proj_in, conv1"
    pipeline_class = "StableDiffusionPipeline"
    denoiser_name = "unet"                 # the pipeline's attribute, folder and LoRA key prefix
    denoiser_class = "UNet2DConditionModel"
    denoiser_label = "U-Net"               # in messages
    text_encoders = ("text_encoder",)
    text_class = SDText
    objective_class = DDPMObjective
    supports_text_encoder_lora = True
    supports_kohya_export = True
    supports_tokens = True
    has_guidance = False

    def __init__(self, pipe, spec: ModelSpec, resolved: str):
        self.pipe = pipe
        self.spec = spec
        self.resolved = resolved
        self.text = self.text_class(pipe)
        self.objective = self.objective_class(pipe.scheduler.config)
        self._graded = None   # the module graded passes run through (accelerate's wrapper), if set
        self._identity = None

    # ------------------------------------------------------------------------------------ identity
    @property
    def identity(self) -> dict:
        if self._identity is None:
            self._identity = {"family": self.family, **model_identity(self.spec, self.resolved)}
        return self._identity

    # ------------------------------------------------------------------------------------ components
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:
        setattr(self.pipe, self.denoiser_name, module)

    def frozen_components(self) -> list[torch.nn.Module]:
        return [self.denoiser, self.pipe.vae] + [getattr(self.pipe, n) for n in self.text_encoders]

    def to(self, device) -> "SDModel":
        self.pipe.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    def set_graded(self, module: torch.nn.Module | None) -> None:
        """Graded passes run through ``module`` (the denoiser as accelerate prepared it)."""
        self._graded = module

    @contextmanager
    def denoiser_swapped(self, module: torch.nn.Module) -> Iterator[None]:
        """Within the block the pipeline and ``predict`` use ``module`` (a full fine-tune's base model)."""
        current, graded = self.denoiser, self._graded
        self.denoiser, self._graded = module, None
        try:
            yield
        finally:
            self.denoiser, self._graded = current, graded

    @contextmanager
    def ungraded(self) -> Iterator[None]:
        """Within the block ``predict`` runs the plain module, not accelerate's wrapper (the frozen pass).

        Under DDP that is right: every rank holds the whole module, the frozen pass needs no gradient, and a
        forward through the DDP wrapper would only add its bookkeeping (buffer broadcast, the reducer's
        expectation of a backward for a graded forward). Gradients are still averaged across ranks: they come
        from the graded passes, which run through the wrapper."""
        graded, self._graded = self._graded, None
        try:
            yield
        finally:
            self._graded = graded

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond, *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor:
        """The denoiser's output for noisy latents z_t at steps t under ``cond``: (B, C, h, w). ``micro``: each
        row's image sizes and crop (``Noised.micro``; SD ignores them). ``lora_scale`` multiplies loaded LoRA
        layers, as ``--lora-scale`` does in sampling."""
        net = self._graded if self._graded is not None else self.pipe.unet
        kwargs = {"cross_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
        return net(z_t, t, encoder_hidden_states=cond.hidden, return_dict=False, **kwargs)[0]

    # ------------------------------------------------------------------------------------ latents
    @property
    def latent_scale(self) -> tuple[float, float]:
        """(scaling_factor, shift_factor): z = (z_vae - shift) * scale."""
        cfg = self.pipe.vae.config
        return float(cfg.scaling_factor), float(getattr(cfg, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, *, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(z|x) for (N, 3, H, W) images in [-1, 1]: two (N, C, h, w) float32 CPU tensors."""
        vae = self.pipe.vae
        dtype = next(vae.parameters()).dtype
        means, stds = [], []
        for i in range(0, len(pixels), chunk):
            dist = vae.encode(pixels[i:i + chunk].to(vae.device, dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        return self.pipe.unet.config.in_channels, height // f, width // f

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the U-Net's downsampling (64 for SD)."""
        return int(self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1))

    @property
    def default_resolution(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    def conditioning(self) -> dict:
        """Prompt-encoding settings a run records in adapter.json and ``configure`` restores (none for SD)."""
        return {}

    def configure(self, **settings) -> None:
        """The family's own options (Flux: --guidance, --max-sequence-length); SD and SDXL have none."""
        given = {k: v for k, v in settings.items() if v is not None}
        if given:
            raise CatAdapterError(f"--{next(iter(given)).replace('_', '-')} is a Flux option; this is a "
                                  f"{self.family} model")

    # ------------------------------------------------------------------------------------ sampling
    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Initial latents (B, C, h, w) in the layout the pipeline's ``latents`` argument takes."""
        return latents

    def pipeline_kwargs(self, lora_scale: float | None) -> dict:
        return {"cross_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}

    # ------------------------------------------------------------------------------------ LoRA files
    def check_lora_targets(self, targets: list[str]) -> None:
        names = [n for n, _ in self.denoiser.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise CatAdapterError(f"--target-modules: no {self.denoiser_label} module named {', '.join(missing)} "
                                  f"(names end a module path, e.g. {self.target_examples})")

    def save_lora(self, out_dir: Path, state_dict: dict[str, torch.Tensor], metadata: dict,
                  text_encoder_state: dict[str, torch.Tensor] | None = None, text_encoder_metadata: dict | None = None
                  ) -> Path:
        """``out_dir/pytorch_lora_weights.safetensors`` that ``pipe.load_lora_weights(out_dir)`` loads, written by the
        family's pipeline class (``save_lora_weights``) with the adapter metadata.

        Keys stay in peft's naming (``unet.<module>.lora_A.weight``), which diffusers loads as is. Not
        ``convert_state_dict_to_diffusers``: it renames attention keys only, and a file that mixes both
        styles (LoRA on attention and conv layers) is loaded by diffusers with the attention part dropped.
        The adapter metadata (rank, lora_alpha, targets) is stored in the file: without it diffusers
        silently uses scale 1.0 when ``lora_alpha != rank``.
        """
        import diffusers

        from cat_adapter.io import atomic_path

        name = self.denoiser_name
        kwargs = {f"{name}_lora_layers": state_dict, f"{name}_lora_adapter_metadata": metadata}
        if text_encoder_state:
            kwargs.update(text_encoder_lora_layers=text_encoder_state,
                          text_encoder_lora_adapter_metadata=text_encoder_metadata)
        target = Path(out_dir) / LORA_WEIGHT_NAME
        with atomic_path(target) as tmp:
            getattr(diffusers, self.pipeline_class).save_lora_weights(tmp.parent, weight_name=tmp.name,
                                                                      safe_serialization=True, **kwargs)
        return target

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

    def load_lora(self, file: Path, *, adapter_name: str, option: str = "--adapter") -> None:
        try:
            if is_lokr_file(file):  # diffusers' load_lora_weights takes LoRA keys only; the denoiser's loader takes LoKr
                self.denoiser.load_lora_adapter(str(file.parent), weight_name=file.name, prefix=self.denoiser_name,
                                                adapter_name=adapter_name)  # folder + name: metadata (alpha) is read
                return
            self.pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter_name)
        except Exception as exc:  # diffusers raises ValueError/KeyError/RuntimeError for incompatible files
            raise CatAdapterError(f"{option} {file}: cannot load LoRA into this {self.family} model "
                                  f"({first_line(exc)})") from None

    # ------------------------------------------------------------------------------------ full weights
    def save_denoiser(self, folder: Path, dtype: torch.dtype) -> Path:
        """``folder`` as the denoiser class's ``from_pretrained`` reads it (safetensors)."""
        from cat_adapter.io import atomic_dir

        with atomic_dir(folder) as tmp:
            self.denoiser.save_pretrained(tmp, safe_serialization=True)
            if dtype != torch.float32:  # rewrite the weights in the saved dtype, config unchanged
                from safetensors.torch import load_file, save_file

                for f in tmp.glob("*.safetensors"):
                    save_file({k: v.to(dtype) for k, v in load_file(str(f)).items()}, str(f), metadata={"format": "pt"})
        return folder

    def load_denoiser(self, folder: Path, *, option: str = "--adapter") -> torch.nn.Module:
        import diffusers

        current = self.denoiser
        try:
            net = getattr(diffusers, self.denoiser_class).from_pretrained(str(folder), use_safetensors=True,
                                                                         **dtype_kwarg(current.dtype))
        except Exception as exc:
            raise CatAdapterError(f"{option} {folder}: cannot load the {self.denoiser_label} "
                                  f"({first_line(exc)})") from None
        return net.to(current.device).eval().requires_grad_(False)


def _load(spec: ModelSpec, resolved: str, dtype: torch.dtype) -> SDModel:
    pipe = load_pipeline(resolved, dtype=dtype, revision=spec.revision, variant=spec.variant,
                         single_file_config=spec.single_file_config, allow_pickle=spec.allow_pickle, option=spec.option)
    return SDModel(pipe, spec, resolved)


register_family(Family("sd", ("StableDiffusionPipeline",), _load))
