"""Loading Stable Diffusion pipelines and LoRA adapters from a hub id, a folder or a single file.

The same functions load the user's real models and the tiny models the tests build from config.
Weights are read with safetensors unless ``allow_pickle`` is set (then diffusers reads ``.bin`` /
``.ckpt`` files with ``torch.load(weights_only=True)``); no remote code is ever trusted.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cat_adapter.errors import CatAdapterError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def is_hub_id(spec: str) -> bool:
    """``org/name`` that is not a local path."""
    parts = spec.split("/")
    return (len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))
            and not Path(spec).exists() and Path(spec).suffix.lower() not in SINGLE_FILE_SUFFIXES)


def dtype_kwarg(dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` where diffusers has it (it deprecates
    ``torch_dtype`` with a FutureWarning), ``torch_dtype`` on older releases."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (diffusers with ``dtype``)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_pipeline(
    model: str,
    *,
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    variant: str | None = None,
    single_file_config: str | None = None,
    allow_pickle: bool = False,
    option: str = "--model",
):
    """Load a ``StableDiffusionPipeline`` (SD 1.x / 2.x) in ``dtype``, without safety checker.

    ``model`` is a local diffusers folder (``model_index.json`` inside), a single-file checkpoint
    (``.safetensors``; ``.ckpt`` only with ``allow_pickle``) or a hub id.
    """
    from diffusers import StableDiffusionPipeline

    from cat_adapter.toy.assets import resolve

    model = resolve(model, "pipeline", option)
    common = dict(**dtype_kwarg(dtype), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CatAdapterError(f"{option} {model}: not a diffusers pipeline folder (no model_index.json); "
                                  "give a StableDiffusionPipeline folder, a .safetensors file or a hub id")
        missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / c).is_dir()]
        if missing:
            raise CatAdapterError(f"{option} {model}: pipeline folder lacks {', '.join(missing)}/")
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path), variant=variant, use_safetensors=None if allow_pickle else True, **common)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise CatAdapterError(f"{option} {model}: cannot load pipeline ({_first_line(exc)})"
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
            pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
        except Exception as exc:  # diffusers raises many types here; all mean "cannot convert this file"
            raise CatAdapterError(
                f"{option} {model}: cannot load single-file checkpoint ({_first_line(exc)}); offline, pass "
                "--single-file-config with a diffusers folder of the same architecture") from None
    elif is_hub_id(model):
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                model, revision=revision, variant=variant, use_safetensors=None if allow_pickle else True, **common)
        except Exception as exc:  # network errors, missing repos, gated repos
            raise CatAdapterError(f"{option} {model}: cannot load from the hub ({_first_line(exc, 160)}); check the "
                                  "id, the network and HF_TOKEN, or pass a local diffusers folder") from None
    else:
        raise CatAdapterError(f"{option} {model}: no such folder or file (and not a hub id of the form org/name)")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def freeze(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.requires_grad_(False)
        m.eval()


def lora_weight_file(lora_dir: str | Path, *, allow_pickle: bool = False, option: str = "--lora") -> Path:
    """The LoRA weight file of an output folder (or the file itself), safetensors unless allowed."""
    p = Path(lora_dir)
    if p.is_file():
        if p.suffix != ".safetensors" and not allow_pickle:
            raise CatAdapterError(f"{option} {p}: not a .safetensors file; pass --allow-pickle to load it")
        return p
    if not p.is_dir():
        raise CatAdapterError(f"{option} {p}: no such folder or file")
    f = p / LORA_WEIGHT_NAME
    if f.is_file():
        return f
    found = sorted(p.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if allow_pickle and (p / "pytorch_lora_weights.bin").is_file():
        return p / "pytorch_lora_weights.bin"
    raise CatAdapterError(f"{option} {p}: no {LORA_WEIGHT_NAME} in this folder")


def load_lora(pipe, lora: str | Path, *, allow_pickle: bool = False, option: str = "--lora",
              adapter_name: str = "default_0") -> str:
    """Load a diffusers-format LoRA into ``pipe`` (plain ``load_lora_weights``); return the adapter name."""
    f = lora_weight_file(lora, allow_pickle=allow_pickle, option=option)
    try:
        pipe.load_lora_weights(str(f.parent), weight_name=f.name, adapter_name=adapter_name)
    except Exception as exc:  # diffusers raises ValueError/KeyError/RuntimeError for incompatible files
        raise CatAdapterError(f"{option} {f}: cannot load LoRA into this model ({_first_line(exc)})") from None
    return adapter_name


def saved_run_config(lora: str | Path) -> dict | None:
    """The resolved training config saved beside a LoRA (``config.yaml``), if any."""
    import yaml

    p = Path(lora)
    folder = p if p.is_dir() else p.parent
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text(encoding="utf-8"))
    return None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
