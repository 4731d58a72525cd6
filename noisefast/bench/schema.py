"""The one results schema of ``noisefast bench`` (versioned), how a run builds it, writes it and reads it back.

    {
      "schema": "noisefast.bench/1",          # major version: a reader refuses another major
      "subcommand": "scoring", "command": "noisefast bench scoring --device cpu", "started", "finished", "wall_s",
      "machine":  {host, platform, cpu, cores, torch_threads, gpu: {name, memory_gib, capability, driver, ...}},
      "versions": {python, torch, diffusers, transformers, numpy, noisefast, onnxruntime, ray, git, build},
      "engine":   Engine.describe() of the engine measured (None where no engine is involved, e.g. kernels),
      "options":  the subcommand's own options,
      "timing":   {device, method, statistic ("min": best of N on a CPU, "median": CUDA events), warmup, rounds},
      "load":     {samples: [{at, t_s, load_1m, load_5m, load_15m}], threshold, own_threads, busy},
      "warnings": [...],
      "measurements": [{group, name, unit, better ("lower"/"higher"), samples: [...], summary: {median, min, q1, q3,
                        max, n}, per (items per sample, e.g. seeds per run), per_unit, info: {...}}],
      "results":  what the subcommand derives from them (rates, ratios, targets, rows),
      "errors":   {part: "Type: message"}        # a part that failed; the others still ran
    }

Every sample is kept; ``group · name`` is unique in a result and stable across runs (what `compare` matches on).
Results of the scripts this package replaced (``python -m bench.compare``) are read through `noisefast.bench.legacy`.
No torch here: reading, validating and comparing results is cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from noisefast.atomic import atomic_path, dumps_json
from noisefast.bench.stats import STATISTICS, summarize
from noisefast.errors import InputError

SCHEMA = "noisefast.bench/1"
SUBCOMMANDS = ("kernels", "scoring", "optimize", "unet", "serve", "screen")
REQUIRED = {"schema": str, "subcommand": str, "command": str, "started": str, "machine": dict, "versions": dict,
            "options": dict, "timing": dict, "load": dict, "warnings": list, "measurements": list, "results": dict,
            "errors": dict}  # fmt: skip


def key(m: dict) -> str:
    """The identity of a measurement within and across results."""
    return f"{m['group']} · {m['name']}"


class Run:
    """Builds one result: ``add`` measurements, ``results[...]`` derived numbers, ``part`` for each stage."""

    def __init__(self, subcommand: str, options: dict, *, device: str, statistic: str, method: str, warmup: int,
                 rounds: int, busy_threshold: float | None = None, own_threads: int = 1, argv: list[str] | None = None):
        from noisefast.bench.machine import LoadMonitor, machine_info, now_iso, versions

        if subcommand not in SUBCOMMANDS:
            raise ValueError(f"unknown subcommand {subcommand!r}")
        self.monitor = LoadMonitor(busy_threshold, own_threads)
        self._t0 = time.monotonic()
        argv = sys.argv[1:] if argv is None else argv
        self.result = {
            "schema": SCHEMA, "subcommand": subcommand, "command": "noisefast " + shlex.join(argv),
            "started": now_iso(), "finished": None, "wall_s": None, "machine": machine_info(), "versions": versions(),
            "engine": None, "options": options,
            "timing": {"device": device, "method": method, "statistic": statistic, "warmup": warmup, "rounds": rounds},
            "load": {}, "warnings": [], "measurements": [], "results": {}, "errors": {},
        }  # fmt: skip
        self._keys: set[str] = set()

    @property
    def results(self) -> dict:
        return self.result["results"]

    def add(self, group: str, name: str, samples, *, unit: str = "s", better: str = "lower", per: float | None = None,
            per_unit: str | None = None, **info) -> dict:
        """Record ``samples`` under ``group · name``; returns their summary."""
        if not all(math.isfinite(float(x)) for x in samples):
            raise ValueError(f"{group} · {name}: samples must be finite, got {list(samples)}")
        m = {"group": group, "name": name, "unit": unit, "better": better, "samples": [float(x) for x in samples],
             "summary": summarize(samples), "per": per, "per_unit": per_unit, "info": info}  # fmt: skip
        if key(m) in self._keys:
            raise ValueError(f"measurement {key(m)!r} recorded twice")
        self._keys.add(key(m))
        self.result["measurements"].append(m)
        return m["summary"]

    def warn(self, message: str) -> None:
        print(f"noisefast bench: warning: {message}", file=sys.stderr, flush=True)
        self.result["warnings"].append(message)

    @contextlib.contextmanager
    def part(self, name: str):
        """A stage of the run: a failure is recorded under ``errors[name]`` and the run goes on; the load is sampled."""
        from noisefast.errors import NoisefastError

        print(f"[bench {self.result['subcommand']}] {name} ...", file=sys.stderr, flush=True)
        try:
            yield
        except NoisefastError:
            raise  # bad input: the command's one-line error, not a recorded part failure
        except Exception as e:  # recorded; the other parts still run
            self.result["errors"][name] = f"{type(e).__name__}: {e}"
            self.result.setdefault("tracebacks", {})[name] = traceback.format_exc()
            print(f"[bench {self.result['subcommand']}] {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            self.monitor.sample(name)

    def finish(self) -> dict:
        from noisefast.bench.machine import now_iso

        self.monitor.sample("end")
        self.result["load"] = self.monitor.as_dict()
        for w in self.monitor.warnings():
            if w not in self.result["warnings"]:
                self.warn(w)
        self.result["finished"] = now_iso()
        self.result["wall_s"] = round(time.monotonic() - self._t0, 2)
        return validate(self.result)


def validate(r: dict) -> dict:
    """``r`` if it is a result of this schema's major version (raises `InputError` naming what is wrong)."""
    if not isinstance(r, dict):
        raise InputError(f"a bench result is a JSON object, got {type(r).__name__}")
    schema = r.get("schema")
    name, _, version = schema.partition("/") if isinstance(schema, str) else ("", "", "")
    if name != SCHEMA.partition("/")[0]:
        raise InputError(f"not a noisefast bench result (schema {schema!r}, expected {SCHEMA!r})")
    if version.split(".")[0] != SCHEMA.partition("/")[2]:
        raise InputError(f"bench result schema {schema!r}: this version of noisefast reads {SCHEMA!r}")
    for name, typ in REQUIRED.items():
        if not isinstance(r.get(name), typ):
            raise InputError(f"bench result: {name!r} must be a {typ.__name__}, got {type(r.get(name)).__name__}")
    if r["timing"].get("statistic") not in STATISTICS:
        raise InputError(f"bench result: timing.statistic must be one of {STATISTICS}")
    seen = set()
    for m in r["measurements"]:
        missing = {"group", "name", "unit", "better", "summary"} - set(m)
        if missing:
            raise InputError(f"bench result: a measurement lacks {sorted(missing)}")
        if m["better"] not in ("lower", "higher"):
            raise InputError(f"bench result: {key(m)}: better must be 'lower' or 'higher', got {m['better']!r}")
        if key(m) in seen:
            raise InputError(f"bench result: measurement {key(m)!r} appears twice")
        seen.add(key(m))
        if m.get("samples") and summarize(m["samples"]) != m["summary"]:
            raise InputError(f"bench result: {key(m)}: the summary does not match the samples")
    return r


def load(path: str | os.PathLike) -> dict:
    """A saved result (this schema, or a legacy ``bench.compare`` file, converted), validated."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not JSON: {e.msg} at line {e.lineno}") from None
    if isinstance(data, dict) and "schema" not in data:
        from noisefast.bench.legacy import convert

        data = {"schema": SCHEMA, **convert(data, str(path))}
    return validate(data)


def write(result: dict, json_path: str | os.PathLike | None, md_path: str | os.PathLike | None, markdown: str) -> None:
    """Strict JSON (NaN → null) and the Markdown, each written atomically."""
    for path, text in ((json_path, dumps_json(result, indent=1) + "\n"), (md_path, markdown)):
        if path is None:
            continue
        try:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        except OSError as e:
            from noisefast.errors import OutputError

            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
