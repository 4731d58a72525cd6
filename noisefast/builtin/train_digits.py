"""Train the built-in ``digits`` model: a small conditional pixel-space diffusion model on CPU.

    python -m noisefast.builtin.train_digits --out noisefast/builtin/digits --seed 0

What it trains (all of it fixed by `RECIPE`, the configs below and ``--seed``):
- data: the ``"train"`` split of scikit-learn's 8×8 digits (`noisefast.builtin.data`), pixels in [-1, 1];
- a ``UNet2DConditionModel`` (epsilon prediction, 1 channel, 8×8, no added conditioning) that reads
  the prompt through cross-attention, jointly with a tiny ``CLIPTextModel`` over the local vocabulary
  of `noisefast.builtin.vocab`; prompts are drawn from `TRAINING_TEMPLATES`, and replaced by the empty
  prompt with probability ``cfg_drop`` so classifier-free guidance works;
- the objective of DDPM (Ho et al. 2020, eq. 14): ``x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε``, ``t ~ U{0..999}``,
  ``L = ‖ε − ε_θ(x_t, t, c)‖²``, linear β from 1e-4 to 0.02 (pixel-space DDPM's schedule: at 8×8 the
  latent-diffusion ``scaled_linear`` schedule leaves too much signal at t = T);
- AdamW with linear warm-up and cosine decay, gradient clipping, and an exponential moving average
  of the weights — the EMA weights are what is saved.

It writes a diffusers-style folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, each
with ``save_pretrained``, safetensors) plus ``noisefast_model.json`` (what an Engine needs) and
``training_log.json`` (the loss curve). Every random draw comes from one generator seeded by
``--seed`` and the run is single-process with a fixed thread count, so the same command on the same
torch build and CPU gives the same weights bit for bit.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from noisefast.builtin.data import SIZE, load_split, to_model_range
from noisefast.builtin.prompts import NEGATIVE_PROMPT, PROMPT_TEMPLATE, TRAINING_TEMPLATES, class_prompt, tokenize
from noisefast.builtin.vocab import BOS, CLASS_NAMES, EOS, MODEL_MAX_LENGTH, build_tokenizer, write_vocab_files

MODEL_NAME = "digits"
RECIPE = dict(
    steps=3000,
    batch_size=64,
    lr=1e-3,
    warmup_steps=100,
    weight_decay=0.0,
    grad_clip=1.0,
    ema_decay=0.999,
    cfg_drop=0.1,
    threads=1,
    log_every=50,
)
CROSS_DIM = 32
UNET_CONFIG = dict(
    sample_size=SIZE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),  # diffusers' legacy name: the number of heads per block
    cross_attention_dim=CROSS_DIM,
    norm_num_groups=8,
    addition_embed_type=None,  # no SDXL text_time conditioning
)
TEXT_CONFIG = dict(
    hidden_size=CROSS_DIM,
    intermediate_size=2 * CROSS_DIM,
    projection_dim=CROSS_DIM,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=MODEL_MAX_LENGTH,
    attention_dropout=0.0,
    dropout=0.0,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    clip_sample=False,  # keeps every DDIM move affine (the method's inversion is exact then)
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)
# Sampling defaults an Engine uses (chosen with bench/quality/sample_accuracy.py).
SAMPLING_DEFAULTS = dict(
    default_steps=10,
    default_inversion_steps=10,
    default_guidance_scale=2.0,
    default_inversion_guidance_scale=1.0,
)


def build_components(seed: int):
    """(tokenizer, text_encoder, unet, scheduler) freshly initialised from ``seed``."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
        **TEXT_CONFIG,
    )
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return tokenizer, text_encoder, unet, DDIMScheduler(**SCHEDULER_CONFIG)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def _ema_update_(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← d·θ_ema + (1 − d)·θ."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - decay)


def train(seed: int = 0, steps: int | None = None, threads: int | None = None, log=print) -> dict:
    """Run the recipe; returns the EMA components, the loss curve and the measured wall time."""
    recipe = dict(RECIPE, **({"steps": steps} if steps is not None else {}), **({"threads": threads} if threads else {}))
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe["threads"])
    torch.use_deterministic_algorithms(True)
    try:
        return _train(recipe, seed, log)
    finally:  # leave the caller's process as it was
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _train(recipe: dict, seed: int, log) -> dict:
    tokenizer, text_encoder, unet, scheduler = build_components(seed)
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    text_encoder.train()
    unet.train()

    # 1. data: x₀ [N, 1, 8, 8] in [-1, 1]; prompt ids per (class, template) [10, T, L] and the empty prompt [L]
    images, labels = load_split("train")
    x_all = to_model_range(torch.from_numpy(images).float()).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    table = torch.stack(
        [tokenize(tokenizer, [class_prompt(c, tpl) for tpl in TRAINING_TEMPLATES]) for c in range(len(CLASS_NAMES))]
    )
    empty = tokenize(tokenizer, [NEGATIVE_PROMPT])[0]

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    g = torch.Generator().manual_seed(seed)
    n, b = len(x_all), recipe["batch_size"]
    perm, cursor = torch.randperm(n, generator=g), 0
    curve, window = [], []
    t0 = time.perf_counter()
    for step in range(recipe["steps"]):
        # 2. a batch without replacement within each epoch
        if cursor + b > n:
            perm, cursor = torch.randperm(n, generator=g), 0
        idx = perm[cursor : cursor + b]
        cursor += b
        x0, y = x_all[idx], y_all[idx]
        # 3. condition: a random phrasing, dropped to the empty prompt with probability cfg_drop
        tpl = torch.randint(len(TRAINING_TEMPLATES), (b,), generator=g)
        drop = torch.rand(b, generator=g) < recipe["cfg_drop"]
        ids = torch.where(drop[:, None], empty[None], table[y, tpl])
        # 4. forward process q(x_t | x₀): x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t = scheduler.add_noise(x0, eps, t)
        # 5. L = ‖ε − ε_θ(x_t, t, c)‖²
        cond = text_encoder(ids).last_hidden_state  # [B, L, D]
        loss = torch.nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, eps)
        for group in opt.param_groups:
            group["lr"] = recipe["lr"] * _lr_factor(step, recipe["steps"], recipe["warmup_steps"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe["grad_clip"])
        opt.step()
        # 6. EMA with the usual warm-up of the decay: d = min(d_max, (1 + k) / (10 + k))
        decay = min(recipe["ema_decay"], (1 + step) / (10 + step))
        _ema_update_(ema_unet, unet, decay)
        _ema_update_(ema_text, text_encoder, decay)
        window.append(loss.item())
        if (step + 1) % recipe["log_every"] == 0 or step + 1 == recipe["steps"]:
            curve.append({"step": step + 1, "loss": sum(window) / len(window)})
            window = []
            log(f"step {step + 1:5d}/{recipe['steps']}  loss {curve[-1]['loss']:.5f}  {time.perf_counter() - t0:7.1f}s")
    wall = time.perf_counter() - t0
    return dict(
        tokenizer=tokenizer, text_encoder=ema_text, unet=ema_unet, scheduler=scheduler,
        recipe=recipe, seed=seed, loss_curve=curve, wall_time_s=wall, train_size=n,
    )  # fmt: skip


def model_card(result: dict, command: str) -> dict:
    """The ``noisefast_model.json`` an Engine reads for the built-in model."""
    import diffusers
    import transformers

    return {
        "name": MODEL_NAME,
        "format_version": 1,
        "kind": "pixel",  # latent = pixel space: no VAE, samples are images
        "channels": UNET_CONFIG["in_channels"],
        "height": SIZE,
        "width": SIZE,
        "prediction_type": SCHEDULER_CONFIG["prediction_type"],
        "pixel_range": [-1.0, 1.0],
        "dataset": {"source": "sklearn.datasets.load_digits", "split": "train", "size": result["train_size"],
                    "pixel_range": [0, 16], "to_model_range": "x = p / 8 - 1"},
        "class_names": list(CLASS_NAMES),
        "prompt_template": PROMPT_TEMPLATE,
        "training_templates": list(TRAINING_TEMPLATES),
        "negative_prompt": NEGATIVE_PROMPT,
        "text_embedding": "last_hidden_state",  # prompt_embeds; no pooled embeds, no time_ids
        **SAMPLING_DEFAULTS,
        "seed": result["seed"],
        "recipe": result["recipe"],
        "command": command,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "final_loss": result["loss_curve"][-1]["loss"],
        "training_wall_time_s": round(result["wall_time_s"], 1),
        "training_log": "training_log.json",
    }  # fmt: skip


def save(result: dict, out: str | Path, command: str) -> Path:
    """Write the diffusers-style folder and the two json files; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["unet"].save_pretrained(out / "unet", safe_serialization=True)
    result["text_encoder"].save_pretrained(out / "text_encoder", safe_serialization=True)
    write_vocab_files(out / "tokenizer")  # vocab.json + merges.txt (CLIP's files)
    result["tokenizer"].save_pretrained(out / "tokenizer")  # tokenizer.json + tokenizer_config.json
    result["scheduler"].save_pretrained(out / "scheduler")
    (out / "noisefast_model.json").write_text(json.dumps(model_card(result, command), indent=2) + "\n")
    log = {"seed": result["seed"], "recipe": result["recipe"], "loss_curve": result["loss_curve"]}
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m noisefast.builtin.train_digits", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write the model into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {RECIPE['steps']})")
    p.add_argument("--threads", type=int, default=None, help=f"torch threads (default {RECIPE['threads']})")
    a = p.parse_args(argv)
    command = f"python -m noisefast.builtin.train_digits --out {a.out} --seed {a.seed}"
    command += (f" --steps {a.steps}" if a.steps is not None else "") + (f" --threads {a.threads}" if a.threads else "")
    result = train(seed=a.seed, steps=a.steps, threads=a.threads)
    save(result, a.out, command)
    print(f"wall time {result['wall_time_s']:.1f}s, final loss {result['loss_curve'][-1]['loss']:.5f} -> {a.out}")


if __name__ == "__main__":
    main()
