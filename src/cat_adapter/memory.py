"""``cat-adapter memory``: the peak accelerator memory of a training run, estimated from the model's configs without
reading (or allocating) a weight.

Every component is built from its config on PyTorch's ``meta`` device (shapes and dtypes, no storage), so parameter
counts are exact, and the training step itself (the method the trainer builds: LoRA, CAT fast or CAT lean, with
gradient checkpointing where asked) runs once on meta tensors of the run's shapes while a saved-tensor hook
(``torch.autograd.graph.saved_tensors_hooks``) counts the bytes autograd keeps alive, in allocation order and with
their lifetimes, so the peak of what a step holds is measured rather than guessed:

- weights: the denoiser's linear layers at 1 byte per weight (int8, fp8; plus a per-row scale) or 0.5625 (nf4:
  4 bits plus a float32 absmax per 64), everything else at the mixed-precision dtype; the text encoders and the
  VAE likewise (quantized with ``--quantize-text-encoders``);
- the adapter: float32 LoRA weights, their gradients and AdamW's two moments (16 bytes per trained parameter);
- activations: the peak of the storages autograd keeps alive during the step (each storage once, however many ops
  save it; the weights a linear layer saves are not new memory), with attention counted as PyTorch's fused kernels
  keep it on a GPU (query, key, value, output and a log-sum-exp; not the L x L matrix the meta device's reference
  kernel would save); with gradient checkpointing, the checkpointed blocks' inputs plus the largest block's own
  activations (recomputed in backward);
- transients: backward's gradients in flight (twice the largest saved tensor), the dequantized copy of the largest
  quantized weight, and ``WORKSPACE_MIB`` (cuBLAS's workspace and the allocator's rounding), the measured minus
  the counted peak on the GPU cells we have (``benchmarks/memory_estimate.py`` fits it on
  ``benchmarks/results/cat_cost-cuda.json``, where the measured peak grows 0.95x as fast as the counted one);
- headroom: ``CONTEXT_GIB`` for the CUDA context, added before a GPU size is called big enough.

Start-up (latents and prompt embeddings are cached with every component on the accelerator) and training (the VAE
and the text encoders off it, ``--offload-frozen``, the default) are estimated separately; the run's peak is the
larger (validation grids bring the offloaded components back beside the adapter and optimizer: about the start-up
figure). Known limits: AdamW is assumed (16 bytes per trained parameter), and the fit is on one small U-Net in
float32 until real-size GPU cells are measured (``benchmarks/gpu_scale.py``).
"""

from __future__ import annotations

import contextlib
import json
import types
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.options import opt

GIB = 2 ** 30
# the measured peak above the model minus what the estimate counts, on the GPU cells we have (benchmarks/
# memory_estimate.py fits it: cuBLAS's workspace and the allocator's rounding)
WORKSPACE_MIB = 65.0
CONTEXT_GIB = 1.0
GPU_SIZES_GIB = (8, 12, 16, 24, 32, 48, 80)
VARIANTS = {"lora": dict(method="lora"), "cat_fast": dict(method="cat", cat_mode="fast"),
            "cat_lean": dict(method="cat", cat_mode="lean")}
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BYTES_PER_WEIGHT = {"int8": 1.0, "fp8": 1.0, "nf4": 0.5 + 4 / 64}   # per quantized linear weight
BUILTIN = Path(__file__).parent / "models" / "configs"


@dataclass
class MemoryOptions:
    """What ``cat-adapter memory`` takes."""
    model: str = opt(path="in", help="Base model: a local diffusers pipeline folder, a hub id (only its config files "
                     "are read), or a built-in config: sd15, sdxl, flux-dev (also by their hub ids), toy.")
    quantize_base: str = opt("none", "The frozen denoiser's linear layers as --quantize-base loads them.",
                             choices=("none", "int8", "fp8", "nf4"))
    quantize_text_encoders: bool = opt(False, "Also the large text encoders (as train's --quantize-text-encoders).")
    resolution: int | None = opt(None, "Training resolution (default: the model's native one).")
    batch_size: int = opt(1, "Images per micro-batch.")
    gradient_checkpointing: bool = opt(False, "Recompute the denoiser's activations in backward.")
    rank: int = opt(4, "LoRA rank (train's --rank).")
    mixed_precision: str = opt("bf16", "The frozen model's dtype (train's --mixed-precision; bf16 on a GPU is usual).",
                               choices=tuple(DTYPES))
    offload_frozen: bool = opt(True, "Text encoders and VAE leave the GPU once the caches are built (train's "
                               "--offload-frozen, on by default).")
    max_sequence_length: int | None = opt(None, "Flux and SD3: T5 prompt length (default: Flux 512, SD3 256).")
    json: bool = opt(False, "Print the estimate as JSON.")


