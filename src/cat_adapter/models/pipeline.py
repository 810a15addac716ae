"""What every family built on a diffusers pipeline shares: loading, freezing, and ``PipelineFamily``, the plumbing of
the model protocol (``base.ModelFamily``) that does not depend on the architecture.

``load_pipeline`` reads a hub id, a local diffusers folder or a single-file checkpoint (the user's real models and
the tiny models the tests build from config take the same path). Weights are read with safetensors unless
``allow_pickle`` is set (then diffusers reads ``.bin`` / ``.ckpt`` files with ``torch.load(weights_only=True)``);
no remote code is ever trusted.

``PipelineFamily`` is not a family: it predicts nothing and has no text side or objective. A family (sd.py,
sdxl.py, flux.py) is a sibling subclass that adds those, says which features it supports (``features``) and
never refuses what it inherits.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import SINGLE_FILE_SUFFIXES, ModelSpec, first_line, is_hub_id, model_identity

log = logging.getLogger(__name__)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


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
                  components: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
                  pipeline_kwargs: dict | None = None, quantization_config=None):
    """Load a ``pipeline_class`` (``StableDiffusionPipeline``: SD 1.x / 2.x, without safety checker) in ``dtype``.

    ``model`` is a local diffusers folder (``model_index.json`` inside), a single-file checkpoint
    (``.safetensors``; ``.ckpt`` only with ``allow_pickle``), a hub id, or an alias such as ``toy``.
    ``components``: the sub-folders a local pipeline folder must hold. ``quantization_config``: diffusers'
    ``PipelineQuantizationConfig`` (``models/quantize.py``), applied while the weights are read.
    """
    import diffusers

    from cat_adapter.plugins import resolve_alias

    pipeline_cls = getattr(diffusers, pipeline_class)
    model = resolve_alias(model, "pipeline", option)
    if pipeline_kwargs is None:
        pipeline_kwargs = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    common = dict(**dtype_kwarg(dtype), **pipeline_kwargs)
    if quantization_config is not None:
        common["quantization_config"] = quantization_config
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
        if quantization_config is not None:
            raise CatAdapterError(f"{option} {model}: --quantize-base needs a diffusers folder or a hub id; convert "
                                  "the single-file checkpoint once (load it and save_pretrained) and pass that folder")
        if path.suffix.lower() != ".safetensors" and not allow_pickle:
            raise CatAdapterError(f"{option} {model}: not a .safetensors file; pickled checkpoints can run code, "
                                  "pass --allow-pickle to load it with weights_only=True")
        kwargs = dict(common)
        if single_file_config:
            kwargs["config"] = single_file_config
        try:
            pipe = pipeline_cls.from_single_file(str(path), **kwargs)
        except Exception as exc:  # diffusers raises many types here; all mean "cannot convert this file"
            hint = (f"is it a whole {pipeline_class} checkpoint of the architecture of --single-file-config "
                    f"{single_file_config}?" if single_file_config else
                    "offline, pass --single-file-config with a diffusers folder of the same architecture")
            raise CatAdapterError(f"{option} {model}: cannot load single-file checkpoint ({first_line(exc)}); "
                                  f"{hint}") from None
    elif is_hub_id(model):
        try:
            pipe = pipeline_cls.from_pretrained(
                model, revision=revision, variant=variant, use_safetensors=None if allow_pickle else True, **common)
        except Exception as exc:  # network errors, missing repos, gated repos
            raise CatAdapterError(f"{option} {model}: cannot load from the hub ({first_line(exc, 1000)}); check the "
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


class UNetLayout:
    """The latent geometry of a U-Net family (SD, SDXL), a helper such families hold beside ``PipelineFamily``."""

    pipe: Any

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


class DiTLayout:
    """What the transformer families (Flux, SD3, Z-Image, Chroma) share: latents with the VAE's channels at its
    scale factor, and the pipeline's prompt length and LoRA scale as their pipelines take them."""

    pipe: Any
    text: Any

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        return int(self.pipe.vae.config.latent_channels), height // f, width // f

    def pipeline_kwargs(self, lora_scale: float | None) -> dict:
        kwargs = {"max_sequence_length": self.text.max_sequence_length}
        if lora_scale is not None:
            kwargs["joint_attention_kwargs"] = {"scale": lora_scale}
        return kwargs


