"""The model-family contract (``ModelFamily``), conditioning objects, the family registry, model identity.

A family (``sd``, ``sdxl``, ``flux``) is a module with one class that implements ``ModelFamily`` and a ``Family``
registration naming the pipeline classes it loads. ``load_model`` returns that object: it owns how the denoiser is
called (``predict(z_t, t, cond)``), the text side (tokenizers, encoders, added tokens, which prompts can be cached),
the training objective (epsilon, v or flow, configured by the run's options) and the LoRA file. A family says what
it supports (``supports(feature)``, features from ``FEATURES``) instead of inheriting a method and refusing it.
Nothing outside ``models/`` names a U-Net or a transformer. Adding a family: docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from cat_adapter.errors import CatAdapterError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


# ------------------------------------------------------------------------------------------ conditioning
def cast_floating(t: torch.Tensor, device, dtype) -> torch.Tensor:
    """Move ``t``; only floating-point tensors take ``dtype`` (ids and sizes stay integer)."""
    return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)


@dataclass
class Cond:
    """Text conditioning of a batch of rows: hidden states, and the pooled embedding where the family has one."""

    hidden: torch.Tensor                               # (N, L, D) encoder hidden states
    pooled: torch.Tensor | None = None                 # (N, P) pooled embedding (SDXL, Flux)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row extras, first dim N

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def to(self, device, dtype: torch.dtype | None = None) -> "Cond":
        return Cond(cast_floating(self.hidden, device, dtype), None if self.pooled is None else cast_floating(self.pooled, device, dtype),
                    {k: cast_floating(v, device, dtype) for k, v in self.extra.items()})

    def __getitem__(self, idx) -> "Cond":
        return Cond(self.hidden[idx], None if self.pooled is None else self.pooled[idx],
                    {k: v[idx] for k, v in self.extra.items()})

    def repeat(self, n: int) -> "Cond":
        """The rows n times over: [c; c; ...] (as ``Tensor.repeat`` on the batch dimension)."""
        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.repeat(n, *([1] * (t.dim() - 1)))
        return Cond(rep(self.hidden), None if self.pooled is None else rep(self.pooled),
                    {k: rep(v) for k, v in self.extra.items()})

    def expand_row(self, i: int, n: int) -> "Cond":
        """Row i broadcast to n rows (a pool prompt over every latent of a batch)."""
        def ex(t: torch.Tensor) -> torch.Tensor:
            return t[i].unsqueeze(0).expand(n, *t.shape[1:])
        return Cond(ex(self.hidden), None if self.pooled is None else ex(self.pooled),
                    {k: ex(v) for k, v in self.extra.items()})

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        return Cond(torch.cat([c.hidden for c in conds]), pooled,
                    {k: torch.cat([c.extra[k] for c in conds]) for k in conds[0].extra})


@dataclass
class TokenIds:
    """Prompts kept as token ids because they hold a trainable token: encoded in the step, with gradients."""

    ids: torch.Tensor                                   # (N, L) long
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device, dtype: torch.dtype | None = None) -> "TokenIds":
        return TokenIds(self.ids.to(device), {k: cast_floating(v, device, dtype) for k, v in self.extra.items()})

    def __getitem__(self, idx) -> "TokenIds":
        return TokenIds(self.ids[idx], {k: v[idx] for k, v in self.extra.items()})


# ------------------------------------------------------------------------------------------ the contract
# What a family may support beyond the contract: LoRA on its (first) text encoder, sd-scripts' LoRA file, new
# token embeddings (Textual Inversion). A method part asks ``supports`` before it trains.
FEATURES = ("text_encoder_lora", "kohya_export", "tokens")


@runtime_checkable
class ModelFamily(Protocol):
    """What the trainer, the methods, sampling and evaluation use of a loaded model (``models/pipeline.py`` holds
    the plumbing a diffusers-pipeline family shares; ``tests/test_families.py`` runs every family through it)."""

    family: str                       # the registry name, recorded in adapter.json
    denoiser_name: str                # the pipeline's attribute and sub-folder of the denoiser
    pipe: Any                         # the diffusers pipeline (sampling, LoRA loading)
    text: Any                         # the text side: encode, encode_ids, token_ids, cacheable, rewrite, tokenize
    objective: Any                    # diffusion.DDPMObjective or FlowMatchObjective
    lora_targets: tuple[str, ...]     # default --target-modules

    def supports(self, feature: str) -> bool: ...
    @property
    def identity(self) -> dict: ...
    @property
    def denoiser(self) -> torch.nn.Module: ...
    def frozen_components(self) -> list[torch.nn.Module]: ...
    def to(self, device) -> "ModelFamily": ...
    @property
    def device(self) -> torch.device: ...
    def set_graded(self, module: torch.nn.Module | None) -> None: ...
    def ungraded(self) -> AbstractContextManager: ...
    def denoiser_swapped(self, module: torch.nn.Module) -> AbstractContextManager: ...
    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: "Cond", *, micro: torch.Tensor | None = None,
                lora_scale: float | None = None) -> torch.Tensor: ...
    def encode_images(self, pixels: torch.Tensor, *, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]: ...
    @property
    def latent_scale(self) -> tuple[float, float]: ...
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]: ...
    @classmethod
    def text_shape(cls, configs: dict[str, dict], max_sequence_length: int | None = None) -> tuple: ...
    @property
    def size_multiple(self) -> int: ...
    @property
    def default_resolution(self) -> int: ...
    @property
    def default_guidance(self) -> float: ...
    def conditioning(self) -> dict: ...
    def configure(self, **settings) -> None: ...
    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor: ...
    def pipeline_kwargs(self, lora_scale: float | None) -> dict: ...
    def check_lora_targets(self, targets: list[str]) -> None: ...
    def save_lora(self, out_dir: Path, state_dict: dict, metadata: dict, text_encoder_state: dict | None = None,
                  text_encoder_metadata: dict | None = None) -> Path: ...
    def load_lora(self, file: Path, *, adapter_name: str, option: str = "--adapter") -> None: ...
    def save_denoiser(self, folder: Path, dtype: torch.dtype) -> Path: ...
    def load_denoiser(self, folder: Path, *, option: str = "--adapter") -> torch.nn.Module: ...
    # with "kohya_export": save_lora_kohya(path, state_dict, *, alpha, rank) -> Path


# ------------------------------------------------------------------------------------------ model spec
@dataclass(frozen=True)
class ModelSpec:
    """Where the base model comes from (the --model options)."""

    model: str
    revision: str | None = None
    variant: str | None = None
    single_file_config: str | None = None
    allow_pickle: bool = False
    option: str = "--model"
    quantize: str = "none"                 # --quantize-base: the denoiser's linear layers (models/quantize.py)
    quantize_text_encoders: bool = False   # --quantize-text-encoders: the family's large text encoders too


def is_hub_id(spec: str) -> bool:
    """``org/name`` that is not a local path."""
    parts = spec.split("/")
    return (len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))
            and not Path(spec).exists() and Path(spec).suffix.lower() not in SINGLE_FILE_SUFFIXES)


def _file_digest(path: Path, h) -> None:
    """Size plus the first and last MiB: a content fingerprint that is cheap on multi-GB weights."""
    size = path.stat().st_size
    h.update(f"{size}:".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read(1 << 20))


def model_identity(spec: ModelSpec, resolved: str) -> dict:
    """How adapter.json and class-image manifests name a base model: hub id + revision, or a content hash.

    ``fingerprint`` covers every file of a local folder (or the single file) by relative path, size and
    the first and last MiB of its bytes: a copy of the folder has the same fingerprint, a retrained
    model does not.
    """
    from cat_adapter.plugins import is_alias

    path = Path(resolved).expanduser()
    ident: dict = {"model": spec.model}
    if is_alias(spec.model, "pipeline"):
        ident["alias"] = spec.model.strip().lower()
    if path.exists():
        h = hashlib.sha256()
        if path.is_dir():  # hidden files (caches, editor files) are not part of the model
            files = sorted((str(p.relative_to(path)), p) for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            files = [(path.name, path)]
        for name, p in files:
            h.update(name.encode())
            _file_digest(p, h)
        ident["fingerprint"] = h.hexdigest()[:32]
    else:
        ident["revision"] = spec.revision or "main"
    if spec.variant:
        ident["variant"] = spec.variant
    return ident


def same_model(a: dict, b: dict) -> bool:
    """Two identities name the same weights: equal fingerprints, or equal hub id and revision."""
    if a.get("fingerprint") and b.get("fingerprint"):
        return a["fingerprint"] == b["fingerprint"]
    return (a.get("model"), a.get("revision"), a.get("variant")) == (b.get("model"), b.get("revision"), b.get("variant"))


# ------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Family:
    name: str
    pipeline_classes: tuple[str, ...]        # model_index.json _class_name values this family loads
    load: Callable                          # (spec, resolved path, dtype) -> a ModelFamily
    denoiser_folder: str = "unet"           # the pipeline's sub-folder of the denoiser (another tool's full fine-tune)
    model_class: type | None = None         # the ModelFamily class ``load`` returns (``cat-adapter memory`` builds it)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family (``cat_adapter/models/__init__.py`` imports the built-in modules, which register)."""
    return dict(_FAMILIES)