# ------------------------------------------------------------------------------------------ configs
def builtin_names() -> dict[str, Path]:
    """Built-in config sets: their short names and hub ids -> file."""
    out = {}
    for f in sorted(BUILTIN.glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        for name in (f.stem, *data.get("hub_ids", ())):
            out[name] = f
    return out


def read_configs(model: str, option: str = "--model") -> tuple[dict, dict[str, dict]]:
    """(model_index, {component: config}) of ``model``: a built-in name, a local folder or a hub id."""
    from cat_adapter.models import is_hub_id
    from cat_adapter.plugins import resolve_alias

    known = builtin_names()
    if model in known:
        data = json.loads(known[model].read_text(encoding="utf-8"))
        return data["model_index"], data["components"]
    resolved = resolve_alias(model, "pipeline", option)
    path = Path(resolved).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CatAdapterError(f"{option} {model}: not a diffusers pipeline folder (no model_index.json)")
        index = _json(path / "model_index.json", option)
        comps = {}
        for name, value in index.items():
            if isinstance(value, list) and value[0] is not None:
                cfg = next((f for f in (path / name / "config.json", path / name / "scheduler_config.json")
                            if f.is_file()), None)
                if cfg is not None:
                    comps[name] = _json(cfg, option)
        return index, comps
    if is_hub_id(resolved):
        return _hub_configs(resolved, option)
    raise CatAdapterError(f"{option} {model}: no such folder, not a hub id and not a built-in config "
                          f"({', '.join(sorted(n for n in known if '/' not in n))})")


def _json(file: Path, option: str) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CatAdapterError(f"{option}: {file} is not valid JSON") from None


def _hub_configs(model_id: str, option: str) -> tuple[dict, dict[str, dict]]:
    import warnings

    try:
        from diffusers import DiffusionPipeline
        from huggingface_hub import hf_hub_download

        with warnings.catch_warnings():   # huggingface_hub's deprecation notes about diffusers' arguments
            warnings.simplefilter("ignore")
            index = DiffusionPipeline.load_config(model_id)
        comps = {}
        for name, value in index.items():
            if isinstance(value, list) and value[0] is not None and not name.startswith("tokenizer"):
                file = "scheduler_config.json" if name == "scheduler" else "config.json"
                comps[name] = json.loads(Path(hf_hub_download(model_id, f"{name}/{file}")).read_text(encoding="utf-8"))
        return dict(index), comps
    except Exception as exc:  # offline, gated, missing
        from cat_adapter.models.base import first_line

        raise CatAdapterError(f"{option} {model_id}: cannot read its configs from the hub ({first_line(exc)}); pass a "
                              "local pipeline folder or a built-in name (sd15, sdxl, flux-dev)") from None


# ------------------------------------------------------------------------------------------ counting
class _Live:
    """Bytes of the storages autograd holds (each once, however many ops saved it), now and at most."""

    def __init__(self):
        self.now = 0
        self.peak = 0
        self.largest = 0
        self.holders: dict[int, int] = {}   # storage -> how many saved tensors use it

    def hold(self, key: int, n: int) -> None:
        self.largest = max(self.largest, n)
        if self.holders.get(key, 0) == 0:
            self.now += n
            self.peak = max(self.peak, self.now)
        self.holders[key] = self.holders.get(key, 0) + 1

    def release(self, key: int, n: int) -> None:
        self.holders[key] -= 1
        if self.holders[key] == 0:
            del self.holders[key]
            self.now -= n


class _Held:
    """What backward needs of a saved meta tensor (shape, stride, dtype) and its storage, not the tensor itself: a
    packed tensor that is the output of the op saving it would keep its own graph alive (a cycle through autograd's
    C++ objects that Python's collector cannot break). The storage is held so that its identity stays unique."""
    __slots__ = ("shape", "stride", "offset", "dtype", "storage", "__weakref__")

    def __init__(self, t: torch.Tensor):
        self.shape, self.stride, self.offset, self.dtype = tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.dtype
        self.storage = t.untyped_storage()

    def unpack(self) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device="meta")


