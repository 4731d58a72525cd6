"""Loading SD3 / SD3.5 and FLUX.1 pipeline folders for the Engine (`noisefast.loading.load_model` calls it).

The stock diffusers pipeline class loads the folder (safetensors only), its transformer, VAE and text encoders are
frozen in eval mode, and the model runs with its family's defaults (`noisefast.defaults`):

- SD3 (``StableDiffusion3Pipeline``): ``"sd3"`` (28 steps, CFG 7), or ``"sd3-turbo"`` (4 steps, no CFG: SD3.5
  Large Turbo) when the hub id or folder name contains "turbo";
- FLUX (``FluxPipeline``): ``"flux-dev"`` (28 steps, embedded guidance 3.5) when the transformer has the guidance
  embedding (``guidance_embeds``), else ``"flux-schnell"`` (4 steps, no guidance).

``family=`` forces one of the kind's families; the largest image side is capped where the transformer's position
table ends (SD3's ``pos_embed_max_size`` patches).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from noisefast.architectures import FlowArchitecture
from noisefast.defaults import FLOW_FAMILY_DEFAULTS, ModelDefaults
from noisefast.errors import InputError, ModelError


def flow_defaults(kind: str, folder: Path, spec: str, arch: FlowArchitecture, family: str | None) -> ModelDefaults:
    """The family defaults of an SD3/FLUX model: detected from its name / transformer, or forced by ``family``."""
    families = FLOW_FAMILY_DEFAULTS[kind]
    if family is None:
        if kind == "sd3":
            family = "sd3-turbo" if "turbo" in f"{spec} {folder}".lower() else "sd3"
        else:
            family = "flux-dev" if arch.guidance_embeds else "flux-schnell"
    if family not in families:
        raise InputError(f"family {family!r} does not fit a {kind.upper()} pipeline; use one of {', '.join(families)}")
    if kind == "flux" and (family == "flux-dev") != arch.guidance_embeds:
        has = "has" if arch.guidance_embeds else "has no"
        raise InputError(f"family {family!r} does not fit this FLUX transformer: it {has} the guidance embedding "
                         f"(flux-dev embeds the guidance scale, flux-schnell takes none)")  # fmt: skip
    d = families[family]
    cap = arch.max_side()
    return d if cap is None or cap >= d.max_side else replace(d, max_side=cap)


def load_flow(kind: str, spec: str, folder: Path, device, dtype, variant: str | None, family: str | None, *,
              dtype_kwarg: dict) -> dict:
    """Load an SD3 (``kind="sd3"``) or FLUX (``"flux"``) pipeline folder onto ``device`` in ``dtype``: the fields of
    `noisefast.loading.LoadedModel` (``dtype_kwarg``: how this diffusers version takes the dtype)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline
    try:
        # safetensors only: a pickle-based weight file (.bin, .ckpt) is never unpickled
        pipe = cls.from_pretrained(folder, variant=variant, use_safetensors=True, **dtype_kwarg)
    except Exception as e:  # missing/corrupt files surface as OSError, ValueError, SafetensorError, KeyError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"could not load the {cls.__name__} in {folder}: {type(e).__name__}: {first}") from e
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval().requires_grad_(False)
    return flow_fields(kind, pipe, spec, folder, device, dtype, family)


def flow_fields(kind: str, pipe, spec: str, folder: Path | None, device, dtype, family: str | None) -> dict:
    """The `LoadedModel` fields over a live SD3 / FLUX pipeline (loaded here, or a user's: `Engine.from_pipe`)."""
    from noisefast.prompts import FluxPromptEncoder, SD3PromptEncoder

    sched_cfg = dict(pipe.scheduler.config)
    arch = FlowArchitecture(kind, pipe.transformer, sched_cfg, int(pipe.vae_scale_factor))
    try:
        arch.schedule(1, 1, 16 * arch.spatial_factor, 16 * arch.spatial_factor)  # refuse an unusable scheduler now
    except ValueError as e:
        raise ModelError(f"the scheduler of {spec} cannot be stepped: {e}") from None
    encoder = SD3PromptEncoder if kind == "sd3" else FluxPromptEncoder
    return dict(
        kind=kind, source=spec, folder=folder, defaults=flow_defaults(kind, folder or Path(spec), spec, arch, family),
        unet=None, vae=pipe.vae, encoder=encoder(pipe), scheduler_config=sched_cfg, device=device, dtype=dtype,
        spatial_factor=arch.spatial_factor, card={}, pipe=pipe, arch=arch,
    )  # fmt: skip


__all__ = ["flow_defaults", "load_flow"]
