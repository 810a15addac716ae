"""Self-describing adapters: ``OUT/adapter.json``, and one loader for ours and other tools' files.

``adapter.json`` names the adapter's kinds (lora / full / tokens), model family, base model (hub id
and revision, or a content fingerprint of a local folder), files, tokens, concepts (trigger, class
noun, y rule) and a format version. ``load_adapter(path)`` reads it, or recognises a file made by
another tool (a diffusers LoRA folder or ``.safetensors``, a kohya LoRA file, a diffusers
``learned_embeds.safetensors``, a full fine-tune's denoiser folder); ``Adapter.apply(model, scale)`` loads it into a
model through plain diffusers calls, and ``Adapter.base(model)`` gives back the true base model for
every kind (a full fine-tune's base is the original U-Net, not "LoRA off").
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cat_adapter.errors import CatAdapterError

log = logging.getLogger(__name__)
ADAPTER_JSON = "adapter.json"
FORMAT_VERSION = 1
LORA_NAME = "pytorch_lora_weights.safetensors"
EMBEDS_NAME = "learned_embeds.safetensors"
ADAPTER_LOADED_NAME = "cat_adapter"


def tuner_layers(module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def layers_disabled(layers: list) -> Iterator[None]:
    """Switch LoRA layers off by their flag alone.

    Not diffusers' ``disable_adapters()``: peft's toggle sets ``requires_grad`` (off, then back on for
    every LoRA weight, including weights frozen on purpose) and walks every module (16 ms per
    toggle pair on the benchmark U-Net, 11% of a LoRA step); the flag flip changes nothing else.
    """
    previous = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, p in zip(layers, previous):
            m._disable_adapters = p


def write_adapter_json(out_dir: Path, *, method: str, model, exported: list, concepts: list[dict]) -> Path:
    """``out_dir/adapter.json`` for the parts a training run exported (atomically)."""
    import cat_adapter
    from cat_adapter.io import write_json_atomic

    files: dict[str, str] = {}
    tokens: dict[str, str] = {}
    details: dict[str, dict] = {}
    for e in exported:
        files.update(e.files)
        tokens.update(e.info.get("tokens", {}))
        details[e.kind] = {k: v for k, v in e.info.items() if k != "tokens"}
    record = {"format_version": FORMAT_VERSION, "kinds": [e.kind for e in exported], "family": model.family,
              "base_model": {k: v for k, v in model.identity.items() if k != "family"}, "method": method,
              "files": files, "tokens": tokens, "concepts": concepts, "details": details,
              "conditioning": model.conditioning(), "base_quantization": getattr(model, "quantization", None),
              "package_version": cat_adapter.__version__}
    path = Path(out_dir) / ADAPTER_JSON
    write_json_atomic(path, record)
    return path


@dataclass
class Adapter:
    path: Path                                  # the folder (or file) given
    kinds: list[str]
    files: dict[str, Path]                      # role -> absolute path
    recognised: str                             # what was found, in words
    family: str | None = None
    base_model: dict | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    concepts: list[dict] = field(default_factory=list)
    method: str | None = None
    conditioning: dict = field(default_factory=dict)   # how the run encoded prompts (Flux: max_sequence_length)
    scale: float = 1.0
    _original_denoiser: object = None

    @property
    def changes_trigger_free(self) -> bool:
        """A prompt without the trigger gives other images than the base model only if weights changed."""
        return any(k != "tokens" for k in self.kinds)

    @property
    def lora_scale(self) -> float | None:
        return self.scale if "lora" in self.kinds else None

    def check_model(self, model, option: str = "--adapter") -> None:
        """Another family is an error; another base model is a warning that names both."""
        from cat_adapter.models.base import same_model

        if self.family and self.family != model.family:
            raise CatAdapterError(f"{option} {self.path}: made for the {self.family} family, but --model is a "
                                  f"{model.family} model")
        if self.base_model and not same_model(self.base_model, model.identity):
            log.warning("%s %s was trained on %s, not on --model %s; loading it anyway", option, self.path,
                        _describe(self.base_model), _describe(model.identity))

    def apply(self, model, scale: float = 1.0, *, option: str = "--adapter") -> "Adapter":
        """Load every kind into ``model`` as a user of plain diffusers would."""
        self.check_model(model, option)
        self.scale = float(scale)
        if self.conditioning:
            model.configure(**self.conditioning)   # prompts encoded as in training
        if "full" in self.kinds:
            self._original_denoiser = model.denoiser
            model.denoiser = model.load_denoiser(self.files["denoiser"], option=option)
        if "lora" in self.kinds:
            model.load_lora(self.files["lora"], adapter_name=ADAPTER_LOADED_NAME, option=option)
        if "tokens" in self.kinds:
            if not model.supports("tokens"):
                raise CatAdapterError(f"{option} {self.path}: token embeddings (Textual Inversion) do not apply to a "
                                      f"{model.family} model (it trains no tokens)")
            model.text.load_embeddings(self.files["embeddings"], self.tokens, option=option)
        return self

    @contextmanager
    def base(self, model) -> Iterator[None]:
        """Within the block ``model`` is the base model again: LoRA layers off, the original denoiser, the
        tokenizer without the added tokens."""
        with ExitStack() as stack:
            if "lora" in self.kinds:
                stack.enter_context(layers_disabled(tuner_layers(model.denoiser) + tuner_layers(model.text.encoder)))
            if "full" in self.kinds:
                stack.enter_context(model.denoiser_swapped(self._original_denoiser))
            if "tokens" in self.kinds:
                stack.enter_context(model.text.original_tokens())
            yield


def _describe(identity: dict) -> str:
    fp = identity.get("fingerprint")
    return f"{identity.get('model')}" + (f" (fingerprint {fp[:12]})" if fp else f" (revision {identity.get('revision')})")


def load_adapter(path: str | Path, *, allow_pickle: bool = False, option: str = "--adapter") -> Adapter:
    """Read ``adapter.json``, or recognise another tool's adapter; a one-line error when nothing fits."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / ADAPTER_JSON).is_file():
        return _from_json(p, option)
    if p.is_dir():
        return _from_folder(p, allow_pickle, option)
    if p.is_file():
        return _from_file(p, allow_pickle, option)
    raise CatAdapterError(f"{option} {p}: no such folder or file")