@contextmanager
def counting(live: _Live, weights: set[int] = frozenset()):
    """Count the storages of the tensors autograd saves while the block runs (meta tensors), until autograd frees
    them; not the weights (storages ``weights``), which a linear layer saves but which take no extra memory."""
    def pack(t):
        held = _Held(t)
        key = held.storage._cdata
        if key not in weights:
            n = held.storage.nbytes()
            live.hold(key, n)
            weakref.finalize(held, live.release, key, n)
        return held

    with torch.autograd.graph.saved_tensors_hooks(pack, _Held.unpack):
        yield live


class _FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention as PyTorch's flash / memory-efficient kernels hold it for backward (q, k, v,
    the output and a float32 log-sum-exp per query), on meta tensors."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(*q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _FusedRMSNorm(torch.autograd.Function):
    """RMS norm as PyTorch's fused GPU kernel holds it for backward (the input and a float32 reciprocal RMS per row),
    on meta tensors; the reference kernel the meta device would run saves a float32 copy of the input as well."""

    @staticmethod
    def forward(ctx, x, n, weight):
        rstd = x.new_empty(*x.shape[:x.dim() - n], dtype=torch.float32)
        ctx.save_for_backward(x, rstd)
        ctx.has_weight = weight is not None
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, grad):
        x, _ = ctx.saved_tensors
        return torch.empty_like(x), None, None


def _fused_rms_norm(input, normalized_shape, weight=None, eps=None):
    w = weight if weight is not None and weight.requires_grad else None
    return _FusedRMSNorm.apply(input, len(tuple(normalized_shape)), w)


_COMPUTE = [torch.float32]   # the dtype attention runs in under the counted step's autocast


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    dtype = _COMPUTE[0]
    return _FusedAttention.apply(query.to(dtype), key.to(dtype), value.to(dtype))


def _autocast_lists():
    """CUDA autocast's op lists (PyTorch's "Autocast Op Reference"), as torch functions: those that run in the lower
    precision and those that run in float32."""
    F, T = torch.nn.functional, torch.Tensor
    lower = {F.linear, torch.matmul, T.matmul, T.__matmul__, torch.mm, T.mm, torch.bmm, T.bmm, torch.baddbmm,
             T.baddbmm, torch.addmm, T.addmm, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
             F.conv_transpose3d, torch.einsum}
    fp32 = {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, torch.softmax, T.softmax, torch.log_softmax,
            T.log_softmax, F.mse_loss, F.l1_loss, torch.exp, T.exp, torch.pow, T.pow, T.__pow__, T.__rpow__,
            torch.rsqrt, T.rsqrt, torch.sum, T.sum, torch.norm, T.norm, F.normalize, torch.log, T.log, torch.cumsum,
            T.cumsum, torch.prod, T.prod, torch.reciprocal, T.reciprocal, F.softplus}
    return lower, fp32


