"""Markdown for a `bench.compare` result: a headline table (what README shows), then one table per part.

Times are medians; ``±`` is the interquartile range relative to the median (the JSON keeps min, quartiles,
max and n of every number).
"""

from __future__ import annotations

from bench.common import md_table, spread_pct


def _med(s: dict) -> str:
    """median ±IQR/median of a `bench.common.summarize` dict."""
    if s["n"] < 2:
        return f"{s['median']:.3f} (n=1)"
    return f"{s['median']:.3f} ±{spread_pct(s):.0f}%"


def _mib(b) -> str:
    return "–" if b is None else f"{b / 2**20:.2f}"


def _met(m) -> str:
    return "pending (no GPU in this run)" if m is None else ("✓" if m else "✗")


def headline(r: dict) -> str:
    rows = []
    sc = r.get("scoring", {})
    for run in sc.get("runs", []):
        st, rate = run["settings"], run["noises_per_second"]
        where = f"{run['model'].split(',')[0].split('(')[0].strip()}; {st['height']}², {st['steps']}+{st['inversion_steps']} steps, {st['seeds']} seeds"
        for base in _baselines(run):
            strongest = base == run.get("strongest_baseline", base)
            ratio = rate["noisefast"] / rate[base]
            rows.append([f"scoring, noises/s vs {WAYS.get(base, base)} ({where})", f"{rate[base]:.2f}",
                         f"{rate['noisefast']:.2f}", f"**{ratio:.2f}×**" if strongest else f"{ratio:.2f}×"])
    dg = r.get("digits", {}).get("scoring", {})
    for c in dg.get("conditions", []):
        rate = c["seeds_per_s"]
        rows.append([f"builtin:digits select ({dg['seeds']} seeds, 10+10), seeds/s: eager torch (1 thread, CLI default) → "
                     f"auto; {c['competing_processes']} competing CPU-bound process(es), load "
                     f"{c['load_average_1m'][0]:.1f}–{c['load_average_1m'][1]:.1f}", f"{rate['torch']:.1f}",
                     f"{rate['auto']:.1f}", f"**{c['auto_vs_torch']:.2f}×**"])
    do = r.get("digits", {}).get("optimize", {}).get("s_per_iteration", {})
    if do:
        rows.append(["builtin:digits optimization, s/iteration: all-torch → ONNX Runtime forward + torch backward",
                     f"{do['torch']['median']:.3f}", f"{do['onnxruntime_forward']['median']:.3f}",
                     f"{do['ratio_torch_over_onnxruntime_forward']:.2f}×"])
    kr = r.get("kernels", {})
    if "rows" in kr:
        rows.append([f"fused kernels, speed-up (geomean of {len(kr['rows'])} op × shape × dtype)", "eager torch",
                     "fused ops", f"**{kr['geomean_speedup']:.2f}×**"])
        if r["settings"]["device"] == "cuda":
            rows.append(["fused kernels, % of device-copy GB/s (worst op)", "copy", "", f"**{kr['min_pct_of_copy']:.0f}%**"])
    op = r.get("optimize", {})
    for q in op.get("ratios", []):
        by = {x["mode"]: x for x in op["rows"] if x["steps"] == q["steps"]}
        plain, ck = by["plain"], by["checkpoint"]
        rows.append([f"optimization, s/iteration ({q['steps']}+{q['steps']} steps; plain autograd → checkpointed)",
                     f"{plain['s_per_iter']:.3f}", f"{ck['s_per_iter']:.3f}", f"{q['time_ratio']:.2f}× the time"])
        key, unit = (("cuda_max_memory_allocated", "CUDA peak GiB") if "cuda_max_memory_allocated" in plain
                     else ("peak_saved_bytes", "peak saved-for-backward MiB"))
        div = 2**30 if key.startswith("cuda") else 2**20
        rows.append([f"optimization, {unit} (plain → checkpointed)", f"{plain[key] / div:.2f}", f"{ck[key] / div:.2f}",
                     f"**{plain[key] / ck[key]:.1f}× less**"])
    un = r.get("unet", {})
    if "rows" in un:
        best = max(un["rows"], key=lambda x: x["pct_of_matmul_peak"], default=None)
        if best:
            rows.append([f"UNet call, TFLOP/s vs matmul peak (best: {best['backend']}, {best['resolution']}², batch {best['batch']})",
                         f"{un['matmul_peak']['tflops']:.3g}", f"{best['tflops']:.3g}", f"**{best['pct_of_matmul_peak']:.0f}%**"])
    table = md_table(["measured", "baseline", "noisefast", "noisefast vs baseline"], rows, "lrrr")
    tg = md_table(["target", "goal", "measured", "met"],
                  [[t["what"], t["target"], "–" if t["value"] is None else f"{t['value']:.2f}{t['unit']}", _met(t["met"])]
                   for t in r.get("targets", [])], "llrl")
    return table + "\n\n" + tg


