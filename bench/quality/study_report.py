"""Markdown tables of a quality-study report (`study.py`'s JSON)."""

from __future__ import annotations


def _ci(m: dict, digits: int = 3) -> str:
    lo, hi = m["ci"]
    return f"{m['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _win(w: dict) -> str:
    lo, hi = w["ci"]
    return f"{w['win_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _rho(sp: dict | None, constant: str = "a constant sample") -> str:
    if sp is None or sp["rho"] is None:
        return f"undefined ({constant})"
    return f"{sp['rho']:+.3f} (p = {sp['p']:.2g})"


def _r(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _setting(r: dict) -> str:
    return f"{r['steps']}+{r['inversion_steps']} steps, guidance {r['guidance_scale']:g}"


def _selection(r: dict) -> list[str]:
    s, n = r["summary"], r["n"]
    lines = [
        f"### Selection — {_setting(r)} (K = {r['k']} seeds × 10 digits; {r['wall_s']} s, scoring {r['scoring_wall_s']} s)",
        "",
        f"All {10 * r['k']} samples: judge accuracy {s['accuracy_all']:.3f}, mean confidence {s['confidence_all']:.3f}, "
        f"{s['misclassified']} misclassified"
        + ("" if s["misclassified_rank_percentile"] is None
           else f" (mean stability-rank percentile of the misclassified: {s['misclassified_rank_percentile']:.2f}; 0 = most stable)")
        + ".",
        "",
        "| seeds per digit | samples | stability | judge accuracy | judge confidence p(digit) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    labels = {"best": "most stable (1)", "random": "random (1)", "worst": "least stable (1)",
              f"top{n}": f"top {n}", f"random{n}": f"random {n}", f"bottom{n}": f"bottom {n}"}  # fmt: skip
    for key, label in labels.items():
        g = s["groups"][key]
        lines.append(f"| {label} | {g['confidence']['n']} | {_ci(g['stability'])} | {_ci(g['accuracy'])} | {_ci(g['confidence'])} |")
    w = s["confidence_win_rates"]
    sp, spc = s["spearman_stability_confidence"], s["spearman_within_class"]
    lines += [
        "",
        "| confidence win rate (ties ½) | most stable vs least | most stable vs random | random vs least "
        f"| top {n} vs bottom {n} | top {n} vs random {n} | random {n} vs bottom {n} |",
        "|---|---|---|---|---|---|---|",
        "| win rate [95 % CI] | " + " | ".join(_win(w[k]) for k in (
            "best_vs_worst", "best_vs_random", "random_vs_worst",
            f"top{n}_vs_bottom{n}", f"top{n}_vs_random{n}", f"random{n}_vs_bottom{n}")) + " |",
        "",
        f"Spearman ρ(stability, confidence) over all {sp['n']} samples: {_rho(sp)}; "
        f"ρ(stability, correct): {_rho(s['spearman_stability_correct'], 'every sample judged alike')}; "
        f"mean within-digit ρ(stability, confidence): {_r(spc['mean'])} (per digit {', '.join(map(_r, spc['per_class']))}).",
        "",
    ]  # fmt: skip
    return lines


def _sweep(sweep: dict) -> list[str]:
    chosen = "none (all diverged)" if sweep["chosen_lr"] is None else f"**{sweep['chosen_lr']:g}**"
    if sweep["renorm"]:
        head = (f"Learning-rate sweep of the shell variant (‖ε‖ renormalised to √D after every update), chosen by "
                f"mean final stability — the confidence columns are reported, never used to choose: chosen lr = {chosen}.")
    else:
        head = (f"The same sweep without renormalisation (Algorithm 2 as published; highest stability at lr {chosen}, "
                "not used — the paper variant below keeps the dimension-scaled lr):")
    lines = [
        head + f" {sweep['iterations']} iterations, momentum {sweep['momentum']}, seeds {sweep['seeds'][0]}…"
        f"{sweep['seeds'][-1]} (outside the pool, one per digit).",
        "",
        "| lr | stability before | stability after | ‖ε‖/√D after | confidence before | confidence after | wall s |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in sweep["rows"]:
        lines.append(f"| {r['lr']:g} | {r['initial_stability']:.3f} | {r['final_stability']:.3f} | "
                     f"{r['norm_over_sqrt_d']:.3f} | {r['initial_confidence']:.3f} | {r['final_confidence']:.3f} | {r['wall_s']} |")  # fmt: skip
    return lines + [""]


def _optimization(o: dict, sweeps: list[dict], selection: list[dict]) -> list[str]:
    lines = [f"### Optimisation — {o['steps']}+{o['inversion_steps']} steps, guidance {o['guidance_scale']:g}", ""]
    for sweep in sweeps:
        lines += _sweep(sweep)
    b = o["before"]
    lines += [
        f"{o['per_class']} random pool seeds per digit ({o['per_class'] * 10} noises, D = {o['latent_dim']}), "
        f"momentum {o['momentum']}; every noise before (ε_0) and after (ε_final):",
        "",
        "| noise | lr | iterations | stability | judge confidence | judge accuracy | ‖ε‖/√D | Δ confidence (paired) "
        "| win rate: stability | win rate: confidence | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| initial ε_0 | | | {_ci(b['stability'])} | {_ci(b['confidence'])} | {_ci(b['accuracy'])} | "
        f"{_ci(b['norm_over_sqrt_d'])} | | | | |",
    ]  # fmt: skip
    for v in o["variants"]:
        label = "optimised, paper (no renorm)" if v["name"] == "paper" else f"optimised, {v['name']} (‖ε‖ = √D)"
        lines.append(
            f"| {label} | {v['lr']:.4g} | {v['iterations']} | {_ci(v['stability'])} | {_ci(v['confidence'])} | {_ci(v['accuracy'])} | "
            f"{_ci(v['norm_over_sqrt_d'])} | {_ci(v['confidence_change'], 4)} | {_win(v['stability_win_rate'])} | "
            f"{_win(v['confidence_win_rate'])} | {v['optimize_wall_s']} |"
        )
    lines.append("")
    lines += [f"- {v['name']} lr: {v['lr_rule']}." for v in o["variants"]]
    ref = next((r for r in selection if (r["steps"], r["guidance_scale"]) == (o["steps"], o["guidance_scale"])), None)
    if ref is not None:
        best = ref["summary"]["groups"]["best"]
        lines.append(f"- For comparison, the most stable of K = {ref['k']} seeds at this setting: stability "
                     f"{_ci(best['stability'])}, confidence {_ci(best['confidence'])}.")  # fmt: skip
    return lines + [""]


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"## Quality study — {report['model']}",
        "",
        f"`{report['command']}` — {report['date_utc']}, {m['cpu']} ({m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} thread(s), load average at start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or [])}); "
        f"total {report['total_wall_s']} s. Judge held-out accuracy {report['judge_heldout_accuracy']:.4f}.",
        "",
        "Means with 95 % percentile-bootstrap intervals (seeds resampled within each digit; the single "
        "most stable / random / least stable pick resamples the 10 digits). Confidence = the judge's "
        "probability of the requested digit.",
        "",
    ]  # fmt: skip
    for r in report["selection"]:
        lines += _selection(r)
    if "optimization" in report:
        lines += _optimization(report["optimization"], report.get("lr_sweeps", []), report["selection"])
    return "\n".join(lines)
