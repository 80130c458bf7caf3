"""Settings of a growth run as data: a pydantic model, its YAML file, its JSON Schema.

``GrowthConfig`` holds every setting of ``dagrow grow`` (and of :func:`dagrow.grow`); SENN's settings
are nested under ``natural``. The CLI's options, defaults, choices and help are generated from these
models (:mod:`dagrow.cli_growth`), and ``dagrow schema --config`` writes their JSON Schema
(``dagrow.config.schema.json`` ships beside the spec's). A run file::

    # run.yaml: dagrow grow specs/mlp_sin50.yaml --task sin50 --config run.yaml --out runs/a
    strategy: amplitude_factor
    growths: 10
    every: 100
    neurons: 2
    natural: {tau: 0.05}        # only read by the natural strategy

SENN's keys may also be given flat (``GrowthConfig(tau=0.1)``, ``--tau 0.1``).
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .growth.inits import INITS
from .growth.natural import NaturalSettings
from .planner import STRATEGIES, Natural, Strategy, make_strategy
from .registry import unknown_name_message
from .schedule import SCHEDULES, Fixed, Rounds, Schedule

STATISTICS = ("pass", "training")
OPTIMIZERS = ("sgd", "adam", "best_update")
_N = NaturalSettings()


class ConfigError(ValueError):
    """A run configuration that cannot be used (the message names the file and the key)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NaturalConfig(_Model):
    """SENN (the ``natural`` strategy and the ``rounds`` schedule): when to grow and how to search."""

    tau: float = Field(_N.tau, description="grow when Delta eta / eta > tau")
    alpha: float = Field(_N.alpha, description="... and Delta eta / E||dL/dy||^2 > alpha")
    alpha_reference: Literal["initial", "current"] = Field(
        _N.alpha_reference,
        description="E||dL/dy||^2 of the alpha test: the first evaluation's (growth stops once the fit is "
        "good) or the current one",
    )
    holdout: float = Field(
        _N.holdout,
        description="fraction of the growth batch that checks the candidates found on the rest (0: none)",
    )
    damping: float = Field(_N.damping, description="damping of the Fisher factors A and G (relative)")
    fisher: Literal["unit", "empirical"] = Field(_N.fisher, description="G from unit or empirical gradients")
    candidates: int = Field(_N.candidates, description="random candidates per site")
    refine_steps: int = Field(_N.refine_steps, description="Adam steps per candidate")
    depth_cost: float = Field(_N.depth_cost, description="a deepen site's score is divided by this")
    construction: Literal["identity", "basis"] = Field(
        _N.construction, description="deepened edges as identity or SENN's basis"
    )
    cooldown: int = Field(1, description="rounds without growth after one that grew")
    max_additions: int = Field(8, description="additions per round at most")
    patience: int = Field(3, description="stop after this many evaluations in a row without growth")
    max_rounds: int = Field(50, description="training rounds at most")
    val_patience: int = Field(
        3,
        description="stop growing once this many rounds that grew have not lowered the best validation "
        "loss by val_min_delta (0: SENN's thresholds alone)",
    )
    val_min_delta: float = Field(
        0.01, description="the relative fall of the validation loss that counts as an improvement"
    )

    @field_validator("tau", "alpha", "damping")
    @classmethod
    def _nonnegative(cls, v: float, info) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{info.field_name} must be a finite number >= 0, got {v!r}")
        return v

    @field_validator("holdout", "val_min_delta")
    @classmethod
    def _fraction(cls, v: float, info) -> float:
        if not (math.isfinite(v) and 0 <= v < 1):
            raise ValueError(f"{info.field_name} must be a fraction in [0, 1), got {v!r}")
        return v

    @field_validator("depth_cost")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"depth_cost must be a positive number, got {v!r}")
        return v

    @field_validator("candidates", "refine_steps", "cooldown", "val_patience")
    @classmethod
    def _count(cls, v: int, info) -> int:
        if v < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {v!r}")
        return v

    @field_validator("max_additions", "patience", "max_rounds")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1")
        return v

    def settings(self, seed: int) -> NaturalSettings:
        """The settings of the natural expansion score (:class:`NaturalSettings`)."""
        own = set(NaturalSettings.__dataclass_fields__) & set(type(self).model_fields)
        return NaturalSettings(**{k: getattr(self, k) for k in own}, seed=seed)


NATURAL_KEYS = tuple(NaturalConfig.model_fields)