def _kernels(k: dict, cuda: bool) -> str:
    rows = [[x["case"], "×".join(map(str, x["shape"])), x["dtype"], _med(x["eager_ms_stats"]), _med(x["fused_ms_stats"]),
             f"**{x['speedup']:.2f}×**"] + ([f"{x['fused_gbs']:.0f}", f"{x['copy_gbs']:.0f}", f"{x['pct_of_copy']:.0f}%"]
                                           if cuda else []) for x in k["rows"]]
    head = ["op", "latent", "dtype", "eager ms", "fused ms", "speed-up"] + (["fused GB/s", "copy GB/s", "% of copy"] if cuda else [])
    note = "" if cuda else "\n\n(CPU: the latents stay in cache between calls, so bandwidth says little there and is only in the JSON.)"
    return md_table(head, rows, "lll" + "r" * (len(head) - 3)) + note


WAYS = {"diffusers_user": "diffusers per seed", "diffusers_batched": "diffusers batched",
        "diffusers_batched_compile": "diffusers batched + torch.compile", "noisefast": "noisefast",
        "noisefast_torch": "noisefast on eager torch"}


def _auto_choice(info: dict | None) -> str:
    """``onnxruntime at ≤16 rows (12.1 vs torch 20.3 ms/call), …`` from an `AutoDenoiser.describe`."""
    if not info or not info.get("decisions"):
        return ""
    parts = []
    for d in info["decisions"]:
        ms = d.get("ms_per_call") or {}
        others = ", ".join(f"{n} {v:.1f}" for n, v in ms.items() if n != d["chosen"] and v is not None)
        parts.append(f"{d['chosen']} at ≤{d['shape']['rows_bucket']} rows ({ms.get(d['chosen']) or 0:.1f} ms/call; {others})")
    return "auto chose: " + "; ".join(parts)


def _baselines(run: dict) -> list[str]:
    """Baseline names of a scoring run (old results: the per-seed user only)."""
    return run.get("baselines", ["diffusers_user"])


def _seconds(run: dict, name: str) -> str:
    s = run["seconds"][name]
    return _med(s) if isinstance(s, dict) else f"{sorted(s)[len(s) // 2]:.3f}"


def _scoring(s: dict) -> str:
    out = []
    for run in s["runs"]:
        st = run["settings"]
        diff = run.get("score_diff_vs_noisefast", {})
        rows = [[WAYS.get(name, name), _seconds(run, name), f"{run['noises_per_second'][name]:.2f}",
                 "–" if name == "noisefast" else f"{run['noises_per_second']['noisefast'] / run['noises_per_second'][name]:.2f}×",
                 f"{diff[name]:.1e}" if name in diff else "–"] for name in run["noises_per_second"]]
        agree = (f"; scores agree within the error-model tolerance {run['score_tolerance']:.1e}: "
                 f"{'yes' if run['scores_agree'] else '**no**'}" if "score_tolerance" in run else "")
        choice = _auto_choice(run.get("noisefast_backend"))
        out.append(f"{run['model']}; baseline: {run['baseline']}; settings: "
                   + ", ".join(f"{k}={v}" for k, v in st.items()) + "\n\n"
                   + md_table(["way", "s per run", "noises/s", "noisefast ×", "max |Δscore| vs noisefast"], rows, "lrrrr")
                   + f"\n\nratio vs the strongest baseline ({run.get('strongest_baseline', 'diffusers_user')}): "
                   f"**{run['ratio']:.2f}×**, max |Δscore| of the baselines: {run['max_abs_score_diff']:.1e}{agree}"
                   + (f"\n\n{choice}" if choice else ""))
    return "\n\n".join(out)


