"""Prompts of the built-in digits model and their encoding into cross-attention embeddings.

Encoding is Stable-Diffusion-1.x style: pad to the tokenizer's ``model_max_length`` with the EOS/pad
token, no attention mask, and use the text encoder's ``last_hidden_state`` as ``prompt_embeds``. The
unconditional (classifier-free guidance) prompt is the empty string, which training drops to with
probability ``cfg_drop``.
"""

from __future__ import annotations

import torch

from noisefast.builtin.vocab import CLASS_NAMES

PROMPT_TEMPLATE = "a handwritten digit {name}"
# Every phrasing the model is trained on; {name} is the digit's word, {digit} its numeral.
TRAINING_TEMPLATES = (
    "a handwritten digit {name}",
    "{name}",
    "{digit}",
    "the digit {digit}",
    "the number {name}",
    "a handwritten {digit}",
)
NEGATIVE_PROMPT = ""


def class_prompt(label: int, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt for digit ``label`` (0..9), e.g. ``"a handwritten digit seven"``."""
    if not 0 <= int(label) < len(CLASS_NAMES):
        raise ValueError(f"digit label must be in 0..{len(CLASS_NAMES) - 1}, got {label}")
    return template.format(name=CLASS_NAMES[int(label)], digit=int(label))


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids [B, L] padded/truncated to ``tokenizer.model_max_length``."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """``prompt_embeds`` [B, L, D]: the text encoder's last hidden state over the padded prompts."""
    ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    return text_encoder(ids).last_hidden_state
