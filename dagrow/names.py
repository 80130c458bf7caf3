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


def edge_key(source: str, target: str) -> str:
    """Module name of the edge ``source -> target``: ``source__target`` (distinct for distinct pairs
    of valid names)."""
    return f"{source}__{target}"
