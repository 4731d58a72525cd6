"""The independent judge of the quality study: a digit classifier that never sees generated images.

It is an RBF support-vector machine on the 64 raw pixels (0..16), Platt-calibrated for probabilities
(scikit-learn ``CalibratedClassifierCV(SVC, method="sigmoid", ensemble=False)``), trained on the
``"judge"`` split of `noisefast.builtin.data` only — disjoint from the ``"train"`` split the built-in
diffusion model learned from. Its own accuracy is measured on that ``"train"`` split, which the judge
never saw. Training is deterministic (no shuffling anywhere) and takes well under a second, so the
judge is retrained on the fly and cached per process instead of shipping weights.

Usage::

    judge = get_judge()
    labels, probs = judge.classify(samples)   # samples [N, 1, 8, 8] or [N, 8, 8] in the model range [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from noisefast.builtin.data import SIZE, load_split, to_pixel_range

SVC_GAMMA = 0.001  # on raw 0..16 pixels; the classic digits setting
SVC_C = 10.0


@dataclass(frozen=True)
class Judge:
    model: object  # fitted sklearn classifier over [N, 64] pixels in 0..16
    heldout_accuracy: float  # accuracy on the "train" split (never seen by the judge)
    heldout_size: int

    def classify_pixels(self, pixels) -> tuple[np.ndarray, np.ndarray]:
        """(labels [N] int64, probabilities [N, 10]) for images ``pixels`` [N, 8, 8] in 0..16."""
        p = _as_numpy(pixels)
        if p.ndim != 3 or p.shape[1:] != (SIZE, SIZE):
            raise ValueError(f"judge expects pixels [N, {SIZE}, {SIZE}], got shape {p.shape}")
        probs = self.model.predict_proba(p.reshape(len(p), -1))
        return probs.argmax(axis=1).astype(np.int64), probs

    def classify(self, samples) -> tuple[np.ndarray, np.ndarray]:
        """(labels [N], probabilities [N, 10]) for model samples [N, 1, 8, 8] or [N, 8, 8] in [-1, 1].

        Samples are mapped back to the dataset range ``p = clip(8·(x + 1), 0, 16)`` first.
        """
        x = _as_numpy(samples)
        if x.ndim == 4:
            if x.shape[1] != 1:
                raise ValueError(f"judge expects 1-channel samples [N, 1, {SIZE}, {SIZE}], got shape {x.shape}")
            x = x[:, 0]
        if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
            raise ValueError(f"judge expects samples [N, 1, {SIZE}, {SIZE}] or [N, {SIZE}, {SIZE}], got shape {x.shape}")
        return self.classify_pixels(to_pixel_range(x))


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().to("cpu").double().numpy()
    return np.asarray(a, dtype=np.float64)


def train_judge() -> Judge:
    """Fit the judge on the "judge" split; measure its accuracy on the "train" split."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    x_fit, y_fit = load_split("judge")
    x_eval, y_eval = load_split("train")
    model = CalibratedClassifierCV(SVC(gamma=SVC_GAMMA, C=SVC_C), method="sigmoid", ensemble=False)
    model.fit(x_fit.reshape(len(x_fit), -1), y_fit)
    judge = Judge(model=model, heldout_accuracy=0.0, heldout_size=len(y_eval))
    labels, _ = judge.classify_pixels(x_eval)
    return Judge(model=model, heldout_accuracy=float((labels == y_eval).mean()), heldout_size=len(y_eval))


@lru_cache(maxsize=1)
def get_judge() -> Judge:
    """The judge, trained once per process."""
    return train_judge()


if __name__ == "__main__":
    j = get_judge()
    print(f"judge held-out accuracy: {j.heldout_accuracy:.4f} on {j.heldout_size} images of the 'train' split")