class _MetaAutocast(torch.overrides.TorchFunctionMode):
    """``torch.autocast`` as it runs on a GPU, for meta tensors (autocast has no meta backend): the ops of its lower
    list see their floating inputs in ``dtype``, those of its float32 list in float32, the rest promote."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.lower, self.fp32 = _autocast_lists()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = self.dtype if func in self.lower else torch.float32 if func in self.fp32 else None
        if target is not None:
            def cast(x):
                if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != target:
                    return x.to(target)
                if isinstance(x, (list, tuple)):
                    return type(x)(cast(y) for y in x)
                return x
            args, kwargs = cast(args), {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class _KeepInputs(torch.autograd.Function):
    """An identity on a checkpointed block's output that holds the block's inputs until backward, as
    ``torch.utils.checkpoint`` does (the block itself ran without saving anything)."""

    @staticmethod
    def forward(ctx, anchor, out, *inputs):
        ctx.save_for_backward(*inputs)
        ctx.n = len(inputs)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return (None, grad, *([None] * ctx.n))


class _Checkpointing:
    """``enable_gradient_checkpointing``'s function for the count: each block runs once with its own counter (its
    activations, which backward recomputes one block at a time) and once without saving, its inputs held."""

    def __init__(self, device, weights: set[int]):
        self.block_peak = 0
        self.largest = 0
        self.weights = weights
        self.anchor = torch.zeros((), device=device, requires_grad=True)

    def __call__(self, module, *args):
        inner = _Live()
        with counting(inner, self.weights):
            module(*args)
        self.block_peak = max(self.block_peak, inner.peak)
        self.largest = max(self.largest, inner.largest)
        with torch.no_grad():
            out = module(*args)
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        if isinstance(out, torch.Tensor):
            return _KeepInputs.apply(self.anchor, out, *inputs)
        held = [_KeepInputs.apply(self.anchor, out[0], *inputs)] if isinstance(out[0], torch.Tensor) else [out[0]]
        return type(out)([*held, *(_KeepInputs.apply(self.anchor, o) if isinstance(o, torch.Tensor) else o
                                   for o in out[1:])])


# ------------------------------------------------------------------------------------------ building on meta
def _family(index: dict, option: str):
    from cat_adapter.models import families

    name = index.get("_class_name")
    for fam in families().values():
        if name in fam.pipeline_classes and fam.model_class is not None:
            return fam
    raise CatAdapterError(f"{option}: a {name} pipeline; the estimate knows "
                          f"{', '.join(c for f in families().values() for c in f.pipeline_classes)}")


def _build(index: dict, name: str, config: dict, dtype: torch.dtype, device: str = "meta") -> torch.nn.Module | None:
    """Component ``name`` on ``device`` (the meta device: no storage) in ``dtype``, random weights (None: not a torch
    module, e.g. a scheduler)."""
    import diffusers
    import transformers

    library, cls_name = index[name]
    if library == "transformers":
        cls = getattr(transformers, cls_name)
        make = lambda: cls(cls.config_class(**config))  # noqa: E731
    else:
        cls = getattr(diffusers, cls_name, None)
        if cls is None or not issubclass(cls, torch.nn.Module):
            return None
        make = lambda: cls.from_config(config)  # noqa: E731
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
    try:
        with torch.device(device):
            return make()
    finally:
        torch.set_default_dtype(previous)


def weight_bytes(module: torch.nn.Module, mode: str, dtype: torch.dtype) -> int:
    """Bytes of ``module``'s weights with its linear layers in ``mode`` (none: ``dtype``)."""
    size = torch.tensor([], dtype=dtype).element_size()
    total = 0
    linear = set()
    if mode != "none":
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                linear.add(id(m.weight))
                out_f, in_f = m.weight.shape
                scales = out_f * 4 * in_f / 64 if mode == "nf4" else out_f * size
                total += int(out_f * in_f * BYTES_PER_WEIGHT[mode] + scales)
    for p in module.parameters():
        if id(p) not in linear:
            total += p.numel() * size
    return total


def largest_linear(module: torch.nn.Module) -> int:
    return max((m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear)), default=0)


def model_around(cls, index: dict, configs: dict[str, dict], denoiser: torch.nn.Module):
    """The family's model object (``cls``) around ``denoiser`` alone: the other components are their configs (what
    the model object reads of them: latent channels, the VAE factor), the scheduler is built. Used by the estimate
    and by benchmarks/gpu_scale.py."""
    import diffusers

    from cat_adapter.models import ModelSpec

    f = 2 ** (len(configs["vae"].get("block_out_channels", (1,))) - 1)
    scheduler = getattr(diffusers, index["scheduler"][1]).from_config(configs["scheduler"])
    pipe = types.SimpleNamespace(**{n: types.SimpleNamespace(config=types.SimpleNamespace(**c)) for n, c in
                                    configs.items() if n != "scheduler"}, scheduler=scheduler, vae_scale_factor=f,
                                 default_sample_size=128)
    denoiser.requires_grad_(False)
    setattr(pipe, cls.denoiser_name, denoiser)
    return cls(pipe, ModelSpec("estimate"), "estimate")