def _from_json(folder: Path, option: str) -> Adapter:
    where = folder / ADAPTER_JSON
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CatAdapterError(f"{option} {where}: not valid JSON") from None
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise CatAdapterError(f"{option} {where}: format version {version!r}, this cat-adapter reads version "
                              f"{FORMAT_VERSION}; use the cat-adapter release that wrote it")
    files = {role: folder / name for role, name in (record.get("files") or {}).items()}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise CatAdapterError(f"{option} {where}: lists {missing[0]}, which is missing")
    return Adapter(folder, list(record["kinds"]), files, f"cat-adapter {'+'.join(record['kinds'])} adapter",
                   family=record.get("family"), base_model=record.get("base_model"), tokens=record.get("tokens") or {},
                   concepts=record.get("concepts") or [], method=record.get("method"),
                   conditioning=record.get("conditioning") or {})


def _from_folder(folder: Path, allow_pickle: bool, option: str) -> Adapter:
    """A folder another tool wrote: diffusers LoRA, learned embeddings, a U-Net folder, or one weight file."""
    kinds, files = [], {}
    from cat_adapter.models import denoiser_folders

    denoiser = next((folder / d for d in denoiser_folders() if (folder / d / "config.json").is_file()), None)
    if denoiser is not None:
        kinds.append("full")
        files["denoiser"] = denoiser
        if (folder / "model_index.json").is_file() and (folder / "text_encoder").is_dir():
            log.warning("%s %s is a whole pipeline; only its %s/ is loaded as the adapter (a fine-tuned "
                        "text_encoder/ there is not); pass it as --model to use all of it", option, folder,
                        denoiser.name)
    if (folder / LORA_NAME).is_file():
        kinds.append("lora")
        files["lora"] = folder / LORA_NAME
    elif allow_pickle and (folder / "pytorch_lora_weights.bin").is_file():
        kinds.append("lora")
        files["lora"] = folder / "pytorch_lora_weights.bin"
    if (folder / EMBEDS_NAME).is_file():
        kinds.append("tokens")
        files["embeddings"] = folder / EMBEDS_NAME
    if not kinds:
        found = sorted(folder.glob("*.safetensors"))
        if len(found) == 1:
            return _from_file(found[0], allow_pickle, option)
        raise CatAdapterError(f"{option} {folder}: nothing recognisable here (no {ADAPTER_JSON}, {LORA_NAME}, "
                              f"{EMBEDS_NAME} or a denoiser folder); give a cat-adapter output folder or an adapter file")
    return Adapter(folder, kinds, files, f"{'+'.join(kinds)} adapter without {ADAPTER_JSON}")


