"""When to grow: small schedule objects with a state that a checkpoint saves.

A run alternates rounds of ``every`` training steps with growth steps (:meth:`dagrow.Grower.step`).
The schedule says, at each growth step, whether to try at all (``due``), how many additions it may
make (``additions``), and when the run stops growing (``finished``, with a ``reason``):

- ``fixed``: one growth decision per round until ``growths`` decisions were made (skipped and rolled
  back ones count), or until the model has ``max_params`` parameters; with a budget and no count, it
  also stops after ``IDLE_LIMIT`` decisions in a row that grew nothing (no site fits what is left);
- ``rounds`` (SENN): after a round that grew, ``cooldown`` rounds without growth; up to
  ``max_additions`` additions per round; stops after ``patience`` evaluations in a row that added
  nothing, after ``max_rounds`` rounds, or after ``growths`` additions when given; and, when the
  grower is given a validation loss (the built-in loop gives the task's validation split), once
  ``val_patience`` rounds that grew have not lowered the best validation loss by ``val_min_delta``
  (relative) at the evaluations that followed them (``val_patience: 0`` leaves SENN's own rule alone).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from .registry import Registry


@dataclass
class Schedule(ABC):
    """Base class: the state is the dataclass fields after the settings (see ``state_dict``)."""

    growths: int | None = None  # decisions (fixed) or additions (rounds) at most
    max_params: int | None = None
    growth: int = 0  # growth decisions (fixed) or additions (rounds) made so far
    rounds: int = 0  # growth steps called so far
    reason: str = ""  # why the run stopped growing ("" while it grows)

    # what a plan that grows nothing is called in the history
    idle_event: ClassVar[str] = "growth"

    @property
    def finished(self) -> bool:
        return bool(self.reason)

    @property
    def additions(self) -> int:
        """Additions the current growth step may make."""
        return 1

    @abstractmethod
    def due(self) -> bool:
        """Start a growth step: True to try growing now (counts the round)."""

    @abstractmethod
    def done(self, attempts: int, added: int) -> None:
        """End a growth step that made ``attempts`` plans and applied ``added`` of them."""

    def validated(self, loss: float) -> dict[str, Any] | None:
        """Take the validation loss of the model at the start of a growth step (after ``due``); the
        figures of the rule that reads it, or None when the schedule has no such rule (the default)."""
        return None

    @property
    def uses_validation(self) -> bool:
        """The schedule reads a validation loss at each growth step (:meth:`validated`)."""
        return False

    def over_budget(self, params: int) -> bool:
        """True (and the schedule finished) when ``params`` reached ``max_params``."""
        if self.max_params is not None and params >= self.max_params:
            self.reason = self.reason or f"max_params {self.max_params} reached"
            return True
        return False

    def budget(self, params: int) -> int | None:
        """Parameters that may still be added (None: no limit)."""
        return None if self.max_params is None else self.max_params - params

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(state) - names
        if unknown:
            raise ValueError(f"schedule state has unknown fields {sorted(unknown)}")
        for k, v in state.items():
            setattr(self, k, v)


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


IDLE_LIMIT = 3


@SCHEDULES.register("fixed", "one growth every round until a growth count or a parameter budget")
@dataclass
class Fixed(Schedule):
    idle: int = 0  # decisions in a row that grew nothing

    def __post_init__(self) -> None:
        if self.growths is None and self.max_params is None:
            raise ValueError("a fixed schedule needs a number of growths or a parameter budget")
        self._check_count()

    def _check_count(self) -> None:
        if self.growths is not None and self.growth >= self.growths:
            self.reason = self.reason or f"growths {self.growths} reached"

    def due(self) -> bool:
        self._check_count()
        if self.finished:
            return False
        self.rounds += 1
        return True

    def done(self, attempts: int, added: int) -> None:
        self.growth += attempts
        self.idle = 0 if added else self.idle + attempts
        self._check_count()
        if not self.reason and self.growths is None and self.idle >= IDLE_LIMIT:
            self.reason = (
                f"stopped growing: {self.idle} growth steps in a row grew nothing "
                f"(no site fits within max_params {self.max_params})"
            )


@SCHEDULES.register("rounds", "SENN: cooldown after a growth, several additions per round, patience")
@dataclass
class Rounds(Schedule):
    cooldown: int = 1
    max_additions: int = 8
    patience: int = 3
    max_rounds: int = 50
    val_patience: int = 3  # rounds that grew without a better validation loss before growth stops (0: off)
    val_min_delta: float = 0.01  # the relative fall of the validation loss that counts as better
    waiting: int = 0  # rounds of cooldown left
    quiet: int = 0  # evaluations in a row that added nothing
    val_best: float | None = None  # the best validation loss measured at an evaluation
    val_growths: int = 0  # rounds that grew since that evaluation
    idle_event: ClassVar[str] = "evaluation"

    def __post_init__(self) -> None:
        vp, vd = self.val_patience, self.val_min_delta
        if isinstance(vp, bool) or not isinstance(vp, int) or vp < 0:
            raise ValueError(f"val_patience must be a whole number >= 0 (0: off), got {vp!r}")
        if isinstance(vd, bool) or not isinstance(vd, int | float) or not (math.isfinite(vd) and 0 <= vd < 1):
            raise ValueError(f"val_min_delta must be a fraction in [0, 1), got {vd!r}")

    @property
    def uses_validation(self) -> bool:
        return self.val_patience > 0

    def validated(self, loss: float) -> dict[str, Any] | None:
        """The validation rule: ``loss`` is better when it is below the best so far by more than
        ``val_min_delta`` of it; otherwise, once ``val_patience`` rounds grew since the best, the
        schedule finishes (growth stops, training goes on). A non-finite loss is never better."""
        if not self.uses_validation:
            return None
        best = self.val_best
        better = math.isfinite(loss) and (best is None or loss < best - self.val_min_delta * abs(best))
        if better:
            self.val_best, self.val_growths = loss, 0
        elif self.val_growths >= self.val_patience and not self.reason:
            self.reason = (
                f"stopped growing: after {self.val_growths} rounds that grew (val_patience "
                f"{self.val_patience}) the validation loss {loss:.6g} is not below its best {best:.6g} by "
                f"more than val_min_delta = {self.val_min_delta:g} of it"
            )
        return {
            "checked_val_loss": loss,
            "best_val_loss": self.val_best,
            "growths_since_best_val": self.val_growths,
        }

    def over_budget(self, params: int) -> bool:
        """Never: at the budget the natural strategy finds no site, and patience ends the run."""
        return False

    @property
    def additions(self) -> int:
        left = self.max_additions
        if self.growths is not None:
            left = min(left, self.growths - self.growth)
        return max(left, 0)

    def due(self) -> bool:
        if self.finished:
            return False
        self.rounds += 1
        if self.waiting:
            self.waiting -= 1
            self._check_rounds()
            return False
        return True

    def done(self, attempts: int, added: int) -> None:
        self.growth += added
        if added and self.val_best is not None:
            self.val_growths += 1
        self.quiet = 0 if added else self.quiet + 1
        self.waiting = self.cooldown if added else 0
        if self.growths is not None and self.growth >= self.growths:
            self.reason = f"growths {self.growths} reached"
        elif self.quiet >= self.patience:
            self.reason = f"stopped growing: {self.quiet} evaluations in a row added nothing"
        else:
            self._check_rounds()

    def _check_rounds(self) -> None:
        if not self.reason and self.rounds >= self.max_rounds:
            self.reason = f"max_rounds {self.max_rounds} reached"
