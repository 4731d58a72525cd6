"""``noisefast bench compare A.json B.json``: two results side by side — per measurement B/A, what changed, and the
regressions by name. No torch.

Matching: measurements with the same ``group · name`` (`noisefast.bench.schema.key`). Value: each result's
statistic (best of N on a CPU, the median on a GPU; the median for both where the two differ), per item where the
measurement says how many items a sample covers (seeds per run, rows per call), so runs of different sizes compare.

    ratio B/A = value_B / value_A                         (> 1: B took longer, or — for rates — B was faster)
    changed   = |ratio − 1| > max(threshold, spread_A, spread_B)
                spread = interquartile range / median of the samples (how far one run's number can be trusted)
    regression = changed and worse (slower for times, lower for rates)

Beside the table it names what differs between the two runs that can explain a change: machine (CPU, GPU), library
versions, engine configuration, options, and whether either machine was busy.
"""

from __future__ import annotations

from noisefast.bench.schema import key
from noisefast.bench.stats import headline, spread_pct

DEFAULT_THRESHOLD_PCT = 5.0


def _value(m: dict, stat: str) -> float:
    v = headline(m["summary"], stat)
    return v / m["per"] if m.get("per") else v


def _spread(m: dict) -> float:
    s = spread_pct(m["summary"])
    return 0.0 if s != s else s  # NaN (zero median) → no spread


