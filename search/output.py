"""How names leave the program: JSON valid for any name under any locale, raw bytes for scripts, and
terminal text in which control characters are visible instead of acting.

A file name on Linux is bytes. Python holds one that is not UTF-8 as a str with "surrogate escapes"
(PEP 383), which no UTF-8 output can carry. So:

- JSON is UTF-8 whatever the locale, and every string in it is valid Unicode. A string that holds
  undecodable bytes shows each as U+FFFD and gets a sibling key ``<key>_base64`` with its exact bytes
  (for a list of strings: a list of the same length, ``null`` where an item needed none).
- ``--print0`` writes each path's bytes as they are, NUL-terminated.
- A terminal gets names as they are when they are plain; a name with control characters (newline,
  escape sequences, other C0/C1), bidirectional overrides or undecodable bytes is written the way
  bash reads it back, ``$'...'`` with escapes, so it can neither act on the terminal nor hide.
"""

from __future__ import annotations

import base64
import json
import os
import unicodedata

BASE64_SUFFIX = "_base64"
# Characters that reorder or hide text on a terminal without being control characters.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def name_bytes(text: str) -> bytes:
    """The bytes a name stands for, as the system gave them (lone surrogates of other origins as UTF-8)."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def is_plain(text: str) -> bool:
    """Whether the name's bytes are UTF-8 text that reads back as this very string."""
    try:
        return name_bytes(text).decode("utf-8") == text
    except UnicodeDecodeError:
        return False


def _readable(text: str) -> str:
    """The name's bytes read as UTF-8, undecodable ones as U+FFFD: valid Unicode, for display in JSON."""
    return text if is_plain(text) else name_bytes(text).decode("utf-8", "replace")


def _base64(text: str) -> str:
    return base64.b64encode(name_bytes(text)).decode("ascii")


def lossless(value):
    """``value`` (dicts, lists, strings, numbers) with every string valid Unicode and the exact bytes of
    any string that was not beside it under ``<key>_base64``."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key = _readable(str(key))
            out[key] = lossless(item)
            if isinstance(item, str) and not is_plain(item):
                out[key + BASE64_SUFFIX] = _base64(item)
            elif isinstance(item, (list, tuple)) and any(isinstance(i, str) and not is_plain(i) for i in item):
                out[key + BASE64_SUFFIX] = [None if not isinstance(i, str) or is_plain(i) else _base64(i)
                                            for i in item]
        return out
    if isinstance(value, (list, tuple)):
        return [lossless(item) for item in value]
    if isinstance(value, str):
        return _readable(value)
    return value


def json_bytes(value) -> bytes:
    """One JSON text, UTF-8 encoded (RFC 8259), lossless for names that are not UTF-8."""
    return json.dumps(lossless(value), ensure_ascii=False).encode("utf-8")


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in BIDI_CONTROLS


def shown(name: str) -> str:
    """A name for a terminal: as it is when plain, else ``$'...'`` quoted with escapes (bash's syntax,
    so pasting it into a shell gives the exact bytes back)."""
    if not any(_unsafe(char) for char in name):
        return name
    return "$'" + _escaped(name, quote=True) + "'"


def one_line(text: str) -> str:
    """A message for a terminal: control characters and undecodable bytes escaped, so it stays one line."""
    return _escaped(text, quote=False) if any(_unsafe(char) for char in text) else text


def _escaped(text: str, quote: bool) -> str:
    out = []
    for char in text:
        if quote and char in NAMED_ESCAPES or not quote and char in "\n\t\r":
            out.append(NAMED_ESCAPES[char])
        elif _unsafe(char):
            out.append("".join(f"\\x{byte:02x}" for byte in name_bytes(char)))
        else:
            out.append(char)
    return "".join(out)
