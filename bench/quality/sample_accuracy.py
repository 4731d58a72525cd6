"""How often the independent judge reads a built-in model's samples as the digit that was asked for.

    PYTHONPATH=. python bench/quality/sample_accuracy.py --per-class 50 --steps 10 20 --guidance 1 2 3 5

For every (steps, guidance) it draws ``--per-class`` samples of every digit (seeds 0..n-1, the same
noises for every class) with diffusers' DDIM loop, classifies them with the judge, and reports the
per-class and overall accuracy and the mean judge probability of the requested class. Writes JSON
(``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusers_sampling import sample_digits, seed_noise  # noqa: E402
from judge import get_judge  # noqa: E402

from noisefast.builtin import load_builtin_components, load_model_folder  # noqa: E402


def measure(components, per_class: int, steps: int, guidance: float) -> dict:
    cfg = components.config
    n_cls = len(cfg["class_names"])
    labels = np.repeat(np.arange(n_cls), per_class)
    noise = seed_noise(list(range(per_class)) * n_cls, (cfg["channels"], cfg["height"], cfg["width"]))
    t0 = time.perf_counter()
    x = sample_digits(components, labels, noise, steps=steps, guidance_scale=guidance)
    wall = time.perf_counter() - t0
    pred, probs = get_judge().classify(x)
    hit = pred == labels
    p_req = probs[np.arange(len(labels)), labels]
    return {
        "steps": steps,
        "guidance_scale": guidance,
        "per_class": per_class,
        "accuracy": float(hit.mean()),
        "mean_prob_requested": float(p_req.mean()),
        "accuracy_by_class": [float(hit[labels == c].mean()) for c in range(n_cls)],
        "sampling_wall_s": round(wall, 2),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:digits", help="builtin:<name> or a model folder")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--steps", type=int, nargs="+", default=[10])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file to write")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    comps = load_builtin_components(a.model) if a.model.startswith("builtin:") else load_model_folder(a.model)
    judge = get_judge()
    print(f"judge held-out accuracy {judge.heldout_accuracy:.4f} ({judge.heldout_size} images)")
    rows = [measure(comps, a.per_class, s, w) for s in a.steps for w in a.guidance]
    print("| steps | guidance | accuracy | mean p(requested) | per class (0..9) |")
    print("|---|---|---|---|---|")
    for r in rows:
        per = " ".join(f"{v:.2f}" for v in r["accuracy_by_class"])
        print(f"| {r['steps']} | {r['guidance_scale']} | {r['accuracy']:.3f} | {r['mean_prob_requested']:.3f} | {per} |")
    if a.out:
        report = {"model": a.model, "command": "PYTHONPATH=. python bench/quality/sample_accuracy.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "judge_heldout_accuracy": judge.heldout_accuracy, "rows": rows}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