def _optimize(o: dict) -> str:
    cuda = any("cuda_max_memory_allocated" in x for x in o["rows"])
    rows = [[f"{x['steps']}+{x['steps']}", x["mode"], _med(x["s_per_iter_stats"]), _mib(x["saved_bytes"]), _mib(x["peak_saved_bytes"])]
            + ([f"{x['cuda_max_memory_allocated'] / 2**30:.2f}"] if cuda else []) for x in o["rows"]]
    head = ["steps", "mode", "s / iteration", "saved for backward MiB", "peak saved MiB"] + (["CUDA peak GiB"] if cuda else [])
    return f"{o['model']}; latent {o['latent']}\n\n" + md_table(head, rows, "ll" + "r" * (len(head) - 2))


def _unet(u: dict) -> str:
    p = u["matmul_peak"]
    rows = [[x["backend"], f"{x['resolution']}²", x["batch"], _med(x["ms_per_call"]), f"{x['images_per_s']:.1f}",
             f"{x['counted_gflop_per_call']:.1f}", "–" if x["documented_gflop_per_call"] is None else f"{x['documented_gflop_per_call']:.0f}",
             f"{x['tflops']:.3g}", f"**{x['pct_of_matmul_peak']:.0f}%**"] for x in u["rows"]]
    text = (f"{u['model']}; matmul peak ({p['dtype']} {p['n']}³, same run): {p['tflops']:.3g} TFLOP/s "
            f"(median of {p['ms']['n']}; best {p['tflops_best']:.3g})\n\n"
            + md_table(["backend", "image", "batch", "ms / call", "images/s", "GFLOP / call (counted)",
                        "GFLOP / call (documented)", "TFLOP/s", "% of matmul peak"], rows, "lllrrrrrr"))
    if u.get("skipped"):
        text += "\n\n" + "\n".join(f"- skipped: {sk['backend']} {sk['resolution']}² batch {sk['batch']}: {sk['reason']}"
                                    for sk in u["skipped"])
    return text


def _digits(d: dict) -> str:
    if "skipped" in d:
        return f"skipped: {d['skipped']}"
    sc, op = d["scoring"], d["optimize"]
    names = list(sc["conditions"][0]["seeds_per_s"]) if sc["conditions"] else []
    rows = [[c["competing_processes"], f"{c['load_average_1m'][0]:.2f} → {c['load_average_1m'][1]:.2f}"]
            + [f"{c['seeds_per_s'][n]:.1f}" for n in names] + [f"**{c['auto_vs_torch']:.2f}×**"]
            for c in sc["conditions"]]
    table = md_table(["competing CPU-bound processes", "load average"] + [f"{n} seeds/s" for n in names]
                     + ["auto / torch"], rows, "lr" + "r" * (len(names) + 1))
    opt = md_table(["way", "s / iteration (median)"], [[k, f"{v['median']:.3f}"] for k, v in op["s_per_iteration"].items()
                                                        if isinstance(v, dict)], "lr")
    return (f"`Engine.select` of {sc['seeds']} seeds (round-robin, {sc['repeats']} repeats; auto's decisions cached after "
            f"its first run in a fresh cache, which took {sc['auto_first_run_s']:.1f} s); best seed auto / torch: "
            f"{sc['best_seed']['auto']} / {sc['best_seed']['torch']}, max |Δscore| {sc['max_abs_score_diff_auto_vs_torch']:.1e}"
            f"\n\n{table}\n\n{_auto_choice(sc['auto_backend'])}\n\nOptimization ({op['iterations']} iterations per run, "
            f"1 seed): \n\n{opt}")