class PipelineFamily:
    """The plumbing of ``ModelFamily`` for a diffusers pipeline: identity, placement, graded passes, VAE encoding, the
    LoRA file through the family's pipeline class, the full denoiser's folder.

    A family sets the class attributes below and adds ``text_class``, ``objective_class``, ``predict`` and
    whatever differs in its architecture (packing, added conditioning, its own options).
    """

    family: str
    pipeline_class: str                   # diffusers class name (model_index.json's _class_name)
    denoiser_name: str                    # the pipeline's attribute, sub-folder and LoRA key prefix
    denoiser_class: str                   # the diffusers class of the denoiser
    denoiser_label: str                   # how messages name it
    text_encoders: tuple[str, ...]        # the pipeline's text-encoder attributes
    large_text_encoders: tuple[str, ...] = ()   # those --quantize-text-encoders quantizes (T5, LLM encoders)
    lora_targets: tuple[str, ...]         # default --target-modules
    target_examples: str                  # module names shown in the --target-modules error
    features: frozenset[str] = frozenset()   # of base.FEATURES
    text_class: type
    objective_class: type

    def __init__(self, pipe, spec: ModelSpec, resolved: str):
        self.pipe = pipe
        self.spec = spec
        self.resolved = resolved
        self.text = self.text_class(pipe)
        self.objective = self.objective_class(pipe.scheduler.config)
        self._graded = None   # the module graded passes run through (accelerate's wrapper), if set
        self._identity = None
        self._offloaded: dict[str, torch.device] = {}   # component -> where it was before ``offload``

    def supports(self, feature: str) -> bool:
        return feature in self.features

    @classmethod
    def load_kwargs(cls, spec: ModelSpec, dtype: torch.dtype) -> dict:
        """``load_pipeline``'s keyword arguments for ``spec``: where the pipeline comes from, and the quantization of
        the denoiser (and the large text encoders) that --quantize-base asks for."""
        from cat_adapter.models.quantize import pipeline_config

        cls.check_quantization(spec.quantize, spec.quantize_text_encoders)
        quant = pipeline_config(spec.quantize, denoiser=cls.denoiser_name, compute_dtype=dtype,
                                text_encoders=cls.large_text_encoders if spec.quantize_text_encoders else ())
        return dict(dtype=dtype, revision=spec.revision, variant=spec.variant, single_file_config=spec.single_file_config,
                    allow_pickle=spec.allow_pickle, option=spec.option, pipeline_class=cls.pipeline_class,
                    quantization_config=quant)

    @classmethod
    def check_quantization(cls, mode: str, text_encoders: bool) -> None:
        """--quantize-text-encoders needs a mode and a family with a large text encoder."""
        if text_encoders and not cls.large_text_encoders:
            raise CatAdapterError(f"--quantize-text-encoders: the {cls.family} family has no large text encoder to "
                                  "quantize (its CLIP encoders are small); leave it out")
        if text_encoders and mode == "none":
            raise CatAdapterError("--quantize-text-encoders quantizes in the --quantize-base mode; give "
                                  "--quantize-base int8 (or fp8, nf4)")

    @property
    def quantization(self) -> dict:
        """How the base was loaded (adapter.json records it; the LoRA itself is a plain one)."""
        return {"denoiser": self.spec.quantize, "text_encoders": bool(self.spec.quantize_text_encoders)}

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
        return [self.denoiser, self.pipe.vae] + [getattr(self.pipe, n) for n in self.present_text_encoders]

    def to(self, device) -> "PipelineFamily":
        self.pipe.to(device)
        self._offloaded = {}
        return self

    @property
    def present_text_encoders(self) -> list[str]:
        """The text encoders this pipeline holds (SD3 may be saved without its T5)."""
        return [n for n in self.text_encoders if getattr(self.pipe, n, None) is not None]

    @property
    def device(self) -> torch.device:
        """Where the denoiser is (the pipeline's own guess looks at its first component, which may be offloaded)."""
        return next(self.denoiser.parameters()).device

    # ------------------------------------------------------------------------------------ offloading
    def idle_components(self) -> list[str]:
        """What a training step does not read once latents and prompt embeddings are cached: the VAE, and the text
        encoders unless prompts are encoded in the step (trainable tokens, a text-encoder LoRA)."""
        text = self.text
        encodes_in_step = bool(getattr(text, "encoder_trained", False) or getattr(text, "trainable_ids", None))
        return ["vae"] + ([] if encodes_in_step else list(self.present_text_encoders))

    def offload(self, names: list[str], to: str | torch.device = "cpu") -> list[str]:
        """Move the components ``names`` to ``to`` (the CPU) and remember where they were; the ones that were
        already there are left alone. Returns those moved."""
        moved = []
        for name in names:
            module = getattr(self.pipe, name)
            home = next(module.parameters()).device
            if home != torch.device(to):
                module.to(to)
                self._offloaded[name] = home
                moved.append(name)
        return moved

    @contextmanager
    def onloaded(self) -> Iterator[None]:
        """Within the block every offloaded component is back where it was (validation grids); after it, away again."""
        away = dict(self._offloaded)
        for name, home in away.items():
            getattr(self.pipe, name).to(home)
        try:
            yield
        finally:
            for name in away:
                getattr(self.pipe, name).to("cpu")

    def set_graded(self, module: torch.nn.Module | None) -> None:
        """Graded passes run through ``module`` (the denoiser as accelerate prepared it)."""
        self._graded = module

    def net(self) -> torch.nn.Module:
        """The module ``predict`` runs: accelerate's wrapper for graded passes, else the plain denoiser."""
        return self._graded if self._graded is not None else self.denoiser

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

    def conditioning(self) -> dict:
        """Prompt-encoding settings a run records in adapter.json and ``configure`` restores (none by default)."""
        return {}

    def configure(self, **settings) -> None:
        """The family's own options (Flux: --guidance, --max-sequence-length); none by default."""
        given = {k: v for k, v in settings.items() if v is not None}
        if given:
            name = next(iter(given))
            owners = {"guidance": "a Flux option", "max_sequence_length": "a Flux and SD3 option"}
            raise CatAdapterError(f"--{name.replace('_', '-')} is {owners.get(name, 'not an option of this family')}; "
                                  f"this is a {self.family} model")

    # ------------------------------------------------------------------------------------ sampling
    @property
    def default_guidance(self) -> float:
        """The guidance scale the family's pipeline samples with when none is given (its ``__call__`` default)."""
        import inspect

        return float(inspect.signature(type(self.pipe).__call__).parameters["guidance_scale"].default)

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
