"""Find and load a model for the Engine: a local diffusers folder, a hub id, or ``builtin:NAME``.

Two kinds of model go through one path:
- ``"sdxl"``: any `StableDiffusionXLPipeline`-compatible folder (both text encoders, VAE, a UNet with
  SDXL's ``text_time`` added conditioning). SDXL-Turbo is the same architecture; it is recognised by its
  scheduler's ``"trailing"`` timestep spacing or a name containing ``turbo``.
- ``"pixel"``: a folder with a ``noisefast_model.json`` (the built-in models): one CLIP text encoder,
  no VAE, the UNet works directly in pixel space.
- ``"sd3"`` / ``"flux"``: flow-matching transformers — a `StableDiffusion3Pipeline` (SD3, SD3.5; family
  ``"sd3"``, or ``"sd3-turbo"`` when its name says turbo) or a `FluxPipeline` (FLUX.1; ``"flux-dev"`` when its
  transformer has the guidance embedding, else ``"flux-schnell"``), recognised by model_index.json's
  ``_class_name`` or the transformer config's class.

What differs between them at run time is the `noisefast.architectures` object each load builds (``arch``).

A hub id is looked up in the local Hugging Face cache first; only when that misses (and the hub is not
switched off with ``HF_HUB_OFFLINE=1``) is it downloaded. Whatever fails, the error says how to pass a
local folder instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from noisefast.architectures import UNetArchitecture
from noisefast.builtin import PREFIX as BUILTIN_PREFIX
from noisefast.defaults import DEFAULT_LR, FAMILY_DEFAULTS, PIXEL_BATCH_SIZE, ModelDefaults
from noisefast.errors import InputError, ModelError

PIXEL_MODEL_FILE = "noisefast_model.json"
PIXEL_MAX_SIDE = 256  # pixel models run convolutionally at other sizes; beyond this they are far out of range
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype, device: torch.device, kind: str = "sdxl") -> torch.dtype:
    """``None`` → on CUDA fp16 for SDXL, bf16 for SD3/FLUX (their T5 overflows fp16), else fp32; strings like
    ``"fp16"``/``"bf16"`` accepted."""
    if dtype is None:
        if device.type == "cuda" and kind in FLOW_KINDS:
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" and kind == "sdxl" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise InputError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPES))}")


def resolve_device(device) -> torch.device:
    """``None`` → CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available on this machine (use --device cpu)")
    return dev


def _local_folder_hint(spec: str) -> str:
    return (
        f"To use a model you already have on disk, pass its folder instead: --model /path/to/folder "
        f"(a diffusers pipeline folder with model_index.json, e.g. made by "
        f"StableDiffusionXLPipeline.from_pretrained({spec!r}).save_pretrained('/path/to/folder') on a machine "
        f"with network access), or run without --model to use the built-in model (builtin:digits)."
    )


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def resolve_folder(spec: str | os.PathLike, *, variant: str | None = None) -> Path:
    """The local folder holding ``spec``: itself, a built-in model's folder, or the hub cache snapshot."""
    spec_str = os.fspath(spec)
    if spec_str.startswith(BUILTIN_PREFIX):
        from noisefast.builtin import builtin_model_path

        name = spec_str[len(BUILTIN_PREFIX):]
        try:
            return Path(builtin_model_path(name))
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise ModelError(str(e)) from None
    path = Path(spec_str).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"--model {spec_str!r} is a file, not a model folder")
    if not HUB_ID.match(spec_str):
        raise ModelError(
            f"model folder {spec_str!r} does not exist (and it is not a hub id of the form owner/name)"
        )
    return _download_hub(spec_str, variant=variant)


