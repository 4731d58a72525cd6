"""Text a user hands over — a prompt, a prompt file — checked once, the same way for every door.

- `check_text`: a prompt must be UTF-8 text. A command line decodes undecodable bytes into lone surrogates
  (``\\udcff`` for the byte 0xff) and JSON can spell them (``"\\ud800"``); a tokenizer fails on those with a
  ``TypeError`` deep inside, so they are refused here, naming the byte and its position.
- `read_text_lines`: a text file as lines, split on ``\\n`` and ``\\r\\n`` only — never on the other characters
  ``str.splitlines`` breaks at (U+2028, U+2029, U+0085, \\x0b, \\x0c, \\x1c–\\x1e), which stay inside a prompt.
  The bytes must be UTF-8 (a leading BOM is dropped); an error names the line and column. Files larger than
  `MAX_TEXT_FILE_BYTES` and binary files (a NUL byte: ``/dev/zero``) are refused while reading, before the whole
  of them is in memory. Pipes and other non-regular files are read the same way (``--prompts-file <(...)``).

No torch here: the command line reads prompt files before it loads anything.
"""

from __future__ import annotations

import os

from noisefast.errors import InputError, LimitError

MAX_TEXT_FILE_BYTES = 256 * 2**20  # a prompt file; beyond this use .parquet prompts (noisefast screen)
_CHUNK = 2**20


def check_text(value: str, what: str = "prompt") -> str:
    """``value`` if it is encodable as UTF-8; an `InputError` naming the undecodable byte otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise InputError(f"{what} is not valid UTF-8 text ({bad} at character {e.start + 1})") from None
    return value


def read_text(path: str | os.PathLike, what: str) -> str:
    """The file's text (UTF-8, BOM dropped); `InputError` / `LimitError` naming ``what`` and ``path``."""
    name = os.fspath(path)
    data = bytearray()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                if b"\x00" in chunk:
                    at = len(data) + chunk.index(b"\x00")
                    line = data.count(b"\n") + chunk.count(b"\n", 0, at - len(data)) + 1
                    raise InputError(f"{what} {name} is not a text file (a NUL byte on line {line})")
                data += chunk
                if len(data) > MAX_TEXT_FILE_BYTES:
                    raise LimitError(f"{what} {name} is larger than {MAX_TEXT_FILE_BYTES // 2**20} MiB; split it, or "
                                     f"give noisefast screen a .parquet prompt table")  # fmt: skip
    except IsADirectoryError:
        raise InputError(f"{what} {name} is a folder, not a file") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {name}: {e.strerror or e}") from None
    body = bytes(data[3:] if data.startswith(b"\xef\xbb\xbf") else data)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        column = e.start - (body.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(f"{what} {name} is not UTF-8 text: line {line}, column {column}: byte 0x{body[e.start]:02x} "
                         f"({e.reason})") from None  # fmt: skip


def split_lines(text: str) -> list[str]:
    """``text`` cut at ``\\n`` and ``\\r\\n`` only (a last line without a newline included)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """`read_text` then `split_lines`: line ``n`` of the file is element ``n - 1``."""
    return split_lines(read_text(path, what))


__all__ = ["MAX_TEXT_FILE_BYTES", "check_text", "read_text", "read_text_lines", "split_lines"]
