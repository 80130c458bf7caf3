"""One registry shape for every vocabulary of dagrow.

Inits, strategies, schedules, actions, losses, tasks and presets are each a :class:`Registry`: named
entries with a one-line summary, registered with a decorator, listed in registration order. The CLI's
choices and help, the docs tables, the JSON Schemas and the contract tests all read them from here, and
an unknown name gets the same message everywhere (:func:`did_you_mean`)::

    INITS = Registry[InitFn]("init")

    @INITS.register("tiny", "fan-in and fan-out from the SVD of S^-1/2 N (TINY)")
    def tiny(...): ...

    INITS.get("TINY")  # UnknownName: unknown init 'TINY'; did you mean 'tiny'? expected one of: tiny, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name that is not in a registry (the message suggests the closest entry)."""


def _fold(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _dashes(name: str) -> str:
    return name.replace("-", "_")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``known`` to ``name``, or ``""``.

    Case, hyphens and underscores are ignored first (``TINY`` -> ``tiny``, ``teacher_student`` ->
    ``teacher-student``), then the closest spelling by difflib, then a unique prefix (``amplitude`` ->
    ``amplitude_factor``)."""
    known = list(known)
    folded = {_fold(k): k for k in known}
    if _fold(name) in folded and folded[_fold(name)] != name:
        return f" (did you mean {folded[_fold(name)]!r}?)"
    close = difflib.get_close_matches(_fold(name), list(folded), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {folded[close[0]]!r}?)"
    prefixed = [k for f, k in folded.items() if _fold(name) and f.startswith(_fold(name))]
    if len(prefixed) == 1:
        return f" (did you mean {prefixed[0]!r}?)"
    return ""


def unknown_name_message(kind: str, name: object, known: Iterable[str]) -> str:
    """The one message for an unknown name: what it is, the hint, and every choice."""
    known = list(known)
    return f"unknown {kind} {name!r}{did_you_mean(str(name), known)}; expected one of: {', '.join(known)}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its name and one-line summary."""

    name: str
    summary: str
    obj: T


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is the word used in messages: "init", "strategy", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, summary: str = "") -> T:
        """Register ``obj`` under ``name`` (a name is registered once)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, summary, obj)
        return obj

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Decorator form of :meth:`add`; the summary defaults to the first docstring line."""

        def deco(obj: T) -> T:
            text = summary or ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
            return self.add(name, obj, text)

        return deco

    def get(self, name: str) -> T:
        """The entry's object, or :class:`UnknownName` with a "did you mean" hint."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``; the other spelling of hyphens and underscores is accepted where it names
        one entry (``teacher-student`` for ``teacher_student``), anything else is :class:`UnknownName`."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        if isinstance(name, str):
            same = [k for k in self._entries if _dashes(k) == _dashes(name)]
            if len(same) == 1:
                return self._entries[same[0]]
        raise UnknownName(unknown_name_message(self.kind, name, self._entries))

    def check(self, name: str) -> str:
        """The registered spelling of ``name`` (see :meth:`entry`), else :class:`UnknownName` (for
        validators)."""
        return self.entry(name).name

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def summaries(self) -> dict[str, str]:
        return {k: e.summary for k, e in self._entries.items()}

    def help(self) -> str:
        """``name: summary; ...`` for CLI help."""
        return "; ".join(f"{k}: {e.summary}" if e.summary else k for k, e in self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