def _download_hub(repo_id: str, *, variant: str | None) -> Path:
    """The local snapshot of hub model ``repo_id``: cache first, then (if allowed) the network."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    try:
        return Path(DiffusionPipeline.download(repo_id, local_files_only=True, variant=variant))
    except (OSError, ValueError) as cache_miss:
        offline = constants.HF_HUB_OFFLINE
        if offline:
            raise ModelError(
                f"model {repo_id!r} is not in the local Hugging Face cache and the hub is switched off "
                f"(HF_HUB_OFFLINE=1). {_local_folder_hint(repo_id)}"
            ) from cache_miss
    try:
        return Path(DiffusionPipeline.download(repo_id, variant=variant))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise ModelError(
            f"model {repo_id!r} is not available locally and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). {_local_folder_hint(repo_id)}"
        ) from e


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; unreadable or malformed files are a `ModelError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelError(f"cannot read {path} ({what}): {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} ({what}) is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} ({what}) must hold a JSON object, got {type(data).__name__}")
    return data


def check_scheduler_config(path: Path, kind: str) -> None:
    """The model's scheduler config must be one its sampler takes, within range (`noisefast.schedule`'s checks for
    DDIM — num_train_timesteps ≤ 100000, betas in [0, 1], ... —, `noisefast.flow_schedule`'s for SD3/FLUX): a
    `ModelError` naming the file, before diffusers allocates its tables (num_train_timesteps = 10**10: 40 GB)."""
    if not path.is_file():
        return  # diffusers names the missing component
    try:
        cfg = read_json(path, "the scheduler config")
        if kind in FLOW_KINDS:
            from noisefast.flow_schedule import resolve_flow_config

            resolve_flow_config(cfg)
        else:
            from noisefast.schedule import alphas_cumprod, resolve_config

            alphas_cumprod(resolve_config(cfg))
    except (TypeError, ValueError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"{path} (the scheduler config): {e}") from None


def detect_kind(folder: Path) -> str:
    """``"pixel"`` for a noisefast model folder, ``"sdxl"`` for an SDXL pipeline, ``"sd3"`` / ``"flux"`` for an
    SD3 / FLUX pipeline; anything else is an error."""
    if (folder / PIXEL_MODEL_FILE).is_file():
        return "pixel"
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); noisefast needs an SDXL, SD3 or "
            f"FLUX pipeline folder (e.g. unet/ or transformer/, vae/, text_encoder*/, tokenizer*/, scheduler/)"
        )
    meta = read_json(index, "the pipeline's component index")
    flow = _flow_kind(folder, meta)
    if flow is not None:
        return flow
    missing = [c for c in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
               if not isinstance(meta.get(c), list) or meta.get(c)[0] is None]
    unet_cfg_path = folder / "unet" / "config.json"
    embed = read_json(unet_cfg_path, "the UNet config").get("addition_embed_type") if unet_cfg_path.is_file() else None
    if missing or embed != "text_time":
        why = f"missing components {missing}" if missing else f"its UNet has addition_embed_type={embed!r}, not 'text_time'"
        raise ModelError(
            f"{folder} holds a {meta.get('_class_name', 'diffusers')} pipeline, not an SDXL pipeline ({why}); "
            f"noisefast supports StableDiffusionXLPipeline-compatible models (SDXL, SDXL-Turbo), "
            f"StableDiffusion3Pipeline (SD3, SD3.5), FluxPipeline (FLUX.1) and builtin:NAME"
        )
    return "sdxl"


FLOW_PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}  # model_index.json _class_name → kind
FLOW_TRANSFORMERS = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}  # transformer/config.json


def _flow_kind(folder: Path, meta: dict) -> str | None:
    """``"sd3"``/``"flux"`` when the pipeline class or its transformer's class says so, else None."""
    kind = FLOW_PIPELINES.get(meta.get("_class_name"))
    cfg_path = folder / "transformer" / "config.json"
    if kind is None and cfg_path.is_file():
        kind = FLOW_TRANSFORMERS.get(read_json(cfg_path, "the transformer config").get("_class_name"))
    return kind


FLOW_KINDS = frozenset(FLOW_PIPELINES.values())


