"""Built-in models shipped inside the package, addressed as ``builtin:<name>``.

Each one is a diffusers-style folder under this package (``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, each saved with ``save_pretrained``) plus ``noisefast_model.json``, which says what an
Engine needs to drive it (kind, shape, prompt template, sampling defaults) and how it was trained.
Loading goes through each class's ordinary ``from_pretrained`` on the local folder; nothing touches the hub.

- ``builtin:digits`` — a conditional pixel-space DDIM model of 8×8 handwritten digits ("a handwritten
  digit seven"), trained by `noisefast.builtin.train_digits`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PREFIX = "builtin:"
MODEL_JSON = "noisefast_model.json"
_ROOT = Path(__file__).resolve().parent


def available_builtin_models() -> list[str]:
    """Names (``"builtin:<name>"``) of the models shipped in this package."""
    return sorted(PREFIX + p.parent.name for p in _ROOT.glob(f"*/{MODEL_JSON}"))


def is_builtin(name: str) -> bool:
    """Whether ``name`` uses the ``builtin:`` scheme."""
    return isinstance(name, str) and name.startswith(PREFIX)


def builtin_model_path(name: str) -> Path:
    """The folder of built-in model ``name`` (``"builtin:digits"`` or just ``"digits"``)."""
    if not isinstance(name, str):
        raise TypeError(f"built-in model name must be a str, got {type(name).__name__}")
    short = name[len(PREFIX) :] if is_builtin(name) else name
    folder = _ROOT / short
    if not short or "/" in short or "\\" in short or not (folder / MODEL_JSON).is_file():
        raise ValueError(f"unknown built-in model {name!r}; available: {', '.join(available_builtin_models())}")
    return folder


@dataclass(frozen=True)
class ModelComponents:
    """What a pixel-space model folder loads into (all modules in eval mode)."""

    tokenizer: object  # transformers.CLIPTokenizer
    text_encoder: object  # transformers.CLIPTextModel
    unet: object  # diffusers.UNet2DConditionModel
    scheduler: object  # diffusers.DDIMScheduler
    config: dict  # the parsed noisefast_model.json
    path: Path


def load_model_folder(path: str | Path, torch_dtype=None) -> ModelComponents:
    """Load a folder written by a noisefast training script (e.g. ``train_digits --out``)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    card = path / MODEL_JSON
    if not card.is_file():
        raise ValueError(f"{path} is not a noisefast model folder: {MODEL_JSON} is missing")
    config = json.loads(card.read_text())
    kw = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    return ModelComponents(
        tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
        # safetensors only: a pickle-based weight file is never unpickled
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True, **kw).eval(),
        unet=UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True, **kw).eval(),
        scheduler=DDIMScheduler.from_pretrained(path / "scheduler"),
        config=config,
        path=path,
    )


def load_builtin_components(name: str, torch_dtype=None) -> ModelComponents:
    """Load built-in model ``name`` (``"builtin:digits"``) through each class's ``from_pretrained``."""
    return load_model_folder(builtin_model_path(name), torch_dtype=torch_dtype)


__all__ = [
    "ModelComponents",
    "available_builtin_models",
    "builtin_model_path",
    "is_builtin",
    "load_builtin_components",
    "load_model_folder",
]
