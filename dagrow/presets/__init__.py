"""Presets of `dagrow compare`: the seeds' experiments, each with its source and its directional claims.

A preset is a builder ``(quick: bool) -> Experiment`` registered with :func:`register_preset` in the
:data:`PRESETS` registry (:mod:`dagrow.presets.core`). The ``--quick`` version is small enough for a
test (under a minute); the default run is sized to finish in under ten minutes on two CPU cores with
``--jobs 1``. A preset's ``claims`` turn its rows into one line each, saying what was checked, what was
measured and whether it holds; they are printed in summary.md and asserted (for the quick runs) by
tests/test_compare.py. The seeds are in the shared design folder (seeds/README.md says which covers what).

One module per preset, each with ``build(quick)`` and ``claims(rows)``: :mod:`.regression1d`,
:mod:`.sin50_depth`, :mod:`.sin50_init`, :mod:`.teacher_student`, :mod:`.digits`, :mod:`.narrow` (its
own runner), :mod:`.senn` and :mod:`.digits_cnn`; :mod:`.common` holds what they share (the chain-MLP
spec, the sin50 setting, the claim helpers). Importing this package registers them all, in this order.
"""

from __future__ import annotations

# registration order: the order in which the CLI's help and docs/results.md list the presets
# isort: off
from . import regression1d, sin50_depth, sin50_init, teacher_student, digits, narrow, senn, digits_cnn

# isort: on
from .common import Rows, mlp
from .core import PRESETS, Builder, Preset, list_presets, make_preset, register_preset

__all__ = [
    "PRESETS",
    "Builder",
    "Preset",
    "Rows",
    "digits",
    "digits_cnn",
    "list_presets",
    "make_preset",
    "mlp",
    "narrow",
    "regression1d",
    "register_preset",
    "senn",
    "sin50_depth",
    "sin50_init",
    "teacher_student",
]
