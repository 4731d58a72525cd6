"""scikit-learn's bundled 8×8 handwritten digits: the deterministic split and the pixel mapping.

One split serves both sides of the quality study, so they can never overlap:
- ``"train"`` (60 %, stratified): what the built-in diffusion model is trained on;
- ``"judge"`` (40 %, stratified): what the independent judge classifier is trained on.
The judge's own accuracy is measured on ``"train"`` — images it never saw.

Pixels: the dataset's integer intensities 0..16 map affinely to the diffusion range [-1, 1]:
``x = p / 8 − 1`` and back ``p = 8·(x + 1)`` (clipped to [0, 16]). Latent = pixel space, 1 channel.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0
JUDGE_FRACTION = 0.4
SIZE = 8  # native resolution, kept (no upsampling)
PIXEL_MAX = 16.0
SPLITS = ("train", "judge")


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 8, 8] float64 in 0..16, labels [N] int64) of ``split`` ("train" or "judge")."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {SPLITS}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_judge, y_train, y_judge = train_test_split(
        digits.images, digits.target, test_size=JUDGE_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    x, y = (x_train, y_train) if split == "train" else (x_judge, y_judge)
    return np.ascontiguousarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def to_model_range(images):
    """0..16 intensities → [-1, 1]: ``x = p / 8 − 1`` (numpy or torch, any shape)."""
    return images / (PIXEL_MAX / 2) - 1.0


def to_pixel_range(x):
    """[-1, 1] model samples → 0..16 intensities: ``p = clip(8·(x + 1), 0, 16)`` (numpy or torch)."""
    p = (x + 1.0) * (PIXEL_MAX / 2)
    return p.clip(0.0, PIXEL_MAX)