def family_class(index: dict, option: str = "--model"):
    """The model class of the family whose pipeline ``index`` (model_index.json) names."""
    return _family(index, option).model_class


@dataclass
class Estimate:
    model: str
    family: str
    resolution: int
    batch_size: int
    options: dict
    components: dict[str, dict] = field(default_factory=dict)   # name -> {params, bytes}
    variants: dict[str, dict] = field(default_factory=dict)     # lora/cat_fast/cat_lean -> figures in bytes

    def fits(self, total: int) -> int | None:
        return next((g for g in GPU_SIZES_GIB if total / GIB + CONTEXT_GIB <= g), None)


def estimate(o: MemoryOptions) -> Estimate:
    from cat_adapter.config import build_config
    from cat_adapter.data.batch import Batch, Noised
    from cat_adapter.methods.base import build_method
    from cat_adapter.models import Cond

    if o.batch_size < 1:
        raise CatAdapterError(f"--batch-size {o.batch_size}: must be at least 1")
    index, configs = read_configs(o.model)
    fam = _family(index, "--model")
    cls = fam.model_class
    cls.check_quantization(o.quantize_base, o.quantize_text_encoders)
    dtype = DTYPES[o.mixed_precision]
    missing = [c for c in (cls.denoiser_name, "vae", "scheduler") if c not in configs]
    if missing:
        raise CatAdapterError(f"--model {o.model}: no config for {', '.join(missing)}")
    present = [n for n in cls.text_encoders if n in configs]   # SD3 may come without its T5
    est = Estimate(o.model, fam.name, 0, o.batch_size, {k: v for k, v in vars(o).items() if k not in ("model", "json")})
    modules = {}
    for name in (cls.denoiser_name, *present, "vae"):
        m = _build(index, name, configs[name], dtype)
        mode = o.quantize_base if name == cls.denoiser_name or (
            o.quantize_text_encoders and name in cls.large_text_encoders) else "none"
        est.components[name] = {"params": sum(p.numel() for p in m.parameters()), "mode": mode,
                                "bytes": weight_bytes(m, mode, dtype)}
        modules[name] = m
    denoiser = modules[cls.denoiser_name]
    model = model_around(cls, index, configs, denoiser)
    pipe = model.pipe
    res = o.resolution or model.default_resolution
    if res % model.size_multiple:
        raise CatAdapterError(f"--resolution {res}: must be a multiple of {model.size_multiple} for this model")
    est.resolution = res
    tokens, width, pooled = cls.text_shape(configs, o.max_sequence_length)
    shape = model.latent_shape(res, res)
    dequantized = largest_linear(denoiser) * torch.tensor([], dtype=dtype).element_size() if o.quantize_base != "none" else 0
    for variant, kw in VARIANTS.items():
        model.pipe = pipe
        cfg = build_config(overrides=dict(model="estimate", data="-", output="-", class_noun="x", rank=o.rank, **kw))
        method = build_method(cfg, model)
        params = list(method.parameters())
        n = sum(p.numel() for p in params)
        weights = {p.untyped_storage()._cdata for p in denoiser.parameters()}
        ckpt = _Checkpointing("meta", weights) if o.gradient_checkpointing else None
        if ckpt:
            denoiser.enable_gradient_checkpointing(ckpt)
        method.train()
        b = o.batch_size

        def r(*s):
            return torch.empty(*s, device="meta", dtype=dtype)

        t = model.objective.sample_timesteps(b, torch.Generator().manual_seed(0)).to("meta")   # the objective's dtype
        inst = Noised(r(b, *shape), r(b, *shape), t, torch.empty(b, 6, device="meta"))
        conds = {k: Cond(r(b, tokens, width), None if pooled is None else r(b, pooled)) for k in ("trigger", "plain")}
        live = _Live()
        sdpa = torch.nn.functional.scaled_dot_product_attention
        rms_norm = torch.nn.functional.rms_norm
        torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
        torch.nn.functional.rms_norm = _fused_rms_norm
        _COMPUTE[0] = dtype
        autocast = _MetaAutocast(dtype) if dtype != torch.float32 else contextlib.nullcontext()
        try:
            with counting(live, weights), autocast:
                method.forward_backward(Batch(inst, conds), lambda loss: loss.backward())
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
            torch.nn.functional.rms_norm = rms_norm
            _COMPUTE[0] = torch.float32
            if ckpt:
                denoiser.disable_gradient_checkpointing()
        counted = live.peak + (ckpt.block_peak if ckpt else 0)
        # backward's gradients in flight (the output's and the input's of the op being differentiated, at most the
        # largest saved tensor each), the dequantized weight of a quantized layer, and the fitted workspace
        largest = max(live.largest, ckpt.largest if ckpt else 0)
        est.variants[variant] = {"adapter_params": n, "adapter_state": 16 * n, "activations": counted,
                                 "transient": 2 * largest + dequantized + int(WORKSPACE_MIB * 2**20)}
        _remove_adapter(denoiser)
    weights = est.components[cls.denoiser_name]["bytes"]
    others = sum(c["bytes"] for k, c in est.components.items() if k != cls.denoiser_name)
    for v in est.variants.values():
        v["denoiser"] = weights
        v["others"] = 0 if o.offload_frozen else others
        v["training"] = weights + v["others"] + v["adapter_state"] + v["activations"] + v["transient"]
        v["startup"] = weights + others + v["adapter_params"] * 4
        v["peak"] = max(v["training"], v["startup"])
        v["fits_gib"] = est.fits(v["peak"])
    return est


