"""Markdown of a ``noisefast bench`` result, rendered from the JSON alone (no torch): a header saying where, when,
with what and how busy, then the subcommand's tables. Times are the result's statistic (best of N on a CPU, the
median on a GPU) with ``±`` the interquartile range relative to the median; the JSON keeps every sample.
"""

from __future__ import annotations

from collections.abc import Sequence

from noisefast.bench.stats import headline, spread_pct


def md_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` one char per column ('l' or 'r', default: all left)."""
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"table columns disagree: header {len(header)}, align {len(align)}, "
                         f"rows {sorted({len(r) for r in rows})}")  # fmt: skip
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def _measurement(r: dict, group: str, name: str) -> dict | None:
    return next((m for m in r["measurements"] if m["group"] == group and m["name"] == name), None)


def _time(r: dict, group: str, name: str, scale: float = 1.0, digits: int = 3) -> str:
    """``value ±spread%`` of a measurement (× ``scale``: 1e3 for ms)."""
    m = _measurement(r, group, name)
    if m is None:
        return "–"
    s = m["summary"]
    v = headline(s, r["timing"]["statistic"]) * scale
    return f"{v:.{digits}f} (n=1)" if s["n"] < 2 else f"{v:.{digits}f} ±{spread_pct(s):.0f}%"


def _num(v, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def header(r: dict) -> list[str]:
    m, v, t = r["machine"], r["versions"], r["timing"]
    gpu = (m.get("gpu") or {}).get("name")
    where = gpu if t["device"].startswith("cuda") and gpu else f"{m['cpu']} ({m['torch_threads']} torch threads)"
    if r["subcommand"] == "serve":  # the engine runs in the server; this machine ran the clients
        where = f"{r['results'].get('url', 'a server')} (clients on {m['cpu']})"
    loads = r["load"].get("samples") or []
    load = " → ".join(f"{s['load_1m']:.2f}" for s in (loads[:1] + loads[-1:] if len(loads) > 1 else loads))
    out = [f"## noisefast bench {r['subcommand']} on {where}", "",
           f"{r['started']} · `{r['command']}` · noisefast {v.get('noisefast')}"
           + (f" (git {v['git']})" if v.get("git") else "")
           + f" · torch {v.get('torch')}, diffusers {v.get('diffusers')}, Python {v.get('python')}"
           + f" · {m['cores']} cores, load average {load or '?'}"
           + (f" · GPU driver {m['gpu'].get('driver')}" if gpu else ""), ""]  # fmt: skip
    e = r.get("engine")
    if e:
        fast = f", fast path {e['fast_path']}" if e.get("fast_path") else ""
        out += [f"engine: `{e.get('model')}` ({e.get('kind')}, {e.get('device')} {e.get('dtype')}, backend "
                f"{e.get('backend')}, {e.get('batch_size')} rows per batch, {e.get('threads')} threads{fast})", ""]
    out += [f"timing: {t['method']}", ""]
    out += [f"> **warning**: {w}" for w in r["warnings"]] + ([""] if r["warnings"] else [])
    return out


def _targets(r: dict) -> list[str]:
    ts = r["results"].get("targets") or []
    if not ts:
        return []
    met = lambda m: "pending (not measurable on this device)" if m is None else ("✓" if m else "✗")  # noqa: E731
    rows = [[t["what"], t["goal"], "–" if t["value"] is None else f"{t['value']:.2f}{t['unit']}", met(t["met"])]
            for t in ts]  # fmt: skip
    return ["", md_table(["target", "goal", "measured", "met"], rows, "llrl")]


def kernels(r: dict) -> list[str]:
    res, cuda = r["results"], r["timing"]["device"].startswith("cuda")
    rows = [[x["case"], "×".join(map(str, x["shape"])), x["dtype"], _time(r, x["group"], f"{x['case']} eager", 1e3),
             _time(r, x["group"], f"{x['case']} fused", 1e3), f"**{x['speedup']:.2f}×**"]
            + ([f"{x['fused_gbs']:.0f}", f"{x['copy_gbs']:.0f}", f"{x['pct_of_copy']:.0f}%"] if cuda else [])
            for x in res.get("rows", [])]  # fmt: skip
    head = ["op", "latent", "dtype", "eager ms", "fused ms", "speed-up"]
    head += ["fused GB/s", "copy GB/s", "% of copy"] if cuda else []
    out = [md_table(head, rows, "lll" + "r" * (len(head) - 3))]
    if rows:
        out += ["", f"geomean speed-up over {len(rows)} op × shape × dtype: **{res['geomean_speedup']:.2f}×**"]
    if not cuda:
        out += ["", "(CPU: the latents stay in cache between calls, so bandwidth says little there; it is in the JSON.)"]
    return out


def _scoring_run(r: dict, res: dict, group: str) -> list[str]:
    rate, diff = res["noises_per_second"], res["score_diff_vs_noisefast"]
    tol = res["score_tolerance"]
    rows = [[name, _time(r, group, name), f"{rate[name]:.2f}",
             "–" if name.startswith("noisefast") else f"{rate['noisefast'] / rate[name]:.2f}×",
             f"{diff[name]:.1e} (≤ {tol[name]:.1e}{'' if diff[name] <= tol[name] else ': **no**'})" if name in diff
             else "–"] for name in rate]  # fmt: skip
    s = res["settings"]
    out = [f"{res['seeds']} seeds, {s['height']}×{s['width']}, {s['steps']}+{s['inversion_steps']} steps, guidance "
           f"{s['guidance_scale']:g} (inversion {s['inversion_guidance_scale']:g}), {res['batch']} rows per batch", "",
           md_table(["way", "s per run", "noises/s", "noisefast ×", "max |Δscore| vs noisefast (error model)"], rows,
                    "lrrrr")]
    if res.get("strongest_baseline"):
        out += ["", f"noisefast vs the strongest baseline ({res['strongest_baseline']}): **{res['ratio']:.2f}×**; "
                f"every way's scores agree with noisefast's within the error model: "
                f"{'yes' if res['scores_agree'] else '**no**'}"]  # fmt: skip
    return out


def scoring(r: dict) -> list[str]:
    res = r["results"]
    if "rows" not in res:
        return _scoring_run(r, res, "scoring") if "noises_per_second" in res else []
    out = [f"- **{c}**: best noisefast ({h['noisefast']['way']}, batch {h['noisefast']['batch']}) "
           f"{h['noisefast']['noises_per_second']:.2f} vs strongest diffusers ({h['strongest_baseline']['way']}, "
           f"batch {h['strongest_baseline']['batch']}) {h['strongest_baseline']['noises_per_second']:.2f} noises/s: "
           f"**{h['ratio']:.2f}×**" for c, h in res.get("headline", {}).items()]  # fmt: skip
    for row in res["rows"]:
        out += ["", f"### {row['config']}, batch {row['batch']}", ""]
        if "noises_per_second" in row:
            out += _scoring_run(r, row, f"scoring {row['config']} b{row['batch']}")
        else:
            out.append(f"not measured: {row.get('skipped') or row.get('error')}")
    return out


def optimize(r: dict) -> list[str]:
    res = r["results"]
    mem = any("cuda_max_memory_allocated" in x for x in res.get("rows", []))
    mib = lambda b: "–" if b is None else f"{b / 2**20:.3f}"  # noqa: E731
    rows = [[f"{x['steps']}+{x['steps']}", x["unet_calls"], x["mode"], _time(r, f"optimize {x['steps']}+{x['steps']}",
             x["mode"]), f"{x['cpu_s_per_iter']:.3f}", mib(x["saved_bytes"]), mib(x["peak_saved_bytes"])]
            + ([f"{x['cuda_max_memory_allocated'] / 2**30:.2f}"] if mem else []) for x in res.get("rows", [])]  # fmt: skip
    head = ["steps", "UNet calls", "mode", "s / iteration", "CPU s / iteration", "saved for backward MiB",
            "peak alive MiB"] + (["CUDA peak GiB"] if mem else [])  # fmt: skip
    mark = lambda ok: "" if ok is None else (" ✓" if ok else " ✗")  # noqa: E731
    ratios = [[f"{q['steps']}+{q['steps']}", f"{q['time_ratio']:.3f}{mark(q['time_target_met'])}",
               f"{q['cpu_time_ratio']:.3f}", _num(q["bound"], ".3f"),
               "–" if q["saved_ratio"] is None else f"{q['saved_ratio']:.5f} (1/{q['unet_calls']}){mark(q['saved_target_met'])}"]
              for q in res.get("ratios", [])]  # fmt: skip
    return [f"latent {res.get('latent')}", "", md_table(head, rows, "lrl" + "r" * (len(head) - 3)), "",
            md_table(["steps", "time checkpoint / plain (≤ 1.4)", "CPU time ratio",
                      "recompute bound (F_nograd + F_grad + B) / (F_grad + B)", "saved checkpoint / plain (≤ 1/calls)"],
                     ratios, "lrrrr")]  # fmt: skip


def unet(r: dict) -> list[str]:
    res = r["results"]
    p = res.get("matmul_peak")
    rows = [[x["backend"], f"{x['resolution']}²", x["batch"], _time(r, f"unet {x['backend']}",
             f"{x['resolution']}² batch {x['batch']}", 1e3, 2), f"{x['images_per_s']:.1f}",
             f"{x['counted_gflop_per_call']:.1f}", _num(x["documented_gflop_per_call"], ".0f"), f"{x['tflops']:.3g}",
             f"**{x['pct_of_matmul_peak']:.0f}%**", f"{x['setup_s']:.1f}"] for x in res.get("rows", [])]  # fmt: skip
    out = [f"matmul peak ({p['dtype']} {p['n']}³, same run): {p['tflops']:.3g} TFLOP/s" if p else "", "",
           md_table(["backend", "image", "batch", "ms / call", "images/s", "GFLOP / call (counted)",
                     "GFLOP / call (documented)", "TFLOP/s", "% of matmul peak", "setup s"], rows, "lllrrrrrrr")]
    out += [f"- not measured: {s['backend']} {s['resolution']}² batch {s['batch']}: {s['reason']}"
            for s in res.get("skipped", [])]  # fmt: skip
    return out


def serve(r: dict) -> list[str]:
    res = r["results"]
    o = r["options"]
    ms = lambda v: "–" if v is None else f"{v * 1e3:.0f}"  # noqa: E731
    rows = [[x["concurrency"], x["warmup_s"], "yes" if x["steady"] else "no", x["requests"], f"{x['req_per_s']:.3f}",
             f"{x['rows_per_s']:.1f}", ms(x["p50_s"]), ms(x["p90_s"]), ms(x["p99_s"]), _num(x["p99_over_p50"]),
             sum(x["errors"].values()), x["cut_at_deadline"], _num(x.get("server_mean_rows_per_batch"), ".1f")]
            for x in res.get("levels", [])]  # fmt: skip
    errors = [f"- {x['concurrency']} clients: errors {x['errors']}" for x in res.get("levels", []) if x["errors"]]
    return [f"`POST {res.get('url')}/v1/{o['endpoint']}`, K = {o['k']} seeds per request, settings {o['settings']}; "
            f"closed loop, warm-up until every client has had one answer (≤ {o['max_warmup']:g} s), then ≤ "
            f"{o['duration']:g} s or ≤ {o['max_requests']} answers per level", "",
            md_table(["clients", "warm-up s", "steady", "requests", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms",
                      "p99/p50", "errors", "cut at end", "rows / UNet batch"], rows, "rrlrrrrrrrrrr")] + errors


def screen(r: dict) -> list[str]:
    res = r["results"]
    rows = [[name, f"{v['wall_s']:.1f}", f"{v['rows_per_s']:.2f}", _num(v.get("rows_per_s_scoring"))]
            for name, v in res.get("variants", {}).items()]  # fmt: skip
    out = [f"{res.get('prompts')} prompts × {res.get('seeds')} seeds = {res.get('rows')} rows", "",
           md_table(["variant", "wall s", "rows/s (wall)", "rows/s (scoring only)"], rows, "lrrr")]
    if "screen_vs_select" in res:
        out += ["", f"screen / select loop: **{res['screen_vs_select']:.2f}×**"]
    if "ray_overhead_pct_wall" in res:
        out += [f"Ray vs in process: {res['ray_overhead_pct_wall']:+.0f}% wall (actor start and model load included), "
                f"{res['ray_overhead_pct_scoring']:+.0f}% scoring time"]
    return out


SECTIONS = {"kernels": kernels, "scoring": scoring, "optimize": optimize, "unet": unet, "serve": serve, "screen": screen}


def render(r: dict) -> str:
    """The Markdown of result ``r``."""
    lines = header(r) + SECTIONS[r["subcommand"]](r) + _targets(r)
    if r["errors"]:
        lines += ["", "**failed parts** (the others ran):", ""] + [f"- {k}: `{v}`" for k, v in r["errors"].items()]
    return "\n".join(lines) + "\n"
