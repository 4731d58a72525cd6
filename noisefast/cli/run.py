"""One command invocation: load the engine once, check the output folder, fill and write the report.

The report (``OUT/report.json``, strict JSON) is rewritten atomically after every prompt, so Ctrl-C keeps
what finished: the report then says ``"complete": false`` and the command exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from noisefast.atomic import dumps_json
from noisefast.cli.args import read_prompts, settings_overrides
from noisefast.config import EngineConfig
from noisefast.errors import OutputError
from noisefast.progress import ProgressBar, stderr_is_terminal

from noisefast.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401  (re-exported for the subcommands)


def prepare_out_dir(out: str) -> Path:
    """``--out`` as a folder that exists and is writable, or an `OutputError` naming the problem; temporary files
    a killed earlier run left there are removed."""
    from noisefast.atomic import output_error, remove_stale_temps, temp_sibling

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = temp_sibling(path / ".write-test")
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise output_error(e, f"--out {out}", "write to") from None
    remove_stale_temps(path)
    return path


def listed_outputs(report) -> set[str]:
    """The files (relative to ``--out``) a report's runs name in their ``images`` records."""
    found: set[str] = set()

    def walk(v):
        if isinstance(v, str):
            found.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for rec in (report.get("runs") if isinstance(report, dict) else None) or []:
        if isinstance(rec, dict):
            walk(rec.get("images"))
    return found


def _previous_outputs(out: Path) -> set[str]:
    try:
        return listed_outputs(json.loads((out / "report.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return set()


class Run:
    """The engine, the output folder and the report being filled in."""

    def __init__(self, command: str, args: argparse.Namespace):
        from noisefast.denoisers.guidance import describe_inversion_guidance
        from noisefast.pipeline import Engine
        from noisefast.report import versions

        self.t0 = time.perf_counter()
        self.args = args
        self.prompts = read_prompts(args)
        self.out = prepare_out_dir(args.out)  # before the (slow) model load: a bad path fails at once
        self.previous = _previous_outputs(self.out)  # what an earlier run's report.json here names
        self.engine = Engine.from_config(EngineConfig.from_cli_args(args))
        load_s = time.perf_counter() - self.t0
        self.settings = self.engine.settings(**{k: v for k, v in settings_overrides(args).items() if v is not None})
        self.engine.batch_size_for(self.settings)  # refuses a batch that cannot fit before any work
        self.show_progress = args.progress if args.progress is not None else stderr_is_terminal()
        self.report = {
            "command": command,
            "argv": sys.argv[1:],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": self.engine.describe(),
            "settings": self.settings.as_dict() | {
                "negative_prompt": args.negative_prompt,
                "inversion_guidance": describe_inversion_guidance(self.settings.inversion_guidance_scale),
            },
            "versions": versions(),
            "complete": False,
            "runs": [],
            "timings": {"load_s": round(load_s, 3)},
        }

    def bar(self, label: str, unit: str) -> ProgressBar:
        return ProgressBar(label, unit, self.show_progress)

    def folder(self, i: int, prompt: str) -> Path:
        """``out/`` for a single prompt, ``out/NNN-slug/`` for each of several."""
        if len(self.prompts) == 1:
            return self.out
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"
        d = prepare_out_dir(str(self.out / f"{i:03d}-{slug}"))
        return d

    def rel(self, path: Path) -> str:
        return "." if path == self.out else str(path.relative_to(self.out))

    def save(self, complete: bool) -> Path:
        from noisefast.report import write_report

        self.report["complete"] = complete
        self.report["model"]["backend_info"] = self.engine.backend_info()  # auto's decisions so far
        self.report["timings"]["total_s"] = round(time.perf_counter() - self.t0, 3)
        return write_report(self.out / "report.json", self.report)

    def remove_leftovers(self) -> None:
        """Files an earlier run's report named in this ``--out`` that this run did not write again (its grid.png
        when this run has ``--grid 0``, ...): removed, so the folder holds what its report.json describes."""
        from noisefast.atomic import output_error

        root = self.out.resolve()
        for rel in sorted(self.previous - listed_outputs(self.report)):
            p = self.out / rel
            if p.suffix not in (".png", ".safetensors") or not p.is_file() or root not in p.resolve().parents:
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise output_error(e, p, "remove the earlier run's file", "remove it by hand") from None

    def finish(self, summary_lines: list[str], interrupted: bool = False) -> int:
        path = self.save(complete=not interrupted)
        self.remove_leftovers()
        if self.args.json:
            print(dumps_json(self.report))
        else:
            from noisefast.denoisers.guidance import describe_inversion_guidance

            d, s = self.report["model"], self.settings
            print(f"noisefast {self.report['command']} · {d['model']} ({d['family']}, {d['device']} {d['dtype']}, "
                  f"{d['backend']}) · "
                  f"{d['sampler']} {s.steps} steps + {s.inversion_steps} inversion steps, "
                  f"guidance {s.guidance_scale:g}{' (embedded)' if d['guidance'] == 'embedded' else ''} "
                  f"(inversion {describe_inversion_guidance(s.inversion_guidance_scale)}), {s.width}×{s.height}")  # fmt: skip
            for line in summary_lines:
                print(line)
            print(backend_line(self.report["model"]["backend_info"]))
            print(f"report: {path}" + ("  (interrupted: partial results)" if interrupted else ""))
        return EXIT_INTERRUPTED if interrupted else EXIT_OK


def backend_line(info: dict) -> str:
    """What ran the UNet, in one line: ``backend auto: onnxruntime at ≤128 rows 71.1 ms/call (torch 87.9); …``."""
    if info.get("backend") != "auto":
        return f"backend {info.get('backend')}" + (f" ({info['threads']} threads)" if info.get("threads") else "")
    parts, sources = [], set()
    for d in info.get("decisions", []):
        ms, chosen = d.get("ms_per_call") or {}, d["chosen"]
        others = ", ".join(f"{n} {v:.1f}" for n, v in ms.items() if n != chosen and v is not None)
        mine = f" {ms[chosen]:.1f} ms/call" if ms.get(chosen) is not None else ""
        where = f" at ≤{d['shape']['rows_bucket']} rows" if d.get("shape") else ""  # no shape: one choice for all
        parts.append(f"{chosen}{where}{mine}" + (f" ({others})" if others else ""))
        sources.add({"cache": "decided from the cache", "measured": "measured now"}.get(d.get("source"), d.get("source")))
    if not parts:
        return "backend auto: no UNet call yet"
    return f"backend auto: {'; '.join(parts)} · {', '.join(sorted(sources))}"


def fmt_prompt(p: str) -> str:
    import json

    return json.dumps(p if len(p) <= 60 else p[:57] + "...", ensure_ascii=False)