def _remove_adapter(denoiser: torch.nn.Module) -> None:
    """Undo peft's injection so the next variant starts from the bare denoiser."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(denoiser.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = denoiser.get_submodule(parent_name) if parent_name else denoiser
            setattr(parent, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(denoiser, attr):
            delattr(denoiser, attr)


# ------------------------------------------------------------------------------------------ report
def table(est: Estimate) -> str:
    def g(x):
        return f"{x / GIB:.1f}"

    o = est.options
    lines = [f"{est.model} ({est.family}), {est.resolution} px, batch {est.batch_size}, rank {o['rank']}, "
             f"{o['mixed_precision']}, base {o['quantize_base']}"
             + (" (text encoders too)" if o["quantize_text_encoders"] else "")
             + f", gradient checkpointing {'on' if o['gradient_checkpointing'] else 'off'}",
             "components: " + ", ".join(f"{k} {c['params'] / 1e9:.2f}B params {g(c['bytes'])} GiB"
                                        + (f" ({c['mode']})" if c["mode"] != "none" else "")
                                        for k, c in est.components.items()),
             "",
             "| method | denoiser | text enc. + VAE | adapter + AdamW | activations | training | start-up | peak "
             "| fits (GiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = {"lora": "LoRA", "cat_fast": "CAT fast", "cat_lean": "CAT lean"}
    for k, v in est.variants.items():
        fit = f"{v['fits_gib']}" if v["fits_gib"] else f"> {GPU_SIZES_GIB[-1]}"
        lines.append(f"| {names[k]} | {g(v['denoiser'])} | {g(v['others'])} | {g(v['adapter_state'])} | "
                     f"{g(v['activations'] + v['transient'])} | {g(v['training'])} | {g(v['startup'])} | "
                     f"{g(v['peak'])} | {fit} |")
    lines.append(f"GiB; 'fits': the smallest of {', '.join(map(str, GPU_SIZES_GIB))} GiB holding the peak plus "
                 f"{CONTEXT_GIB:g} GiB for the CUDA context. start-up: every component on the GPU while latents "
                 "and prompts are cached" + ("" if o["offload_frozen"] else "; training keeps them there"))
    return "\n".join(lines)


def as_json(est: Estimate) -> str:
    from dataclasses import asdict

    return json.dumps(asdict(est), indent=1)
