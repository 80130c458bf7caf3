"""The preset record and its registry: a preset is a builder ``(quick: bool) -> Experiment`` with a
one-line summary and the seed it reproduces, registered with :func:`register_preset`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..compare import Experiment
from ..registry import Registry

Builder = Callable[[bool], Experiment]


@dataclass(frozen=True)
class Preset:
    """A registered preset: ``build(quick)`` returns its experiment; ``source`` names the seed."""

    name: str
    summary: str
    source: str
    build: Builder


PRESETS: Registry[Preset] = Registry("preset")
"""The registered presets (name -> :class:`Preset`), in registration order."""


def register_preset(name: str, summary: str, source: str) -> Callable[[Builder], Builder]:
    """Function decorator: register ``build(quick) -> Experiment`` as the preset ``name``."""

    def deco(build: Builder) -> Builder:
        PRESETS.add(name, Preset(name, summary, source, build), summary)
        return build

    return deco


def list_presets() -> list[str]:
    """Names of the registered presets, in registration order."""
    return PRESETS.names()


def make_preset(name: str, *, quick: bool = False) -> Experiment:
    """The preset's experiment, its description set from the summary and source. An unknown name raises
    :class:`~dagrow.registry.UnknownName` (a ``ValueError``) with a "did you mean" hint and every preset."""
    preset = PRESETS.get(name)
    exp = preset.build(quick)
    exp.description = f"{preset.summary} Source: {preset.source}" + (" (quick version)" if quick else "")
    return exp
