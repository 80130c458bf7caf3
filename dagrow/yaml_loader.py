"""Safe YAML for specs: PyYAML's safe parser with limits, plain data out, the location of every value.

:func:`load_yaml` parses one YAML document into plain data (dicts, lists, str, int, float, bool, None)
and a map from each value's path (``("edges", 3, "to")``) to its 1-based line and column. It is the only
way dagrow reads YAML, and it refuses, as :class:`YamlProblem` s with a line and a column:

- resource attacks: more than :data:`MAX_DEPTH` levels of nesting, more than :data:`MAX_VALUES` values
  once aliases are expanded ("billion laughs"), an alias to the collection that contains it;
- duplicate keys (YAML would silently keep the last one), keys that are not scalars, merge keys (``<<``);
- every tag except the core ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``, ``!!seq``,
  ``!!map``): ``!!python/...`` and friends are refused, never constructed;
- integers not written in plain decimal: ``0x10``, ``0b11``, ``1:30`` and YAML 1.1 octals such as
  ``010`` (which YAML 1.1 reads as 8 and YAML 1.2 as 10).

Dates (``2024-01-01``) stay text. The parser is libyaml's when PyYAML has it (fast, not recursive); the
composer is PyYAML's, with the limits above checked before any recursion goes deeper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

MAX_DEPTH = 64  # nesting levels of collections (a spec needs 5)
MAX_VALUES = 500_000  # values once aliases are expanded (a 1,000-node spec has about 10,000)
MAX_PROBLEMS = 1000  # problems collected before the loader stops looking

Path_ = tuple[Any, ...]

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "value")}
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9_]*)\Z")


@dataclass(frozen=True)
class YamlProblem:
    line: int
    column: int
    message: str


class YamlErrors(ValueError):
    """The YAML text cannot be read as spec data; ``problems`` says where and why."""

    def __init__(self, problems: list[YamlProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p.line}:{p.column}: {p.message}" for p in problems))


class _LimitError(ComposerError):
    """A limit of the composer (not a syntax error)."""


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text):,} characters)"


def _where(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


class _LimitedComposer(Composer):
    """PyYAML's composer with a depth limit and no recursive aliases (an alias to an open collection)."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._open: set[str] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent) and event.anchor in self._open:
            raise _LimitError(
                None,
                None,
                f"recursive alias *{event.anchor}: it refers to a collection that contains it",
                event.start_mark,
            )
        if not isinstance(event, SequenceStartEvent | MappingStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _LimitError(None, None, f"more than {MAX_DEPTH} levels of nesting", event.start_mark)
        anchor = event.anchor
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)  # type: ignore[arg-type]


_CParser: Any = getattr(getattr(yaml, "cyaml", None), "CParser", None)  # libyaml: fast, not recursive

if _CParser is not None:

    class _Loader(_LimitedComposer, _CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml's parser, the limited composer, the safe constructor (used for scalars only)."""

        def __init__(self, text: str) -> None:
            _CParser.__init__(self, text)
            _LimitedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover - PyYAML without libyaml

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        _LimitedComposer,
        SafeConstructor,
        Resolver,
    ):
        def __init__(self, text: str) -> None:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            _LimitedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


class _Builder:
    """Plain data from a composed node graph, with the limits and the refusals listed above."""

    def __init__(self, constructor: SafeConstructor) -> None:
        self.constructor = constructor
        self.locations: dict[Path_, tuple[int, int]] = {}
        self.problems: list[YamlProblem] = []
        self.values = 0

    def problem(self, node: Node, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(YamlProblem(*_where(node.start_mark), message))

    def build(self, node: Node, path: Path_) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise YamlErrors(
                [
                    YamlProblem(
                        *_where(node.start_mark),
                        f"the document expands to more than {MAX_VALUES:,} "
                        "values (aliases that repeat aliases?)",
                    )
                ]
            )
        if len(path) > MAX_DEPTH:  # aliases can nest deeper than what the composer saw
            message = f"more than {MAX_DEPTH} levels of nesting"
            raise YamlErrors([YamlProblem(*_where(node.start_mark), message)])
        self.locations.setdefault(path, _where(node.start_mark))
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != f"{_CORE}seq":
                self.problem(node, f"tag {_tag(node.tag)} is not allowed (only plain YAML data)")
                return None
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def mapping(self, node: MappingNode, path: Path_) -> Any:
        if node.tag != f"{_CORE}map":
            self.problem(node, f"tag {_tag(node.tag)} is not allowed (only plain YAML data)")
            return None
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == f"{_CORE}merge":
                self.problem(key_node, "merge keys ('<<') are not supported: write the keys out")
                continue
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, "a mapping key must be a scalar")
                continue
            key = self.scalar(key_node)
            if key is _INVALID:
                continue
            line, col = _where(key_node.start_mark)
            if key in out:
                first = self.locations[(*path, key)]
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
                self.problem(
                    key_node, f"duplicate key {key!r} in {where or 'the spec'} (first at line {first[0]})"
                )
                continue
            out[key] = self.build(value_node, (*path, key))
            self.locations[(*path, key)] = (line, col)  # a key's own location is where the key is written
        return out

    def scalar(self, node: Node) -> Any:
        tag = node.tag
        if tag not in _SCALAR_TAGS:
            self.problem(node, f"tag {_tag(tag)} is not allowed (only plain YAML data)")
            return _INVALID
        text = node.value
        if tag in (f"{_CORE}timestamp", f"{_CORE}value"):
            return text  # the spec language has no dates: keep the text
        if tag == f"{_CORE}int" and not _DECIMAL.match(text.strip()):
            try:
                value = self.constructor.construct_yaml_int(node)  # type: ignore[arg-type]
                how = f" (YAML 1.1 reads it as {value})"
            except (ValueError, TypeError, OverflowError):
                how = ""
            message = f"integer {_short(text)!r} is not written in plain decimal{how}: write it as 0-9 digits"
            self.problem(node, message)
            return _INVALID
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            self.problem(node, f"cannot read {_short(text)!r} as {_tag(tag)}: {_short(str(exc), 80)}")
            return _INVALID


_INVALID: Any = object()  # a value that was refused (its problem is recorded)


def load_yaml(text: str) -> tuple[Any, dict[Path_, tuple[int, int]]]:
    """Plain data and the (line, column) of every path; raise :class:`YamlErrors` with every problem."""
    loader = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
    except _LimitError as exc:
        raise YamlErrors([YamlProblem(*_where(exc.problem_mark), str(exc.problem))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or str(exc)
        if "maximum nesting depth" in problem:  # libyaml >= 0.2.5 (PyYAML 6.0.4's wheels) stops first
            raise YamlErrors(
                [YamlProblem(*_where(mark), f"more than {MAX_DEPTH} levels of nesting")]
            ) from None
        raise YamlErrors([YamlProblem(*_where(mark), f"YAML syntax error: {problem}")]) from None
    except yaml.reader.ReaderError as exc:
        exc.position = min(exc.position, len(text))
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise YamlErrors([YamlProblem(line, column, f"YAML syntax error: {exc.reason}")]) from None
    except yaml.YAMLError as exc:
        raise YamlErrors([YamlProblem(1, 1, f"YAML syntax error: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return None, {}
    builder = _Builder(loader)
    data = builder.build(root, ())
    if builder.problems:
        raise YamlErrors(builder.problems)
    return data, builder.locations
