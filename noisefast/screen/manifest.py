"""``OUT/manifest.json``: what a screening run is, written before its first shard and checked by every resume.

It pins everything the scores depend on — the model, the six sampling settings, the dtype, the rows per UNet
batch (a row's score depends on its batch's composition at the 1e-7 level), the backend, the device type, the
weight variant and the fast-path options that change arithmetic — and everything that cuts the shards (prompts,
seeds, shard size, cascade). A resume with any of them changed is refused, naming each (`check_same_run`).
What only perturbs the last bits without being a choice — torch's thread count, library versions — is recorded
and, when it changed, named in a notice (`environment_changes`).

``plan`` holds the expected shard and row counts per folder: readers (`load_scores`, ``--summary``, the seed
bank) say from it whether a run is complete (`noisefast.screen.integrity`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from noisefast.errors import InputError
from noisefast.screen.shards import PROXY, SCORES, SETTINGS_KEYS, digest, grid_size, rescore_size, seeds_digest

FORMAT = "noisefast-screen/2"  # 2: shards carry a checksum; the manifest pins the engine and holds the plan
NUMERIC_FAST_PATH = ("dtype", "channels_last", "attention", "fuse_qkv")  # fast-path options that change arithmetic


def engine_pins(info: dict, rows_per_batch) -> dict:
    """The engine facts the scores depend on, from `Engine.describe()` (or a format-1 manifest's ``engine``)."""
    fast = info.get("fast_path") or {}
    return {
        "batch_size": rows_per_batch,
        "backend": info.get("backend"),
        "device": str(info.get("device") or "").split(":")[0] or None,  # cuda:0 vs cuda:1 compute alike
        "variant": info.get("variant"),
        "fast_path": {k: fast[k] for k in NUMERIC_FAST_PATH if k in fast} or None,
    }


def build_manifest(items, seeds, *, shard_size: int, proxy_steps, rescore_top, info: dict, full: dict,
                   executor: str, versions: dict, argv) -> dict:  # fmt: skip
    settings6 = {k: full[k] for k in SETTINGS_KEYS}
    model_id, dtype_name = str(info["model"]), str(info["dtype"])
    plan = {SCORES: dict(zip(("shards", "rows"), grid_size(len(items), len(seeds), shard_size)))}
    if proxy_steps:
        plan = {PROXY: plan[SCORES], SCORES: dict(zip(("shards", "rows"), rescore_size(len(items), rescore_top,
                                                                                        shard_size)))}  # fmt: skip
    return {
        "format": FORMAT,
        "model": model_id,
        "settings": settings6,
        "settings_hash": digest({"model": model_id, "settings": settings6, "dtype": dtype_name}),
        "run": {
            "dtype": dtype_name, "prompt_count": len(items),
            "prompts": digest([[it.id, it.prompt, it.negative_prompt] for it in items]),
            "seed_count": len(seeds), "seeds": seeds_digest(seeds), "shard_size": shard_size,
            "proxy_steps": proxy_steps, "rescore_top": rescore_top,
            **engine_pins(info, full.get("batch_size")),
        },
        "plan": plan,
        "seed_range": [min(seeds), max(seeds)],
        "batch_size": full.get("batch_size"),
        "engine": info,  # the engine configuration in effect (as /v1/info and report.json record it)
        "executor": executor,
        "versions": versions,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv) if argv is not None else None,
    }  # fmt: skip


def read_manifest(root) -> dict | None:
    path = Path(root) / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read it ({e}); use --force to start over or a new --out") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: not a screening manifest (a JSON {type(manifest).__name__}); use --force to start "
                         f"over or a new --out")  # fmt: skip
    return manifest


def _run_fields(m: dict) -> dict:
    """``run`` with the engine pins filled in from a format-1 manifest (top-level batch_size, ``engine``)."""
    run = dict(m.get("run") or {})
    legacy = engine_pins(m.get("engine") or {}, m.get("batch_size"))
    return {**legacy, **run}


def check_same_run(old: dict, new: dict, root) -> None:
    """Refuse to resume into ``root`` when what fixes the scores or the shards differs from its manifest."""
    fields = [("model", old.get("model"), new["model"])]
    fields += [(k, (old.get("settings") or {}).get(k), new["settings"][k]) for k in SETTINGS_KEYS]
    was = _run_fields(old)
    fields += [(k, was.get(k), v) for k, v in new["run"].items()]
    diffs = [f"{k} (was {_show(a)}, now {_show(b)})" for k, a, b in fields if a != b]
    if diffs:
        raise InputError(
            f"--out {root} holds a screen with other settings: {'; '.join(diffs)}. Rerun with the same settings to "
            f"resume (scores depend on each of them), use a new --out, or pass --force to delete its scores and start over"
        )


def environment_changes(old: dict, new: dict) -> list[str]:
    """What changed that perturbs the last bits of new shards' scores without being a setting (threads, versions)."""
    pairs = [("threads", (old.get("engine") or {}).get("threads"), (new.get("engine") or {}).get("threads"))]
    for lib in ("noisefast", "torch", "diffusers"):
        pairs.append((lib, (old.get("versions") or {}).get(lib), (new.get("versions") or {}).get(lib)))
    return [f"{k} {a} → {b}" for k, a, b in pairs if a != b]


def _show(v) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["FORMAT", "build_manifest", "check_same_run", "engine_pins", "environment_changes", "read_manifest"]