class GrowthConfig(_Model):
    """Every setting of a growth run (all reported in the history and saved in checkpoints)."""

    strategy: str = Field("amplitude_factor", description="where to grow: " + ", ".join(STRATEGIES))
    init: str = Field("tiny", description="initialisation of new neurons: " + ", ".join(INITS))
    schedule: str | None = Field(
        None,
        description="when to grow: " + ", ".join(SCHEDULES) + " (default: rounds for natural, else fixed)",
    )
    growths: int | None = Field(
        10, description="growth steps (default 10; natural: a cap on additions, default none)"
    )
    max_params: int | None = Field(None, description="stop growing at this size")
    every: int = Field(200, description="training steps between growths")
    neurons: int = Field(1, description="neurons per growth")
    optimizer: Literal["sgd", "adam", "best_update"] = Field(
        "adam", description="adam, sgd (with momentum) or best_update (the seeds' dW* per node)"
    )
    lr: float = Field(1e-2, description="learning rate")
    momentum: float = Field(0.9, description="sgd: momentum in [0, 1) (0 is plain gradient descent)")
    batch_size: int = Field(128, description="training minibatch")
    growth_batch: int | Literal["all"] = Field(
        1024,
        description="samples for statistics and amplitude, or all (the whole training set, streamed in "
        "chunks)",
    )
    zero_gamma: Literal["skip", "add"] = Field(
        "skip",
        description="a chosen neuron whose gamma* is 0: skip it, or add it scaled by 0 (the seeds' slides)",
    )
    round_robin: Literal["growable", "slides"] = Field(
        "growable",
        description="naive: site growth mod (growable sites), or the slides' depth = t mod deep + 1",
    )
    statistics: Literal["pass", "training"] = Field(
        "pass",
        description="pass (a statistics pass on the growth batch) or training (recorded during each "
        "round's last steps, cheaper)",
    )
    joint_update: bool = Field(False, description="apply gamma dW* together with the neurons")
    normalize: bool = Field(False, description="divide site scores by the parameters they add")
    max_candidates: int = Field(8, description="amplitude_factor: line searches per decision at most")
    tolerance: float = Field(1e-3, description="roll back a growth that raises the loss by more (relative)")
    final_steps: int | None = Field(None, description="training after the last growth (default: every)")
    seed: int = Field(0, description="seed of data, initialisation and training")
    device: str = Field("cpu", description="cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "float64"] | None = Field(
        None, description="precision of the model and the data (default: the model's, float32 for a spec)"
    )
    collective_timeout: float = Field(
        300.0,
        description="distributed runs: seconds a collective waits for the other ranks before the run fails",
    )
    natural: NaturalConfig = Field(default_factory=NaturalConfig, description="SENN's settings")

    @model_validator(mode="before")
    @classmethod
    def _nest_natural_keys(cls, data: Any) -> Any:
        """SENN's keys given flat (``tau=0.1``) go under ``natural``."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in NATURAL_KEYS if k in data}
        if not flat:
            return data
        rest = {k: v for k, v in data.items() if k not in flat}
        natural = rest.get("natural", {})
        natural = natural.model_dump() if isinstance(natural, NaturalConfig) else dict(natural or {})
        return {**rest, "natural": {**natural, **flat}}

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return STRATEGIES.check(v)

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        return INITS.check(v)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        return v if v is None else SCHEDULES.check(v)

    @field_validator("every", "neurons", "batch_size", "growth_batch", "max_candidates")
    @classmethod
    def _at_least_one(cls, v: int | str, info) -> int | str:
        if v == "all" and info.field_name == "growth_batch":
            return v
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{info.field_name} must be at least 1")
        return v

    @field_validator("growths", "final_steps")
    @classmethod
    def _count(cls, v: int | None, info) -> int | None:
        if v is not None and v < 0:
            raise ValueError(f"{info.field_name} must be >= 0")
        return v

    @field_validator("max_params")
    @classmethod
    def _budget(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("max_params must be at least 1")
        return v

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 <= v < 1):
            raise ValueError(f"momentum must be a finite number with 0 <= momentum < 1, got {v!r}")
        return v

    @field_validator("collective_timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"collective_timeout must be a positive number of seconds, got {v!r}")
        return v

    @field_validator("lr", "tolerance")
    @classmethod
    def _finite(cls, v: float, info) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{info.field_name} must be a finite number >= 0, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GrowthConfig:
        if "growths" not in self.model_fields_set and self.strategy == "natural":
            object.__setattr__(self, "growths", None)  # natural stops by itself: no cap by default
        if self.statistics == "training" and (self.optimizer == "best_update" or self.strategy == "natural"):
            what = "the best_update optimizer" if self.optimizer == "best_update" else "the natural strategy"
            raise ValueError(
                f"statistics=training records the statistics during sgd or adam steps: not with {what}"
            )
        if self.statistics == "training" and self.growth_batch == "all":
            raise ValueError(
                "statistics=training records a growth batch of growth_batch samples during training: "
                "not with growth_batch=all (use statistics=pass)"
            )
        if self.schedule_name == "fixed" and self.growths is None and self.max_params is None:
            raise ValueError(
                f"strategy {self.strategy} needs a number of growths or max_params (only natural stops "
                "by itself)"
            )
        return self

    @property
    def schedule_name(self) -> str:
        return self.schedule or ("rounds" if self.strategy == "natural" else "fixed")

    def make_schedule(self) -> Schedule:
        """A fresh schedule object for these settings."""
        if self.schedule_name == "rounds":
            n = self.natural
            return Rounds(
                growths=self.growths,
                max_params=self.max_params,
                cooldown=n.cooldown,
                max_additions=n.max_additions,
                patience=n.patience,
                max_rounds=n.max_rounds,
                val_patience=n.val_patience,
                val_min_delta=n.val_min_delta,
            )
        return Fixed(growths=self.growths, max_params=self.max_params)

    def make_strategy(self) -> Strategy:
        """The strategy these settings name, built with its settings."""
        if self.strategy == "natural":
            return Natural(settings=self.natural_settings())
        return make_strategy(
            self.strategy,
            init=self.init,
            neurons=self.neurons,
            normalize=self.normalize,
            max_candidates=self.max_candidates,
            update=self.joint_update,
            seed=self.seed,
            zero_gamma=self.zero_gamma,
            round_robin=self.round_robin,
        )

    def natural_settings(self) -> NaturalSettings:
        return self.natural.settings(self.seed)

    def replace(self, **changes: Any) -> GrowthConfig:
        """A copy with ``changes`` (validated; SENN's keys may be flat)."""
        return type(self).model_validate({**self.model_dump(exclude_unset=False), **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (what checkpoints and the history's end line hold)."""
        return self.model_dump(mode="json")


def config_errors(exc: ValidationError, source: str = "") -> str:
    """One line per problem: ``SOURCE: key.path: message`` (pydantic's prefixes removed)."""
    lines: list[str] = []
    for e in exc.errors():
        union_member = [p for p in e["loc"] if p == "int" or str(p).startswith("literal[")]
        loc = tuple(p for p in e["loc"] if p not in union_member)
        if len(loc) < len(e["loc"]):  # a number or a word (growth_batch): one line for both errors
            line = f"{source + ': ' if source else ''}{'.'.join(map(str, loc))}: expected a whole number or "
            line += f"{' or '.join(_choices(loc))}, got {e['input']!r}"
            if line not in lines:
                lines.append(line)
            continue
        where = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "literal_error":
            msg = unknown_name_message(str(e["loc"][-1]), e["input"], _choices(e["loc"]))
        elif e["type"] == "extra_forbidden":
            known = list(GrowthConfig.model_fields) + list(NATURAL_KEYS)
            msg = unknown_name_message("setting", str(e["loc"][-1]), known).replace(
                "unknown setting", "unknown key"
            )
        lines.append(f"{source + ': ' if source else ''}{where}: {msg}")
    return "\n".join(lines)


def _choices(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The Literal choices of the field at ``loc`` (``("natural", "fisher")`` or ``("optimizer",)``)."""
    model: type[BaseModel] = NaturalConfig if loc[0] == "natural" else GrowthConfig
    annotation = model.model_fields[str(loc[-1])].annotation
    members = [annotation, *typing.get_args(annotation)]  # a Literal, or a union holding one
    return next(typing.get_args(m) for m in members if typing.get_origin(m) is typing.Literal)


def parse_config(data: dict[str, Any], source: str = "") -> GrowthConfig:
    """``GrowthConfig`` from a mapping, or :class:`ConfigError` with one line per problem."""
    try:
        return GrowthConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(config_errors(exc, source)) from None


def load_config(path: str | Path) -> dict[str, Any]:
    """The mapping of a run file (YAML, safely loaded; not yet validated: flags may override it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the run file ({exc.__class__.__name__}: {exc})") from None
    if len(text) > 1_000_000:
        raise ConfigError(f"{path}: a run file of {len(text)} characters is too large (1 MB at most)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run file is a mapping of settings, got {type(data).__name__}")
    return data


def config_schema() -> dict[str, Any]:
    """JSON Schema of run files."""
    schema = GrowthConfig.model_json_schema()
    schema["title"] = "dagrow run configuration"
    return schema
