"""Results of the scripts ``noisefast bench`` replaced (``python -m bench.compare``, ``"benchmark":
"noisefast.compare"``, e.g. ``bench/results/cpu-2026-12-04-quiet.json``), read into the current schema (`noisefast.bench.schema.load` adds its version) so that
``noisefast bench compare OLD.json NEW.json`` lays them beside a new run.

Those files kept summaries, not samples (``samples`` is then empty), timed in milliseconds (converted to seconds)
and reported medians (``timing.statistic = "median"``). Names map onto today's: kernel rows to
``kernels <device> <dtype> <shape> · <case> eager|fused``; the scoring runs' ways to the users of
`noisefast.bench.ways` (the pipeline run's noisefast row is ``noisefast``; the UNet-loop run scored a separate random
model, so its noisefast row is ``noisefast (UNet-loop run)``); optimization rows to ``optimize N+N · mode``; UNet
rows to ``unet <backend> · <px>² batch <b>``.
"""

from __future__ import annotations

from noisefast.bench.ways import way_name
from noisefast.errors import InputError

_WAYS = {"diffusers_user": "per-seed", "diffusers_batched": "batched"}
_BACKENDS = {"torch eager": "torch", "torch.compile": "compile"}


def _seconds(summary: dict, scale: float = 1.0) -> dict:
    return {k: (v * scale if k != "n" else v) for k, v in summary.items()}


def _m(group, name, summary, per=None, per_unit=None, scale=1.0) -> dict:
    return {"group": group, "name": name, "unit": "s", "better": "lower", "samples": [],
            "summary": _seconds(summary, scale), "per": per, "per_unit": per_unit, "info": {"legacy": True}}  # fmt: skip


def convert(old: dict, where: str) -> dict:
    if old.get("benchmark") != "noisefast.compare":
        raise InputError(f"{where} is not a noisefast bench result (no 'schema'; not a legacy bench.compare file)")
    m, settings = old["machine"], old["settings"]
    ms = []
    for r in old.get("kernels", {}).get("rows", []):
        group = f"kernels {r['device']} {r['dtype']} {'×'.join(map(str, r['shape']))}"
        if r["case"] == "ddim_cfg":
            ms.append(_m(group, "copy", r["copy_ms_stats"], scale=1e-3))
        ms += [_m(group, f"{r['case']} eager", r["eager_ms_stats"], scale=1e-3),
               _m(group, f"{r['case']} fused", r["fused_ms_stats"], scale=1e-3)]
    for run in old.get("scoring", {}).get("runs", []):
        through = "pipeline" if run["baseline"].startswith("StableDiffusionXLPipeline") else "unet"
        seeds = run["settings"]["seeds"]
        for name, s in run["seconds"].items():
            if name == "noisefast":
                label = "noisefast" if through == "pipeline" else "noisefast (UNet-loop run)"
            else:
                label = way_name(through, _WAYS[name])
            ms.append(_m("scoring", label, s, per=seeds, per_unit="seed"))
    for r in old.get("optimize", {}).get("rows", []):
        if "s_per_iter_stats" in r:
            ms.append(_m(f"optimize {r['steps']}+{r['steps']}", r["mode"], r["s_per_iter_stats"], per=1,
                         per_unit="iteration"))  # fmt: skip
    for r in old.get("unet", {}).get("rows", []):
        ms.append(_m(f"unet {_BACKENDS.get(r['backend'], r['backend'])}", f"{r['resolution']}² batch {r['batch']}",
                     r["ms_per_call"], per=r["batch"], per_unit="image", scale=1e-3))  # fmt: skip
    runs = old.get("scoring", {}).get("runs", [])
    if runs:  # the scoring settings, as today's results record them
        st = runs[0]["settings"]
        settings = {**settings, "seeds": list(range(st["seeds"])), "settings": {
            "height": st["height"], "width": st["width"], "steps": st["steps"], "inversion_steps": st["inversion_steps"],
            "guidance_scale": st["guidance"], "inversion_guidance_scale": st["inversion_guidance"],
            "batch_size": st["batch"]}}  # fmt: skip
    parts = settings.get("parts", [])
    la = m.get("load_average_1m")
    return {
        "subcommand": next((p for p in parts if p != "kernels"), "kernels"),
        "command": old.get("command", "?"), "started": m["date"], "finished": None, "wall_s": None,
        "machine": {"host": m.get("host"), "platform": m.get("platform"), "cpu": m.get("cpu"),
                    "cores": m.get("cpu_count"), "torch_threads": m.get("torch_threads"), "gpu": m.get("gpu")},
        "versions": {**m.get("versions", {}), "git": m.get("git"), "build": m.get("noisefast_build")},
        "engine": None, "options": {**settings, "legacy": where},
        "timing": {"device": settings.get("device", "cpu"), "method": "legacy bench.compare: medians of round-robin "
                   "rounds", "statistic": "median", "warmup": None, "rounds": None},
        "load": {"samples": [] if la is None else [{"at": "start", "t_s": 0, "load_1m": la, "load_5m": None,
                                                     "load_15m": None}], "busy": None},
        "warnings": [], "measurements": ms, "results": {}, "errors": {},
    }  # fmt: skip