def _realscale(r: dict) -> str:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    rows = []
    for name, x in r["stages"].items():
        load = f"{x['load_average_1m'][0]:.1f} → {x['load_average_1m'][1]:.1f}"
        if "error" in x:
            rows.append([name, "**failed**: " + x["error"], "", "", "", "", "", load])
        elif name == "export":
            size = sum(x["files"].values()) / 2**30
            rows.append([name, f"{x['export_s']:.0f} (files {size:.1f} GiB, external data: {x['external_data']})", "",
                         "", "", "", f"{x['peak_rss_gib']:.1f}", load])
        else:
            parity = f"; max rel Δ vs eager {x['max_rel_diff_vs_eager']:.1e}" if "max_rel_diff_vs_eager" in x else ""
            rows.append([name, f"{x['setup_s']:.0f}", f"{x['first_call_s']:.1f}", f"{x['ms_per_call']['median']:.0f}",
                         f"{x.get('speedup_vs_eager', 1.0):.2f}×", ", ".join(f"{v:.4f}" for v in x["scores"]) + parity,
                         f"{x['peak_rss_gib']:.1f}", load])
    return (f"{r['case']}; machine memory {r['memory_gib']:.1f} GiB\n\n"
            + md_table(["stage", "setup s (build / export / load)", "first call s", "ms / call", "vs eager",
                        "stability scores", "peak RSS GiB", "load average"], rows, "lrrrrlrr"))


def markdown(r: dict) -> str:
    m, cuda = r["machine"], r["settings"]["device"] == "cuda"
    where = m["gpu"]["name"] if cuda and m["gpu"] else f"{m['cpu']} ({m['torch_threads']} torch threads)"
    v = m["versions"]
    lines = [f"## noisefast vs baseline on {where}", "",
             f"{m['date']} · `{r['command']}` · git {m['git']} · torch {v['torch']}, diffusers {v['diffusers']}, "
             f"Python {v['python']} · load average {m['load_average_1m']}{' · quick' if r['settings']['quick'] else ''}",
             "", headline(r)]
    if r["settings"].get("model_error"):
        lines += ["", f"**model build failed**: `{r['settings']['model_error']}`"]
    if not cuda:
        lines += ["", "GPU numbers are pending on this machine: `bench/gpu_check.sh` runs the same comparison on a GPU."]
    names = {"kernels": "1. Fused kernels vs eager torch", "scoring": "2. Scoring throughput",
             "optimize": "3. Noise optimization: checkpointed vs plain autograd", "unet": "4. UNet calls vs the matmul peak",
             "digits": "5. builtin:digits end to end: auto vs eager torch", "realscale": "6. Real scale: SDXL UNet on CPU"}
    render = {"kernels": lambda x: _kernels(x, cuda), "scoring": _scoring, "optimize": _optimize, "unet": _unet,
              "digits": _digits, "realscale": _realscale}
    for part in r["settings"]["parts"]:
        x = r.get(part, {})
        if not x:  # a partial result (written after each part): this part had not finished
            lines += ["", f"### {names[part]}", "", "not measured: the run ended before this part finished"]
            continue
        body = f"**failed**: `{x['error']}`" if "error" in x else render[part](x)
        lines += ["", f"### {names[part]} ({x.get('wall_s', 0):.0f} s)", "", body]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Render a saved result again: ``python -m bench.compare_report result.json [out.md]`` (stdout without out.md)."""
    import argparse
    import json

    from bench.common import write_text

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("json")
    p.add_argument("md", nargs="?")
    a = p.parse_args(argv)
    with open(a.json) as f:
        text = markdown(json.load(f))
    if a.md:
        write_text(a.md, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