def sdxl_defaults(folder: Path, spec: str, scheduler_config: dict, family: str | None = None) -> ModelDefaults:
    """SDXL or SDXL-Turbo defaults: Turbo when asked, or its scheduler spacing is trailing, or its name says so."""
    if family is None:
        turbo = scheduler_config.get("timestep_spacing") == "trailing" or "turbo" in f"{spec} {folder}".lower()
        family = "sdxl-turbo" if turbo else "sdxl"
    if family in FAMILY_DEFAULTS:
        return FAMILY_DEFAULTS[family]
    raise InputError(f"family {family!r} does not fit an SDXL pipeline; use one of {', '.join(FAMILY_DEFAULTS)}")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """Everything the Engine drives, on its device and dtype."""

    kind: str  # "sdxl", "pixel", "sd3" or "flux"
    source: str  # what the user passed (hub id, folder, builtin:NAME)
    folder: Path | None  # the local folder it was loaded from (None: built from a live pipeline, `model_from_pipe`)
    defaults: ModelDefaults
    unet: object | None  # diffusers UNet2DConditionModel (None for SD3/FLUX: their transformer is arch.transformer)
    vae: object | None  # AutoencoderKL (kept in fp32 when its config says fp16 overflows), None for pixel models
    encoder: object  # a noisefast.prompts encoder: (prompts, negative, height=, width=, with_negative=) -> Condition
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    spatial_factor: int  # image pixels per latent pixel (8 for SDXL's VAE, 1 in pixel space)
    card: dict  # noisefast_model.json of a pixel model ({} for SDXL)
    pipe: object | None = None  # the diffusers pipeline (SDXL, SD3, FLUX; None for pixel models)
    arch: object = None  # noisefast.architectures: UNetArchitecture (sdxl, pixel) or FlowArchitecture (sd3, flux)


def load_model(
    spec: str | os.PathLike,
    *,
    device=None,
    dtype=None,
    variant: str | None = None,
    family: str | None = None,
) -> LoadedModel:
    """Resolve ``spec`` to a folder and load it with diffusers/transformers ``from_pretrained``."""
    dev = resolve_device(device)
    folder = resolve_folder(spec, variant=variant)
    kind = detect_kind(folder)
    check_scheduler_config(folder / "scheduler" / "scheduler_config.json", kind)  # before diffusers builds it
    dt = resolve_dtype(dtype, dev, kind)
    if kind == "pixel":
        if variant is not None:
            raise InputError(f"--variant {variant!r}: {spec} is a noisefast pixel model, which has no weight variants")
        return _load_pixel(os.fspath(spec), folder, dev, dt, family)
    if kind in FLOW_KINDS:
        from noisefast.loading_flow import load_flow

        return LoadedModel(**load_flow(kind, os.fspath(spec), folder, dev, dt, variant, family,
                                       dtype_kwarg=_dtype_kwarg(dt)))
    return _load_sdxl(os.fspath(spec), folder, dev, dt, variant, family)


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (newer versions warn on the old name); pass whichever it reads."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _load_sdxl(spec, folder, device, dtype, variant, family) -> LoadedModel:
    from diffusers import StableDiffusionXLPipeline

    from noisefast.prompts import SDXLPromptEncoder

    try:
        # safetensors only: a pickle-based weight file (.bin, .ckpt) is never unpickled
        pipe = StableDiffusionXLPipeline.from_pretrained(folder, variant=variant, use_safetensors=True,
                                                         **_dtype_kwarg(dtype))  # fmt: skip
    except Exception as e:  # missing/corrupt files surface as OSError, ValueError, SafetensorError, KeyError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"could not load the SDXL pipeline in {folder}: {type(e).__name__}: {first}") from e
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.eval().requires_grad_(False)
    if dtype == torch.float16 and pipe.vae.config.force_upcast:
        pipe.vae.to(torch.float32)  # the SDXL VAE overflows in fp16: decode in fp32, as diffusers' upcast does
    sched_cfg = dict(pipe.scheduler.config)
    return LoadedModel(
        kind="sdxl", source=spec, folder=folder, defaults=sdxl_defaults(folder, spec, sched_cfg, family),
        unet=pipe.unet, vae=pipe.vae, encoder=SDXLPromptEncoder(pipe), scheduler_config=sched_cfg,
        device=device, dtype=dtype, spatial_factor=int(pipe.vae_scale_factor), card={}, pipe=pipe,
        arch=UNetArchitecture("sdxl", pipe.unet, sched_cfg, int(pipe.vae_scale_factor)),
    )  # fmt: skip


