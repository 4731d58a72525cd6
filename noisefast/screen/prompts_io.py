"""Prompt files for screening: ``.txt`` (one per line), ``.jsonl`` (``{"prompt", "negative_prompt"?, "id"?}``),
``.csv`` and ``.parquet`` (a ``prompt`` column; ``negative_prompt`` and ``id`` columns optional).

Lines end at ``\n`` or ``\r\n`` only (U+2028 and the other characters ``str.splitlines`` splits at stay inside
a prompt, or inside a JSONL string); text files must be UTF-8 (`noisefast.textio`). Blank prompts are skipped;
a prompt given twice (same text and negative prompt) is screened once, under its first id. A prompt's id is the given ``id`` or, without one, a hash of its text (and negative prompt): the
same prompt gets the same id in every run and every file, so shard ids and the seed bank stay stable.
Every problem is one `InputError` line naming the file and, where there is one, the line or row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from noisefast.errors import InputError
from noisefast.textio import check_text, read_text, split_lines

FORMATS = (".txt", ".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    negative_prompt: str | None = None


def prompt_id(prompt: str, negative_prompt: str | None = None) -> str:
    """A stable id for a prompt without one: 16 hex digits of SHA-256 over its text (and negative prompt)."""
    text = prompt if negative_prompt is None else f"{prompt}\x00{negative_prompt}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_items(records) -> list[PromptItem]:
    """``records``: (where, prompt, negative_prompt, id) → checked, de-duplicated `PromptItem`s in order."""
    items: list[PromptItem] = []
    seen_text: set[tuple] = set()
    seen_id: dict[str, tuple] = {}
    for where, prompt, negative, given_id in records:
        if prompt is None or (isinstance(prompt, float) and prompt != prompt):  # None / NaN from a table
            continue
        if not isinstance(prompt, str):
            raise InputError(f"{where}: prompt must be text, got {type(prompt).__name__} {prompt!r}")
        prompt = check_text(prompt, f"{where}: prompt").strip()
        if not prompt:
            continue
        if negative is not None and not (isinstance(negative, float) and negative != negative):
            if not isinstance(negative, str):
                raise InputError(f"{where}: negative_prompt must be text, got {type(negative).__name__}")
            negative = check_text(negative, f"{where}: negative_prompt").strip() or None
        else:
            negative = None
        if given_id is not None and not (isinstance(given_id, float) and given_id != given_id):
            if isinstance(given_id, bool) or not isinstance(given_id, (str, int)):
                raise InputError(f"{where}: id must be text or an integer, got {type(given_id).__name__}")
            pid = str(given_id).strip()
            if not pid:
                raise InputError(f"{where}: id is empty")
        else:
            pid = prompt_id(prompt, negative)
        key = (prompt, negative)
        if key in seen_text:
            continue  # a duplicate prompt is screened once
        if pid in seen_id and seen_id[pid] != key:
            raise InputError(f"{where}: id {pid!r} is already used by another prompt ({seen_id[pid][0][:60]!r})")
        seen_text.add(key)
        seen_id[pid] = key
        items.append(PromptItem(pid, prompt, negative))
    return items


def read_prompt_file(path) -> list[PromptItem]:
    """The prompts of ``path`` (format from its suffix); an `InputError` for anything wrong with it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"--prompts {path}: unknown format {suffix or '(no suffix)'!r}; use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise InputError(f"--prompts {path}: no such file")
    if suffix == ".parquet":
        items = make_items(_parquet_records(path))
    else:
        text = read_text(path, "--prompts")  # UTF-8 (line and column in the error), size-capped, not binary
        records = {".txt": _txt_records, ".jsonl": _jsonl_records, ".csv": _csv_records}[suffix](path, text)
        items = make_items(records)
    if not items:
        raise InputError(f"--prompts {path} holds no prompts")
    return items


def _txt_records(path, text):
    for n, line in enumerate(split_lines(text), 1):
        yield f"{path}:{n}", line, None, None


def _jsonl_records(path, text):
    for n, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path}:{n}: not a JSON object ({e})") from None
        if isinstance(obj, str):
            obj = {"prompt": obj}
        if not isinstance(obj, dict) or "prompt" not in obj:
            raise InputError(f'{path}:{n}: each line must be a JSON object with a "prompt" key')
        yield f"{path}:{n}", obj["prompt"], obj.get("negative_prompt"), obj.get("id")


def _csv_records(path, text):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = reader.fieldnames or []
        if "prompt" not in fields:
            raise InputError(f"--prompts {path}: no 'prompt' column (columns: {', '.join(fields) or 'none'})")
        for n, row in enumerate(reader, 2):
            yield f"{path}:{n}", row.get("prompt"), row.get("negative_prompt"), row.get("id") or None
    except csv.Error as e:
        raise InputError(f"--prompts {path}: bad CSV ({e})") from None


def _parquet_records(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading .parquet prompts needs pyarrow: pip install 'noisefast[screen]'") from None
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"--prompts {path}: cannot read it as Parquet ({type(e).__name__}: {e})") from None
    if "prompt" not in schema.names:
        raise InputError(f"--prompts {path}: no 'prompt' column (columns: {', '.join(schema.names) or 'none'})")
    cols = [c for c in ("prompt", "negative_prompt", "id") if c in schema.names]
    d = pq.read_table(path, columns=cols).to_pydict()
    n = len(d["prompt"])
    for i in range(n):
        yield (f"{path} row {i}", d["prompt"][i], d.get("negative_prompt", [None] * n)[i], d.get("id", [None] * n)[i])


__all__ = ["FORMATS", "PromptItem", "make_items", "prompt_id", "read_prompt_file"]
