"""The naming rule of inputs and nodes: a name that validates maps to one distinct, safe module path.

A compiled model holds node ``v`` at ``nodes.<v>`` and the edge ``u -> w`` at ``edges.<u>__<w>``
(``torch.nn.ModuleDict`` entries), and the generated ``forward`` uses the names as Python variables.
A name is therefore:

- ASCII letters, digits and ``_``, starting with a letter: no Unicode, so no two names that Python
  reads as one identifier after NFKC normalisation (``ﬁ`` and ``fi``), and no leading ``_`` (private
  attributes of ``nn.Module`` such as ``_modules``);
- without ``__``: with no leading ``_`` either, ``u__w`` splits back into ``u`` and ``w`` in exactly
  one way, so two edges never share a module path (``a_ -> b`` is ``a___b``; ``a -> _b`` is refused);
- not a Python keyword and not ``self`` (the first argument of ``forward``);
- not the name of an attribute of ``nn.ModuleDict`` (``update``, ``keys``, ``train``, ``forward``,
  ``to``, ``cuda``, ``type``, ``eval``, ``float``, ...), which a module of that name would shadow or
  be shadowed by.
"""

from __future__ import annotations

import keyword
import re

from torch import nn

MAX_NAME_LENGTH = 100

_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

RESERVED_NAMES: frozenset[str] = frozenset(
    {a for a in dir(nn.ModuleDict()) if not a.startswith("_")} | {"self"}
)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an input or a node (None when it can)."""
    if not isinstance(name, str):
        return f"a name must be a string, not {type(name).__name__}"
    shown = repr(name) if len(name) <= 40 else repr(name[:40]) + f"... ({len(name)} characters)"
    if len(name) > MAX_NAME_LENGTH:
        return f"{shown} is longer than {MAX_NAME_LENGTH} characters"
    if not _PATTERN.match(name):
        if not name.isascii():
            return f"{shown} is not ASCII (names are letters a-z, A-Z, digits and _, starting with a letter)"
        if name.startswith("_"):
            return f"{shown} starts with '_' (names start with a letter)"
        return f"{shown} is not a name (letters a-z, A-Z, digits and _, starting with a letter)"
    if "__" in name:
        return f"{shown} contains '__', which dagrow reserves for edge names such as h1__h2"
    if keyword.iskeyword(name):
        return f"{shown} is a Python keyword"
    if name in RESERVED_NAMES:
        return f"{shown} is reserved: it is an attribute of torch modules (nn.ModuleDict.{name})"
    return None


def check_name(name: str) -> str:
    """``name`` itself, or ValueError with the reason it cannot name an input or a node."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


# C0 and C1 controls (ESC starts ANSI sequences), DEL, and the bidirectional overrides that reorder text
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_TEXT_LENGTH = 200


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (an ANSI escape's ESC, a NUL, a bidi
    override, ...) appear as ``\\xNN`` / ``\\uNNNN`` escapes; tabs and newlines stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256 else f"\\u{ord(m[0]):04x}", text)


def check_text(text: str) -> str:
    """``text`` itself if it is one line of at most :data:`MAX_TEXT_LENGTH` characters with no control
    character (a spec's ``name``), or ValueError saying why."""
    if len(text) > MAX_TEXT_LENGTH:
        raise ValueError(f"longer than {MAX_TEXT_LENGTH} characters ({len(text)})")
    bad = _CONTROL.search(text) or re.search("[\n\t]", text)
    if bad:
        raise ValueError(f"contains the control character {printable(bad[0])} at position {bad.start()}")
    return text


def edge_key(source: str, target: str) -> str:
    """Module name of the edge ``source -> target``: ``source__target`` (distinct for distinct pairs
    of valid names)."""
    return f"{source}__{target}"
