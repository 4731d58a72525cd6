"""The quality study: do stable noises give better samples of builtin:digits, as judged independently?

    PYTHONPATH=. python bench/quality/study.py --k 100 --out bench/quality/results/study.json

1. Selection (Algorithm 1), for every setting (DDIM steps N = N', guidance w_d; inversion guidance 1):
   for every digit c, score seeds 0 … K−1 with `select_noise` under the condition of c's prompt,
   denoise every one of those noises with `denoise`, and let the judge (`judge.py`, never trained on
   generated images) read each sample: correct = (label == c), confidence = p(c). Compare the single
   most stable / a random / the least stable seed of each class, and the top-n / a random n / the
   bottom-n seeds; Spearman's ρ of stability vs confidence over all K·10 samples.
2. Optimisation (Algorithm 2) at one setting, on ``--opt-seeds`` random pool seeds per class, each noise
   compared before and after. Two variants on the same seeds: "paper" — Algorithm 2 as published (no
   renormalisation, the paper's 100 iterations), lr = the paper's 100 scaled by D/D_SDXL; "shell" — every update projected back onto
   ‖ε‖ = √D (``renorm``), lr chosen by a sweep on seeds K … K+9 (outside the pool, one per digit) by the
   mean stability reached — never by the judge. The same sweep without renormalisation is reported too.

Writes the JSON report (every per-sample number included) and ``<out>.md``, and prints the markdown.
Statistics: `study_stats.py` (95 % percentile bootstrap; win rates with ties counted half).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_stats as stats  # noqa: E402
from judge import get_judge  # noqa: E402
from study_report import render_markdown  # noqa: E402

from noisefast.builtin.prompts import class_prompt  # noqa: E402
from noisefast.defaults import DEFAULT_ITERATIONS, DEFAULT_LR, DEFAULT_MOMENTUM  # noqa: E402
from noisefast.optimize import optimize_noise  # noqa: E402
from noisefast.pipeline import Engine  # noqa: E402
from noisefast.selection import select_noise  # noqa: E402
from noisefast.transform import denoise  # noqa: E402

DEFAULT_SETTINGS = ("10:2", "10:1", "4:1")  # the model's default (10 steps, w 2), conditional only, few steps
DEFAULT_LRS = (3.0, 10.0, 30.0, 100.0)  # swept for the shell-projected variant
# The paper's lr (100) is for SDXL latents at 1024², D = 4·128·128. ∇_ε cos(ε, F(ε)) has norm ~ 1/‖ε‖ = 1/√D, so an
# update moves ε by ~lr/√D, i.e. lr/D relative to ‖ε‖ = √D: the same relative step here needs lr·D/D_SDXL.
SDXL_LATENT_DIM = 4 * 128 * 128
CLASSES = 10


def parse_setting(text: str) -> tuple[int, float]:
    """``"STEPS:GUIDANCE"`` → (steps, guidance); the inversion uses the same number of steps."""
    try:
        steps, guidance = text.split(":")
        out = int(steps), float(guidance)
    except ValueError:
        raise argparse.ArgumentTypeError(f"setting must be STEPS:GUIDANCE like 10:2, got {text!r}") from None
    if out[0] < 1:
        raise argparse.ArgumentTypeError(f"steps must be ≥ 1 in {text!r}")
    return out


class Study:
    """The engine, the judge and the fixed random picks shared by every part of the study."""

    def __init__(self, engine: Engine, k: int, n: int, seed: int, resamples: int):
        if not 1 <= n <= k:
            raise ValueError(f"need 1 ≤ n ≤ k, got n={n}, k={k}")
        self.engine, self.k, self.n, self.resamples = engine, k, n, resamples
        self.judge = get_judge()
        rng = np.random.default_rng(seed)  # the "random seed" baselines: drawn once, same for every setting
        self.random_one = rng.integers(0, k, size=CLASSES)  # [G] a pool index per class
        self.random_n = np.stack([rng.choice(k, n, replace=False) for _ in range(CLASSES)])  # [G, n]
        self.rng = rng
        self.prompts = [class_prompt(c) for c in range(CLASSES)]

    def settings(self, steps: int, guidance: float):
        return self.engine.settings(steps=steps, inversion_steps=steps, guidance_scale=guidance)

    def judge_samples(self, noise: torch.Tensor, cond, s, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(correct [B] bool, p(requested) [B]) for the samples D(noise) under ``cond`` (batch B or 1)."""
        e = self.engine
        with torch.inference_mode():
            x0 = denoise(e.den, e.schedule(s), noise.to(e.dtype), cond, s.guidance_scale, max_batch=s.batch_size)
        pred, probs = self.judge.classify(x0.float())
        return pred == labels, probs[np.arange(len(labels)), labels]

    # --- 1. selection ------------------------------------------------------------------------------------
    def selection(self, steps: int, guidance: float) -> dict:
        e, s = self.engine, self.settings(steps, guidance)
        k, seeds = self.k, list(range(self.k))
        stability, correct, conf = (np.zeros((CLASSES, k)) for _ in range(3))  # [G, K] each, in seed order
        noise = e.noise(seeds, s)  # [K, C, h, w] the same candidates for every class
        t0 = time.perf_counter()
        score_s = 0.0
        for c in range(CLASSES):
            cond = e.encode(self.prompts[c], None, s)
            t = time.perf_counter()
            sel = select_noise(e.den, e.schedule(s), cond, seeds=seeds, shape=e.latent_shape(s),
                               guidance_scale=s.guidance_scale, inversion_guidance_scale=s.inversion_guidance_scale,
                               generator_device="cpu", dtype=e.dtype, device=e.device, max_batch=k)  # fmt: skip
            score_s += time.perf_counter() - t
            stability[c, list(sel.seeds)] = sel.scores.double().numpy()
            correct[c], conf[c] = self.judge_samples(noise, cond, s, np.full(k, c))
        wall = time.perf_counter() - t0
        return {
            "steps": steps, "inversion_steps": steps, "guidance_scale": guidance,
            "inversion_guidance_scale": s.inversion_guidance_scale, "k": k, "n": self.n,
            "wall_s": round(wall, 1), "scoring_wall_s": round(score_s, 1),
            "summary": self.summarize_selection(stability, correct, conf),
            "stability": np.round(stability, 5).tolist(), "correct": correct.astype(int).tolist(),
            "confidence": np.round(conf, 5).tolist(),
        }  # fmt: skip

    def summarize_selection(self, stability: np.ndarray, correct: np.ndarray, conf: np.ndarray) -> dict:
        order = np.argsort(-stability, axis=1, kind="stable")  # [G, K] most → least stable
        rows = np.arange(CLASSES)[:, None]
        picks = {  # name → [G, m] pool indices
            "best": order[:, :1], "random": self.random_one[:, None], "worst": order[:, -1:],
            f"top{self.n}": order[:, : self.n], f"random{self.n}": self.random_n, f"bottom{self.n}": order[:, -self.n :],
        }  # fmt: skip
        r = self.resamples
        groups = {
            name: {
                "stability": stats.mean_ci(stability[rows, idx], resamples=r),
                "accuracy": stats.mean_ci(correct[rows, idx], resamples=r),
                "confidence": stats.mean_ci(conf[rows, idx], resamples=r),
                "indices": idx.tolist(),
            }
            for name, idx in picks.items()
        }
        n = self.n
        pairs = [("best", "worst"), ("best", "random"), ("random", "worst"),
                 (f"top{n}", f"bottom{n}"), (f"top{n}", f"random{n}"), (f"random{n}", f"bottom{n}")]  # fmt: skip
        wins = {f"{a}_vs_{b}": stats.win_rate(conf[rows, picks[a]], conf[rows, picks[b]], resamples=r) for a, b in pairs}
        per_class_rho = [stats.spearman(stability[c], conf[c])["rho"] for c in range(CLASSES)]
        # where the judge's failures fall in each class's stability ranking: 0 = most stable, 1 = least
        rank = np.argsort(order, axis=1) / max(self.k - 1, 1)  # [G, K] rank percentile of each seed
        wrong = correct == 0
        return {
            "groups": groups,
            "confidence_win_rates": wins,
            "spearman_stability_confidence": stats.spearman(stability, conf),
            "spearman_within_class": {"mean": _mean_defined(per_class_rho), "per_class": per_class_rho},
            "spearman_stability_correct": stats.spearman(stability, correct),
            "accuracy_all": float(correct.mean()),
            "confidence_all": float(conf.mean()),
            "misclassified": int(wrong.sum()),
            "misclassified_rank_percentile": float(rank[wrong].mean()) if wrong.any() else None,
        }

    # --- 2. optimisation ---------------------------------------------------------------------------------
    def _optimize(self, s, seeds: list[int], labels: np.ndarray, iterations: int, lr: float, momentum: float, renorm: bool):
        e = self.engine
        cond = e.encode([self.prompts[c] for c in labels], None, s)
        noise = e.noise(seeds, s).float()  # [B, C, h, w] ε_0
        res = optimize_noise(e.den, e.schedule(s), noise, cond, iterations, lr, momentum,
                             guidance_scale=s.guidance_scale, inversion_guidance_scale=s.inversion_guidance_scale,
                             renorm=renorm, checkpoint=False)  # fmt: skip  (8×8 pixels: recomputing would only cost time)
        return noise, cond, res

    def lr_sweep(self, steps: int, guidance: float, iterations: int, lrs, momentum: float, renorm: bool) -> dict:
        """Mean stability reached per learning rate on seeds K … K+9 (one per digit, outside the pool).

        The choice is the lr with the highest mean final stability; the judge's confidence is reported
        alongside but never used to choose.
        """
        s = self.settings(steps, guidance)
        seeds, labels = [self.k + c for c in range(CLASSES)], np.arange(CLASSES)
        rows, conf0 = [], None
        for lr in lrs:
            t = time.perf_counter()
            noise, cond, res = self._optimize(s, seeds, labels, iterations, lr, momentum, renorm)
            if conf0 is None:
                conf0 = float(self.judge_samples(noise, cond, s, labels)[1].mean())
            final = res.final_score.double().numpy()
            rows.append({
                "lr": lr, "initial_stability": float(res.initial_score.mean()),
                "final_stability": float(final.mean()) if np.isfinite(final).all() else float("nan"),
                "norm_over_sqrt_d": float((res.noise.flatten(1).norm(dim=1) / noise[0].numel() ** 0.5).mean()),
                "initial_confidence": conf0, "final_confidence": float(self.judge_samples(res.noise, cond, s, labels)[1].mean()),
                "stop_reason": res.stop_reason, "wall_s": round(time.perf_counter() - t, 1),
            })  # fmt: skip
        finite = [r for r in rows if np.isfinite(r["final_stability"])]
        chosen = max(finite, key=lambda r: r["final_stability"])["lr"] if finite else None
        return {"seeds": seeds, "iterations": iterations, "momentum": momentum, "renorm": renorm, "rows": rows,
                "chosen_lr": chosen}  # fmt: skip

    def optimization(self, steps: int, guidance: float, per_class: int, momentum: float, variants: list[dict]) -> dict:
        """Each variant ({"name", "lr", "renorm", "iterations", "lr_rule"}) optimises the same random pool seeds."""
        s = self.settings(steps, guidance)
        pool = np.stack([self.rng.choice(self.k, per_class, replace=False) for _ in range(CLASSES)])  # [G, m]
        labels = np.repeat(np.arange(CLASSES), per_class)  # [B]
        g = lambda a: np.asarray(a, dtype=np.float64).reshape(CLASSES, per_class)  # noqa: E731  [B] → [G, m]
        r = self.resamples
        out = {"steps": steps, "inversion_steps": steps, "guidance_scale": guidance, "per_class": per_class,
               "momentum": momentum, "seeds": pool.tolist(), "variants": []}  # fmt: skip
        for v in variants:
            t0 = time.perf_counter()
            noise, cond, res = self._optimize(s, pool.ravel().tolist(), labels, v["iterations"], v["lr"], momentum, v["renorm"])
            wall = time.perf_counter() - t0
            ok1, p1 = self.judge_samples(res.noise, cond, s, labels)
            if "before" not in out:  # ε_0 is the same for every variant
                ok0, p0 = self.judge_samples(noise, cond, s, labels)
                s0 = g(res.initial_score.double())
                out["latent_dim"] = d = noise[0].numel()
                out["before"] = {"stability": stats.mean_ci(s0, resamples=r), "confidence": stats.mean_ci(g(p0), resamples=r),
                                 "accuracy": stats.mean_ci(g(ok0), resamples=r),
                                 "norm_over_sqrt_d": stats.mean_ci(g(noise.flatten(1).norm(dim=1) / d**0.5), resamples=r),
                                 "per_sample": {"stability": s0.round(5).tolist(), "confidence": g(p0).round(5).tolist()}}  # fmt: skip
            s1 = g(res.final_score.double())
            out["variants"].append({
                **v, "optimize_wall_s": round(wall, 1), "stop_reason": res.stop_reason,
                "stability": stats.mean_ci(s1, resamples=r), "confidence": stats.mean_ci(g(p1), resamples=r),
                "accuracy": stats.mean_ci(g(ok1), resamples=r),
                "norm_over_sqrt_d": stats.mean_ci(g(res.noise.flatten(1).norm(dim=1) / d**0.5), resamples=r),
                "stability_change": stats.mean_ci(s1 - s0, resamples=r),
                "confidence_change": stats.mean_ci(g(p1) - g(p0), resamples=r),
                "stability_win_rate": stats.paired_win_rate(s1, s0, resamples=r),
                "confidence_win_rate": stats.paired_win_rate(g(p1), g(p0), resamples=r),
                "per_sample": {"stability": s1.round(5).tolist(), "confidence": g(p1).round(5).tolist()},
            })  # fmt: skip
        return out


