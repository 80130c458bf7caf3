"""The YAML language of dagrow: pydantic models, loading with file:line errors, canonical dumping.

A spec is a DAG. Inputs are named tensors (shape without the batch dimension). A *node* sums its
incoming edges, adds its bias and applies its activation; an *edge* carries an op (linear by default)
from a node or an input to a node. ``outputs`` lists the nodes the model returns.

:func:`load_spec` parses the YAML safely, keeps the line and column of every key, rejects duplicate
keys, validates with pydantic and then runs the graph checks of :mod:`dagrow.graph`. Every problem is
reported as a :class:`Diagnostic` (``FILE:LINE:COL: message``) inside one :class:`SpecError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from .activations import ACTIVATIONS, list_activations
from .graph import check_spec
from .names import check_name, check_text, edge_key
from .norms import NORMS, list_norms
from .ops import OPS, SpecModel, list_ops
from .registry import did_you_mean
from .yaml_loader import YamlErrors, load_yaml

MAX_WIDTH = 1_000_000  # refuse absurd widths before allocating anything
MAX_SPEC_BYTES = 4 * 2**20  # a spec file (or the spec in a bundle) larger than this is refused unread
MAX_REPORTED = 20  # problems printed per spec; the rest are counted ("... and 123 more problems")
MAX_DIAGNOSTICS = 1000  # problems collected per spec before dagrow stops looking


Name = Annotated[StrictStr, AfterValidator(check_name)]
Size = Annotated[StrictInt, Field(gt=0, le=MAX_WIDTH)]


def _shorthand(key: str):
    """Let ``op: linear`` stand for ``op: {type: linear}`` (and the same for activations)."""

    def convert(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value

    return convert


if TYPE_CHECKING:  # the unions below are built from the registry at run time
    OpSpec = Any
    ActivationSpec = Any
    NormSpec = Any
else:
    OpSpec = Annotated[
        Union[tuple(info.model for info in OPS.values())],  # type: ignore[misc]  # noqa: UP007
        Field(discriminator="type"),
    ]
    ActivationSpec = Annotated[
        Union[tuple(info.model for info in ACTIVATIONS.values())],  # type: ignore[misc]  # noqa: UP007
        Field(discriminator="name"),
    ]
    NormSpec = Annotated[
        Union[tuple(info.model for info in NORMS.values())],  # type: ignore[misc]  # noqa: UP007
        Field(discriminator="type"),
    ]


OpField = Annotated[
    OpSpec,
    BeforeValidator(_shorthand("type"), json_schema_input_type=Literal[tuple(list_ops())] | OpSpec),
]
ActivationField = Annotated[
    ActivationSpec,
    BeforeValidator(
        _shorthand("name"), json_schema_input_type=Literal[tuple(list_activations())] | ActivationSpec
    ),
]


NormField = Annotated[
    NormSpec,
    BeforeValidator(_shorthand("type"), json_schema_input_type=Literal[tuple(list_norms())] | NormSpec),
]


def _activation(name: str) -> SpecModel:
    return ACTIVATIONS[name].model()


class InputSpec(SpecModel):
    """A model input: ``shape`` without the batch dimension, ``[features]`` or ``[channels, h, w]``."""

    shape: tuple[Size, ...] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _rank(self) -> InputSpec:
        if len(self.shape) == 2:
            raise ValueError("shape must be [features] or [channels, height, width]")
        return self


class NodeSpec(SpecModel):
    """A node: ``width`` (flat) or ``channels`` (image), an optional ``norm`` (batch_norm, layer_norm,
    group_norm) applied to its summed input plus bias, an activation, and a bias: by default a node has
    one unless it has a norm (``bias: true`` or ``bias: false`` overrides)."""

    width: Size | None = None
    channels: Size | None = None
    norm: NormField | None = None
    activation: ActivationField = Field(default_factory=lambda: _activation("identity"))
    bias: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _norm_drops_bias(cls, data: Any) -> Any:
        # a normalised node has no bias unless asked: the norm's own bias (or, for batch norm, the
        # subtraction of the mean) makes it redundant
        if isinstance(data, dict) and data.get("norm") is not None and "bias" not in data:
            return {**data, "bias": False}
        return data

    @model_validator(mode="after")
    def _one_size(self) -> NodeSpec:
        if (self.width is None) == (self.channels is None):
            raise ValueError("a node needs exactly one of 'width' (flat) or 'channels' (image)")
        if self.norm is not None:
            problem = self.norm.size_problem(self.size, "width" if self.width is not None else "channels")
            if problem:
                raise ValueError(problem)
        return self

    @property
    def size(self) -> int:
        """The growable dimension: width or channels."""
        return self.width if self.width is not None else self.channels  # type: ignore[return-value]


class EdgeSpec(SpecModel):
    """An edge ``from -> to`` carrying an op (``linear`` by default)."""

    source: Name = Field(alias="from")
    target: Name = Field(alias="to")
    op: OpField = Field(default_factory=lambda: OPS["linear"].model())

    model_config = SpecModel.model_config | {"populate_by_name": True}

    @property
    def key(self) -> str:
        """Module name of the edge in the compiled model: ``source__target``."""
        return edge_key(self.source, self.target)


Pair = tuple[Name, Name]


def _odd(k: int) -> int:
    if k % 2 == 0:
        raise ValueError(
            f"conv_kernel must be odd (a grown conv keeps the grid with padding (k - 1) / 2), got {k}"
        )
    return k


class GrowthSpec(SpecModel):
    """Where growth may happen and its limits.

    ``widen``: nodes that may take new neurons (``all``, ``none`` or a list).
    ``new_nodes``: pairs (u, w) that may take a new hidden node u -> new -> w: ``edges`` (pairs joined
    by an existing linear edge), ``all`` (every ordered pair that keeps the graph acyclic), ``none`` or a
    list of pairs. ``new_edges``: pairs that may take a direct linear edge (same choices). ``deepen``:
    existing linear edges that may take an identity-initialised block (``all``, ``none`` or pairs).
    ``conv_kernel``: the (odd) kernel of the conv edges that growth adds between image nodes (a new
    node's two edges, a new edge, a deepened edge's identity block), with stride 1 and the padding that
    keeps the grid.
    """

    widen: Literal["all", "none"] | list[Name] = "all"
    new_nodes: Literal["edges", "all", "none"] | list[Pair] = "edges"
    new_edges: Literal["all", "none"] | list[Pair] = "none"
    deepen: Literal["all", "none"] | list[Pair] = "none"
    new_node_activation: ActivationField = Field(default_factory=lambda: _activation("relu"))
    max_width: Size = 1024
    conv_kernel: Annotated[StrictInt, Field(gt=0, le=31), AfterValidator(_odd)] = 3
    max_params: Annotated[StrictInt, Field(gt=0)] | None = None


class GraphSpec(SpecModel):
    """A whole architecture. The single source of truth: the compiled module is generated from it."""

    version: Literal[1] = 1
    name: Annotated[StrictStr, AfterValidator(check_text)] = "net"
    description: StrictStr | None = None
    inputs: dict[Name, InputSpec] = Field(min_length=1)
    nodes: dict[Name, NodeSpec] = Field(min_length=1)
    edges: list[EdgeSpec] = Field(min_length=1)
    outputs: list[Name] = Field(min_length=1)
    growth: GrowthSpec = Field(default_factory=GrowthSpec)

    def edge(self, source: str, target: str) -> EdgeSpec:
        for e in self.edges:
            if e.source == source and e.target == target:
                return e
        raise KeyError(f"no edge {source}->{target}")

    def to_data(self) -> dict[str, Any]:
        """Canonical plain data (defaults filled, shorthands used where they say everything)."""
        data = self.model_dump(mode="json", by_alias=True)
        for v, node in self.nodes.items():  # norm: batch_norm when every setting is the default
            if node.norm is not None and not node.norm.model_dump(exclude_defaults=True, exclude={"type"}):
                data["nodes"][v]["norm"] = node.norm.type
        return _shorten(data)

    def to_yaml(self) -> str:
        """Canonical YAML text: ``load_spec(spec.to_yaml()) == spec``."""
        return yaml.safe_dump(self.to_data(), sort_keys=False, default_flow_style=None, width=110)

    def to_json(self) -> str:
        return json.dumps(self.to_data(), sort_keys=False, separators=(",", ":"))


def _shorten(data: Any) -> Any:
    """``{type: linear}`` -> ``linear``, ``{name: relu}`` -> ``relu``; drop ``null`` keys."""
    if isinstance(data, dict):
        if len(data) == 1 and ("type" in data or "name" in data):
            return next(iter(data.values()))
        return {k: _shorten(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_shorten(v) for v in data]
    return data


# --------------------------------------------------------------------------------------------------
# Errors with locations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a spec: where (file, line, column, element) and what."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class SpecError(ValueError):
    """A spec (or a bundle, or data) is invalid; ``diagnostics`` says where and why.

    ``total`` counts every problem found (at least ``len(diagnostics)``: dagrow stops collecting after
    :data:`MAX_DIAGNOSTICS`); :meth:`report` and ``str()`` show the first :data:`MAX_REPORTED`.
    """

    def __init__(self, diagnostics: Sequence[Diagnostic], total: int | None = None) -> None:
        self.diagnostics = list(diagnostics)
        self.total = max(total or 0, len(self.diagnostics))
        super().__init__("\n".join(self.report()))

    def report(self, limit: int = MAX_REPORTED) -> list[str]:
        """The first ``limit`` diagnostics as lines, then ``... and N more problems`` if there are more."""
        lines = [str(d) for d in self.diagnostics[:limit]]
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines):,} more problems")
        return lines


Path_ = tuple[Any, ...]


@dataclass
class SourceMap:
    """Line and column (1-based) of every key and item of a parsed YAML document."""

    file: str
    locations: dict[Path_, tuple[int, int]]
    data: Any = None

    def locate(self, path: Iterable[Any]) -> tuple[int, int]:
        path = tuple(path)
        for end in range(len(path), -1, -1):
            if path[:end] in self.locations:
                return self.locations[path[:end]]
        return (1, 1)

    def diagnostic(self, path: Iterable[Any], message: str) -> Diagnostic:
        line, col = self.locate(path)
        return Diagnostic(self.file, line, col, message)


def _compose(text: str, file: str) -> SourceMap:
    """Parse YAML safely (:func:`dagrow.yaml_loader.load_yaml`: limits, no duplicate keys, no tags)."""
    if len(text) > MAX_SPEC_BYTES:
        message = f"the spec has {len(text):,} characters (more than the {MAX_SPEC_BYTES:,} dagrow reads)"
        raise SpecError([Diagnostic(file, 1, 1, message)])
    try:
        data, locations = load_yaml(text)
    except YamlErrors as exc:
        diagnostics = [Diagnostic(file, p.line, p.column, p.message) for p in exc.problems]
        raise SpecError(diagnostics[:MAX_DIAGNOSTICS], len(diagnostics)) from None
    if data is None:
        raise SpecError([Diagnostic(file, 1, 1, "the spec is empty")])
    return SourceMap(file, locations, data)


def _vocabulary() -> list[str]:
    names: set[str] = set()
    models: list[type[SpecModel]] = [InputSpec, NodeSpec, EdgeSpec, GrowthSpec, GraphSpec]
    models += [i.model for i in OPS.values()] + [i.model for i in ACTIVATIONS.values()]
    models += [i.model for i in NORMS.values()]
    for model in models:
        for field_name, field in model.model_fields.items():
            names.add(field.alias or field_name)
    return sorted(names)


def show(value: Any) -> str:
    """``value`` as text that is safe to print: non-printable and non-ASCII characters escaped."""
    text = str(value)
    return text if text.isascii() and text.isprintable() else ascii(text)[1:-1]


_BRANCH = ("constrained-", "tuple[", "list[", "function-", "literal[", "union[", "dict[", "[key]")


def _field(loc: Sequence[Any]) -> str:
    """A pydantic location as a dotted path, without union branches and discriminator tags."""
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, str) and p.startswith(_BRANCH):
            continue
        if (
            i
            and loc[i - 1] in ("op", "activation", "new_node_activation", "norm")
            and (p in OPS or p in ACTIVATIONS or p in NORMS)
        ):
            continue
        parts.append(show(p))
    return ".".join(parts)


def element_name(data: Any, path: Path_) -> str:
    """Human name of the spec element a path points into: ``node 'h1'``, ``edge x->h1``."""
    if len(path) >= 2 and path[0] in ("nodes", "inputs"):
        return (
            f"{path[0][:-1]} {path[1]!r}" if isinstance(path[1], str) else f"{path[0][:-1]} {show(path[1])}"
        )
    if len(path) >= 2 and path[0] == "edges" and isinstance(path[1], int):
        try:
            e = data["edges"][path[1]]
            return f"edge {show(e.get('from', '?'))}->{show(e.get('to', '?'))} (edges[{path[1]}])"
        except (KeyError, IndexError, TypeError, AttributeError):
            return f"edges[{path[1]}]"
    if path and path[0] in ("outputs", "growth"):
        return str(path[0])
    return "spec"


def _pydantic_diagnostics(exc: ValidationError, smap: SourceMap) -> list[Diagnostic]:
    vocab = _vocabulary()
    out = []
    data_paths = smap.locations
    for err in exc.errors()[:MAX_DIAGNOSTICS]:
        # drop discriminator tags and union branch names that pydantic adds to the location
        loc: list[Any] = []
        for part in err["loc"]:
            if tuple((*loc, part)) in data_paths or isinstance(part, int):
                loc.append(part)
        loc_t = tuple(loc)
        where = element_name(smap.data, loc_t)
        if err["type"] == "extra_forbidden":
            key = loc_t[-1] if loc_t else err["loc"][-1]
            msg = f"{where}: unknown key {key!r}" + did_you_mean(str(key), [w for w in vocab if w != key])
        elif err["type"] == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag")
            choices = err.get("ctx", {}).get("expected_tags", "")
            hint = did_you_mean(str(tag), [c.strip(" '") for c in choices.split(",")])
            msg = (
                f"{where}: unknown {loc_t[-1] if loc_t else 'value'} {tag!r}; expected one of {choices}{hint}"
            )
        else:
            msg = f"{where}: {_field(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        out.append(smap.diagnostic(loc_t, msg))
    return out


def parse_spec(data: Any, smap: SourceMap | None = None) -> GraphSpec:
    """Validate plain data into a :class:`GraphSpec` and run the graph checks."""
    smap = smap or SourceMap("<spec>", {}, data)
    if not isinstance(data, dict):
        raise SpecError([smap.diagnostic((), "a spec must be a mapping of inputs, nodes, edges and outputs")])
    try:
        spec = GraphSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_pydantic_diagnostics(exc, smap), exc.error_count()) from None
    problems = check_spec(spec)
    if problems:
        raise SpecError(
            [smap.diagnostic(p.path, f"{element_name(data, p.path)}: {p.message}") for p in problems]
        )
    return spec


def load_spec(source: str | Path | GraphSpec) -> GraphSpec:
    """Load a spec from a path or from YAML text; raise :class:`SpecError` with file:line diagnostics."""
    if isinstance(source, GraphSpec):
        return source
    if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml", ".json"))):
        path = Path(source)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_SPEC_BYTES + 1)
            if len(raw) > MAX_SPEC_BYTES:
                message = f"the spec is larger than the {MAX_SPEC_BYTES:,} bytes dagrow reads"
                raise SpecError([Diagnostic(str(path), 1, 1, message)])
            text = raw.decode("utf-8")
        except OSError as exc:
            message = f"cannot read spec: {exc.strerror or exc}"
            raise SpecError([Diagnostic(str(path), 1, 1, message)]) from None
        except UnicodeDecodeError:
            raise SpecError([Diagnostic(str(path), 1, 1, "the spec is not UTF-8 text")]) from None
        file = str(path)
    else:
        text, file = source, "<string>"
    smap = _compose(text, file)
    return parse_spec(smap.data, smap)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec language (generated from the pydantic models)."""
    schema = GraphSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dagrow spec"
    return schema