def compare(a: dict, b: dict, *, threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> dict:
    sa, sb = a["timing"]["statistic"], b["timing"]["statistic"]
    stat = sa if sa == sb else "median"
    ma, mb = {key(m): m for m in a["measurements"]}, {key(m): m for m in b["measurements"]}
    rows, regressions, improvements = [], [], []
    for k in list(mb) + [k for k in ma if k not in mb]:
        x, y = ma.get(k), mb.get(k)
        if x is None or y is None:
            rows.append({"key": k, "a": None if x is None else _value(x, stat), "b": None if y is None else
                         _value(y, stat), "verdict": "only in B" if x is None else "only in A"})  # fmt: skip
            continue
        va, vb = _value(x, stat), _value(y, stat)
        ratio = vb / va if va else float("nan")
        noise = max(threshold_pct, _spread(x), _spread(y))
        changed = abs(ratio - 1) * 100 > noise
        worse = ratio > 1 if y["better"] == "lower" else ratio < 1
        verdict = ("regression" if worse else "improvement") if changed else "unchanged"
        row = {"key": k, "a": va, "b": vb, "unit": y["unit"], "better": y["better"], "ratio": ratio,
               "change_pct": 100 * (ratio - 1), "noise_pct": noise, "verdict": verdict}  # fmt: skip
        rows.append(row)
        (regressions if verdict == "regression" else improvements if verdict == "improvement" else []).append(row)
    ups = speedups(ma, mb, stat, threshold_pct)
    regressions += [r for r in ups if r["verdict"] == "regression"]
    improvements += [r for r in ups if r["verdict"] == "improvement"]
    return {"a": a["command"], "b": b["command"], "statistic": stat, "threshold_pct": threshold_pct, "rows": rows,
            "speedups": ups, "regressions": [r["key"] for r in regressions],
            "improvements": [r["key"] for r in improvements],
            "differences": differences(a, b), "warnings": [f"A: {w}" for w in a["warnings"]]
            + [f"B: {w}" for w in b["warnings"]]}  # fmt: skip


def _pairs(ms: dict) -> dict[str, tuple[str, str]]:
    """Speed-ups within one run, label → (reference key, noisefast's key): each diffusers way over noisefast, each
    kernel's eager over fused, plain autograd over checkpointing (what checkpointing costs; higher is better)."""
    out = {}
    for k, m in ms.items():
        g, n = m["group"], m["name"]
        if n.startswith("diffusers") and f"{g} · noisefast" in ms:
            out[f"speed-up: {g} · noisefast vs {n}"] = (k, f"{g} · noisefast")
        elif n.endswith(" eager") and f"{g} · {n[:-6]} fused" in ms:
            out[f"speed-up: {g} · {n[:-6]} fused vs eager"] = (k, f"{g} · {n[:-6]} fused")
        elif n == "plain" and f"{g} · checkpoint" in ms:
            out[f"speed-up: {g} · checkpoint vs plain"] = (k, f"{g} · checkpoint")
    return out


def speedups(ma: dict, mb: dict, stat: str, threshold_pct: float) -> list[dict]:
    """The within-run speed-ups of both runs side by side: robust to a machine's load, which slows the two members of
    a pair alike (they ran in the same alternated rounds). Changed when beyond max(threshold, either run's spread of
    the pair: the two members' spreads added)."""
    pa, pb = _pairs(ma), _pairs(mb)
    rows = []
    for label in [p for p in pb if p in pa]:
        (ra, oa), (rb, ob) = pa[label], pb[label]
        sa = _value(ma[ra], stat) / _value(ma[oa], stat)
        sb = _value(mb[rb], stat) / _value(mb[ob], stat)
        noise = max(threshold_pct, _spread(ma[ra]) + _spread(ma[oa]), _spread(mb[rb]) + _spread(mb[ob]))
        change = 100 * (sb / sa - 1)
        verdict = "unchanged" if abs(change) <= noise else "regression" if change < 0 else "improvement"
        rows.append({"key": label, "a": sa, "b": sb, "change_pct": change, "noise_pct": noise, "verdict": verdict,
                     "better": "higher"})  # fmt: skip
    return rows


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


ENGINE_FIELDS = ("model", "kind", "device", "dtype", "backend", "batch_size", "threads", "strict", "variant", "fast_path")


def differences(a: dict, b: dict) -> list[str]:
    """What differs between the runs besides the numbers (machine, versions, engine, options, load)."""
    out = []
    for section, fields in (("machine", ("cpu", "cores", "torch_threads", "gpu.name", "gpu.driver")),
                            ("versions", ("torch", "diffusers", "transformers", "noisefast", "git", "build.cpu_isa"))):
        fa, fb = _flat(a.get(section)), _flat(b.get(section))
        out += [f"{section}.{f}: {fa.get(f)!r} → {fb.get(f)!r}" for f in fields if fa.get(f) != fb.get(f)]
    ea, eb = a.get("engine"), b.get("engine")
    if (ea is None) != (eb is None):
        out.append(f"engine configuration recorded only in {'B' if ea is None else 'A'}")
    elif ea is not None:
        out += [f"engine.{f}: {ea.get(f)!r} → {eb.get(f)!r}" for f in ENGINE_FIELDS if ea.get(f) != eb.get(f)]
    oa, ob = a.get("options") or {}, b.get("options") or {}
    out += [f"options.{f}: {oa.get(f)!r} → {ob.get(f)!r}" for f in sorted(set(oa) | set(ob))
            if f not in ("legacy", "engine_config") and oa.get(f) != ob.get(f)]  # fmt: skip
    for name, r in (("A", a), ("B", b)):
        if r["load"].get("busy"):
            loads = ", ".join(f"{s['load_1m']:.1f}" for s in r["load"]["samples"])
            out.append(f"{name} ran on a busy machine (load average {loads})")
    return out


def _fmt(v, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "s":
        return f"{v * 1e3:.3f} ms" if v < 1 else f"{v:.3f} s"
    return f"{v:.3g} {unit}"


def markdown(c: dict) -> str:
    from noisefast.bench.tables import md_table

    rows = [[r["key"], _fmt(r["a"], r.get("unit", "s")), _fmt(r["b"], r.get("unit", "s")),
             f"{r['ratio']:.3f}" if "ratio" in r else "–",
             f"{r['change_pct']:+.1f}% (noise ±{r['noise_pct']:.0f}%)" if "ratio" in r else "–",
             f"**{r['verdict']}**" if r["verdict"] == "regression" else r["verdict"]] for r in c["rows"]]
    lines = ["## noisefast bench compare", "", f"A: `{c['a']}`", "", f"B: `{c['b']}`", "",
             f"value: {'best of N' if c['statistic'] == 'min' else 'median'} per item; changed when |B/A − 1| exceeds "
             f"max({c['threshold_pct']:g}%, either run's interquartile spread)", "",
             md_table(["measurement", "A", "B", "B/A", "change", "verdict"], rows, "lrrrrl")]  # fmt: skip
    if c["speedups"]:
        ups = [[r["key"].removeprefix("speed-up: "), f"{r['a']:.2f}×", f"{r['b']:.2f}×",
                f"{r['change_pct']:+.1f}% (noise ±{r['noise_pct']:.0f}%)",
                f"**{r['verdict']}**" if r["verdict"] == "regression" else r["verdict"]] for r in c["speedups"]]
        lines += ["", "Speed-ups within each run (the pair ran in the same alternated rounds, so the machine's load "
                  "slows both alike: compare these across machines and loads):", "",
                  md_table(["pair", "A", "B", "change", "verdict"], ups, "lrrrl")]  # fmt: skip
    by_key = {r["key"]: r for r in c["rows"] + c["speedups"]}
    if c["regressions"]:
        lines += ["", "**Regressions:**", ""]
        lines += [f"- {k}: {by_key[k]['change_pct']:+.1f}% "
                  f"({'slower' if by_key[k]['better'] == 'lower' else 'lower'}; noise ±{by_key[k]['noise_pct']:.0f}%)"
                  for k in c["regressions"]]  # fmt: skip
    else:
        lines += ["", "No regression."]
    if c["improvements"]:
        lines += ["", "Improvements: " + "; ".join(f"{k} ({by_key[k]['change_pct']:+.1f}%)" for k in c["improvements"])]
    if c["differences"]:
        lines += ["", "Differences between the runs:", ""] + [f"- {d}" for d in c["differences"]]
    if c["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in c["warnings"]]
    return "\n".join(lines) + "\n"
