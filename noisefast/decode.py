"""Latents → images: the model's VAE (SDXL, SD3, FLUX — FLUX's latents are the unpacked [C, H/8, W/8] ones; one
latent at a time, fp32 where fp16 overflows), or [-1, 1] → 8-bit for pixel-space models (upscaled
nearest-neighbour so an 8×8 sample can be seen)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

PIXEL_VIEW_SIZE = 128  # pixel models' samples are upscaled (nearest neighbour) to at least this for viewing


@torch.inference_mode()
def decode_latents(model, latents: torch.Tensor) -> list:  # latents [B, C, h, w] → B PIL images
    """Decode with ``model`` (a `noisefast.loading.LoadedModel`): its VAE for SDXL, pixels for a pixel model."""
    if model.kind == "pixel":
        return [pixel_image(x) for x in latents.float().cpu()]
    vae, pipe = model.vae, model.pipe
    # the SDXL VAE overflows in fp16: decode in fp32 and put it back, as the pipeline does (a shared pipe, from_pipe)
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        return _decode_vae(vae, pipe, latents)
    finally:
        if upcast:
            vae.to(torch.float16)


def _decode_vae(vae, pipe, latents: torch.Tensor) -> list:
    images = []
    for lat in latents.split(1):  # one at a time: a 1024² VAE decode is the memory peak of a run
        lat = lat.to(device=vae.device, dtype=vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            c = lat.shape[1]
            mean_t = torch.tensor(mean, device=lat.device, dtype=lat.dtype).view(1, c, 1, 1)
            std_t = torch.tensor(std, device=lat.device, dtype=lat.dtype).view(1, c, 1, 1)
            lat = lat * std_t / vae.config.scaling_factor + mean_t
        else:  # SD3/FLUX VAEs also shift: z = (x − shift)·scale, so x = z/scale + shift
            lat = lat / vae.config.scaling_factor
            shift = getattr(vae.config, "shift_factor", None)
            if shift is not None:
                lat = lat + shift
        image = vae.decode(lat, return_dict=False)[0]
        images += pipe.image_processor.postprocess(image.float(), output_type="pil")
    return images


def pixel_image(x: torch.Tensor) -> Image.Image:  # x [C, H, W] in [-1, 1]
    """A pixel-space sample as an 8-bit image, upscaled nearest-neighbour to at least PIXEL_VIEW_SIZE."""
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    img = Image.fromarray(u8[0], "L") if u8.shape[0] == 1 else Image.fromarray(np.moveaxis(u8[:3], 0, -1), "RGB")
    scale = max(1, math.ceil(PIXEL_VIEW_SIZE / max(img.size)))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


__all__ = ["PIXEL_VIEW_SIZE", "decode_latents", "pixel_image"]