def _mean_defined(values) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:digits")
    p.add_argument("--k", type=int, default=100, help="candidate seeds per class (pool 0 … K−1)")
    p.add_argument("--n", type=int, default=10, help="size of the top-n / random-n / bottom-n groups")
    p.add_argument("--settings", type=parse_setting, nargs="+", default=[parse_setting(x) for x in DEFAULT_SETTINGS],
                   help="STEPS:GUIDANCE for the selection part (inversion: same steps, guidance 1)")  # fmt: skip
    p.add_argument("--opt-setting", type=parse_setting, default=parse_setting("10:2"))
    p.add_argument("--opt-seeds", type=int, default=5, help="random pool seeds per class to optimise (0: skip)")
    p.add_argument("--opt-iterations", type=int, default=20, help="iterations of the shell variant and its lr sweep")
    p.add_argument("--paper-iterations", type=int, default=DEFAULT_ITERATIONS, help="iterations of the paper variant")
    p.add_argument("--paper-lr", type=float, default=None,
                   help="lr of the paper variant (no renormalisation); default the paper's 100 scaled by D/D_SDXL")
    p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS),
                   help="learning rates swept (with and without renormalisation to ‖ε‖ = √D)")
    p.add_argument("--momentum", type=float, default=DEFAULT_MOMENTUM)
    p.add_argument("--seed", type=int, default=0, help="RNG of the random baselines and of the optimised seeds")
    p.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON report; the markdown goes next to it (.md)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    study = Study(Engine.from_pretrained(a.model, device="cpu"), a.k, a.n, a.seed, a.resamples)
    report = {
        "command": "PYTHONPATH=. python bench/quality/study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date_utc": started, "machine": machine(), "model": a.model,
        "judge_heldout_accuracy": study.judge.heldout_accuracy, "statistics": stats.__doc__.strip(),
        "selection": [study.selection(steps, w) for steps, w in a.settings],
    }  # fmt: skip
    if a.opt_seeds > 0:
        steps, w = a.opt_setting
        d = int(np.prod(study.engine.latent_shape(study.settings(steps, w))))
        paper_lr = DEFAULT_LR * d / SDXL_LATENT_DIM if a.paper_lr is None else a.paper_lr
        rule = f"paper's {DEFAULT_LR:g} × D/D_SDXL = {DEFAULT_LR:g}·{d}/{SDXL_LATENT_DIM}" if a.paper_lr is None else "--paper-lr"
        variants = [{"name": "paper", "renorm": False, "lr": paper_lr, "iterations": a.paper_iterations, "lr_rule": rule}]
        # the same grid without renormalisation documents what the stability rewards off the Gaussian shell;
        # its choice is not used (the paper variant keeps the dimension-scaled lr)
        report["lr_sweeps"] = [study.lr_sweep(steps, w, a.opt_iterations, a.lrs, a.momentum, renorm=False),
                               sweep := study.lr_sweep(steps, w, a.opt_iterations, a.lrs, a.momentum, renorm=True)]
        if sweep["chosen_lr"] is not None:
            variants.append({"name": "shell", "renorm": True, "lr": sweep["chosen_lr"], "iterations": a.opt_iterations,
                             "lr_rule": "sweep: highest mean final stability on seeds outside the pool"})  # fmt: skip
        report["optimization"] = study.optimization(steps, w, a.opt_seeds, a.momentum, variants)
    report["total_wall_s"] = round(time.perf_counter() - t0, 1)
    md = render_markdown(report)
    print(md)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(md)
    return report


if __name__ == "__main__":
    main()