def model_from_pipe(pipe, *, family: str | None = None) -> LoadedModel:
    """A `LoadedModel` over a live `StableDiffusionXLPipeline` (or `StableDiffusion3Pipeline` / `FluxPipeline`): its
    modules as they are (nothing is moved, cast or copied — offload hooks, LoRAs, a compiled UNet stay); device =
    where the pipeline executes, dtype = the UNet's (the transformer's)."""
    from noisefast.prompts import SDXLPromptEncoder

    name = str(getattr(getattr(pipe, "config", None), "_name_or_path", "") or type(pipe).__name__)
    folder = Path(name) if name and Path(name).is_dir() else None
    if type(pipe).__name__ in FLOW_PIPELINES:
        from noisefast.loading_flow import flow_fields

        return LoadedModel(**flow_fields(FLOW_PIPELINES[type(pipe).__name__], pipe, name, folder or Path(name),
                                         torch.device(pipe._execution_device), pipe.transformer.dtype, family))
    unet = getattr(pipe, "unet", None)
    ok = (unet is not None and getattr(unet.config, "addition_embed_type", None) == "text_time"
          and all(getattr(pipe, c, None) is not None for c in ("vae", "text_encoder_2", "tokenizer_2", "scheduler")))  # fmt: skip
    if not ok:
        raise ModelError(f"Engine.from_pipe takes a StableDiffusionXLPipeline (SDXL, SDXL-Turbo), a "
                         f"StableDiffusion3Pipeline or a FluxPipeline; got {type(pipe).__name__}")  # fmt: skip
    sched_cfg = dict(pipe.scheduler.config)
    return LoadedModel(
        kind="sdxl", source=name, folder=folder, defaults=sdxl_defaults(folder or Path(name), name, sched_cfg, family),
        unet=unet, vae=pipe.vae, encoder=SDXLPromptEncoder(pipe), scheduler_config=sched_cfg,
        device=torch.device(pipe._execution_device), dtype=unet.dtype, spatial_factor=int(pipe.vae_scale_factor),
        card={}, pipe=pipe, arch=UNetArchitecture("sdxl", unet, sched_cfg, int(pipe.vae_scale_factor)),
    )  # fmt: skip


def _load_pixel(spec, folder, device, dtype, family) -> LoadedModel:
    from noisefast.builtin import load_model_folder
    from noisefast.prompts import CLIPPromptEncoder

    if family not in (None, "pixel"):
        raise ModelError(f"{spec} is a pixel-space noisefast model; family {family!r} does not apply")
    card = read_json(folder / PIXEL_MODEL_FILE, "the model card")  # a JSON object, or a ModelError naming the file
    if card.get("kind") != "pixel":
        raise ModelError(f"{folder / PIXEL_MODEL_FILE} has kind {card.get('kind')!r}; this version reads 'pixel'")
    try:
        defaults = _pixel_defaults(card)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"holds a value of the wrong type ({e})"
        raise ModelError(f"{folder / PIXEL_MODEL_FILE} (the model card) {what}") from None
    try:
        parts = load_model_folder(folder)
    except Exception as e:  # missing/corrupt files surface as OSError, ValueError, SafetensorError, KeyError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"could not load the noisefast model in {folder}: {type(e).__name__}: {first}") from e
    for m in (parts.unet, parts.text_encoder):
        m.to(device) if m.dtype == dtype else m.to(device=device, dtype=dtype)  # saved in fp32: cast only if asked
        m.eval().requires_grad_(False)
    sched_cfg = dict(parts.scheduler.config)
    return LoadedModel(
        kind="pixel", source=spec, folder=folder, defaults=defaults, unet=parts.unet, vae=None,
        encoder=CLIPPromptEncoder(parts.tokenizer, parts.text_encoder, str(card.get("negative_prompt") or "")),
        scheduler_config=sched_cfg, device=device, dtype=dtype, spatial_factor=1, card=card,
        arch=UNetArchitecture("pixel", parts.unet, sched_cfg, 1),
    )  # fmt: skip


def _pixel_defaults(card: dict) -> ModelDefaults:
    """A pixel model's defaults from its card (``noisefast_model.json``)."""
    opt = card.get("default_optimize", {})
    return ModelDefaults(
        family="pixel",
        height=int(card["height"]),
        width=int(card["width"]),
        steps=int(card["default_steps"]),
        inversion_steps=int(card["default_inversion_steps"]),
        guidance_scale=float(card["default_guidance_scale"]),
        inversion_guidance_scale=float(card["default_inversion_guidance_scale"]),
        optimize_lr=float(opt.get("lr", DEFAULT_LR)),
        optimize_renorm=bool(opt.get("renorm", False)),
        max_side=int(card.get("max_side", PIXEL_MAX_SIDE)),
        batch_size=int(card.get("default_batch_size", PIXEL_BATCH_SIZE)),
    )
