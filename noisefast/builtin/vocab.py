"""The built-in models' tiny CLIP byte-level BPE vocabulary, written locally (no hub).

CLIP's tokenizer (``transformers.CLIPTokenizer``) is byte-level BPE with an end-of-word suffix
``</w>``: text is lower-cased, split into words (letters runs, single digits, punctuation runs), each
word's bytes are mapped to printable unicode (GPT-2's ``bytes_to_unicode``), the last symbol gets
``</w>``, and merges are applied by rank. This module writes the two files it reads:

- ``vocab.json``: the 256 byte symbols, the same 256 with ``</w>``, one token per merge, and the
  specials ``<|startoftext|>`` / ``<|endoftext|>`` — so *every* string tokenizes (unknown words fall
  back to byte pieces), exactly as in CLIP's own vocabulary layout;
- ``merges.txt``: for each word of `WORDS` the left-to-right chain of merges that builds the whole
  word as one token (``s e`` → ``se``, ``se v`` → ``sev``, ...). The chains are checked: every word of
  `WORDS` must come out as exactly one token (`build_tokenizer` raises otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Words that get a whole-word token; anything else still tokenizes, byte by byte.
WORDS = CLASS_NAMES + ("a", "handwritten", "digit", "the", "number", "of", "image")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"
MODEL_MAX_LENGTH = 16  # "a handwritten digit seven" is 6 tokens with BOS/EOS


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table (printable latin-1 maps to itself)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _word_symbols(word: str) -> list[str]:
    table = bytes_to_unicode()
    syms = [table[b] for b in word.encode("utf-8")]
    syms[-1] += SUFFIX
    return syms


def vocab_and_merges(words=WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab token → id, merges in rank order) covering all bytes plus a whole-word token per word."""
    base = list(bytes_to_unicode().values())
    tokens = base + [s + SUFFIX for s in base]
    merges: list[tuple[str, str]] = []
    for word in words:
        syms = _word_symbols(word)
        acc = syms[0]
        for s in syms[1:]:
            pair = (acc, s)
            acc = acc + s
            if pair not in merges:
                merges.append(pair)
                if acc not in tokens:
                    tokens.append(acc)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_vocab_files(folder: str | Path, words=WORDS) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (CLIP's formats) into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges(words)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path


def build_tokenizer(words=WORDS, model_max_length: int = MODEL_MAX_LENGTH):
    """A ``transformers.CLIPTokenizer`` over `vocab_and_merges`; checks each word is one token."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges(words)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    for w in words:
        pieces = tok.tokenize(w)
        if pieces != [w + SUFFIX]:
            raise ValueError(f"merge chains conflict: {w!r} tokenizes to {pieces}, expected one token")
    return tok