def denoiser_folders() -> tuple[str, ...]:
    """The denoiser sub-folders of every family's pipeline (``unet``, ``transformer``), in registration order."""
    return tuple(dict.fromkeys(f.denoiser_folder for f in _FAMILIES.values()))


def family_of(resolved: str, option: str) -> Family:
    """The family of a local pipeline folder (by model_index.json), of a single-file checkpoint (by its keys) or of a
    hub id (by its model_index.json, read from the hub; SD when it cannot be read)."""
    fams = families()
    path = Path(resolved).expanduser()
    name = None
    if path.is_dir() and (path / "model_index.json").is_file():
        try:
            name = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CatAdapterError(f"{option} {resolved}: model_index.json is not valid JSON") from None
    elif path.is_file() and path.suffix.lower() == ".safetensors":
        return fams[_single_file_family(path)]
    elif is_hub_id(resolved):
        name = _hub_pipeline_class(resolved)
        if name is None:
            return fams["sd"]
    else:
        return fams["sd"]
    for fam in fams.values():
        if name in fam.pipeline_classes:
            return fam
    known = ", ".join(c for f in fams.values() for c in f.pipeline_classes)
    raise CatAdapterError(f"{option} {resolved}: a {name} pipeline; this version trains {known} models")


def _single_file_family(path: Path) -> str:
    """SDXL when the checkpoint holds SGM's second text embedder (``conditioner.embedders.1``), else SD."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if any(k.startswith("conditioner.embedders.1.") for k in f.keys()):
                return "sdxl"
    except Exception:
        pass  # the loader reports an unreadable file
    return "sd"


def _hub_pipeline_class(model_id: str) -> str | None:
    try:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(model_id).get("_class_name")
    except Exception:  # offline or gated: the SD loader gives the error
        return None


def load_model(spec: ModelSpec, *, dtype: torch.dtype = torch.float32):
    """The model object of ``spec`` (aliases such as ``toy`` resolved), its weights in ``dtype``."""
    from cat_adapter.plugins import resolve_alias

    from cat_adapter import shared

    resolved = resolve_alias(spec.model, "pipeline", spec.option)
    family = family_of(resolved, spec.option)

    def load():
        model = family.load(spec, resolved, dtype)
        model.identity  # noqa: B018  (computed once, before copies are made)
        return model

    # In a harness (shared.shared_objects) the weights are read once per process; each caller gets a copy.
    return shared.get(("model", spec, resolved, str(dtype)), load, mutable=True)


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