def _from_file(f: Path, allow_pickle: bool, option: str) -> Adapter:
    if f.suffix != ".safetensors":
        if not allow_pickle:
            raise CatAdapterError(f"{option} {f}: not a .safetensors file; pass --allow-pickle to load it")
        return Adapter(f, ["lora"], {"lora": f}, "LoRA file (pickle)")
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="pt") as sf:
            keys = list(sf.keys())
            shapes = {k: sf.get_slice(k).get_shape() for k in keys[:4]}
    except Exception:
        raise CatAdapterError(f"{option} {f}: not a readable safetensors file") from None
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return Adapter(f, ["lora"], {"lora": f}, "kohya LoRA file")
    if any(("lora_A" in k or "lora_B" in k or "lora.down" in k or "lora.up" in k or "lora_down" in k) for k in keys):
        return Adapter(f, ["lora"], {"lora": f}, "diffusers LoRA file")
    if 0 < len(keys) <= 2 and all(len(s) in (1, 2) for s in shapes.values()):
        sdxl = set(keys) == {"clip_l", "clip_g"}   # one token's rows for each SDXL encoder; the token is the stem
        tokens = {f.stem: f.stem} if sdxl else {k: k for k in keys}
        sibling = f.parent / ADAPTER_JSON
        if sibling.is_file():  # ours: its trigger -> token mapping (sks -> <sks>) and concept apply to the file too
            try:
                record = json.loads(sibling.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = {}
            if f.name in (record.get("files") or {}).values() and \
                    (sdxl or set((record.get("tokens") or {}).values()) <= set(keys)):
                return Adapter(f, ["tokens"], {"embeddings": f}, f"textual-inversion embeddings of {sibling}",
                               family=record.get("family"), base_model=record.get("base_model"),
                               tokens=record.get("tokens") or {}, concepts=record.get("concepts") or [],
                               method=record.get("method"))
        return Adapter(f, ["tokens"], {"embeddings": f}, f"{'SDXL ' if sdxl else ''}textual-inversion embeddings",
                       tokens=tokens, family="sdxl" if sdxl else None)
    raise CatAdapterError(f"{option} {f}: not a LoRA or embedding file this loader recognises (keys like "
                          f"{keys[:2]})")


def saved_run_config(adapter: str | Path) -> dict | None:
    """The resolved training config saved beside an adapter (``config.yaml``), if any."""
    from cat_adapter.io import read_yaml

    p = Path(adapter)
    folder = p if p.is_dir() else p.parent
    # beside the adapter, one level up (OUT/step-N, OUT/ema), two levels up for a checkpoint (OUT/checkpoints/step-N)
    candidates = [folder / "config.yaml", folder.parent / "config.yaml"]
    if folder.parent.name == "checkpoints":
        candidates.append(folder.parent.parent / "config.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return read_yaml(candidate, f"--adapter {adapter}: {candidate.name}")
    return None
